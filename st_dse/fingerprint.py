"""Digests of a model's weights and settings: the teacher-logit cache's key and the candidate index's guard."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from torch import nn


def hash_state_dict(digest: hashlib._Hash, module: nn.Module) -> None:
    """Feed every weight of ``module`` (name, dtype, shape and bytes) into ``digest``."""
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy().tobytes())


def weights_fingerprint(module: nn.Module, settings: dict[str, Any]) -> str:
    """A SHA-256 hex digest of ``settings`` (JSON) followed by every weight of ``module``."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    hash_state_dict(digest, module)
    return digest.hexdigest()


def model_fingerprint(model: SentenceTransformer) -> str:
    """A hex digest of every weight and each module's class and settings (pooling mode, maximum sequence length, head
    config): what decides a student's embeddings and head scores."""
    digest = hashlib.sha256()
    for name, module in model.named_children():
        config = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
        settings = {"name": name, "class": f"{type(module).__module__}.{type(module).__qualname__}", **config}
        if hasattr(module, "max_seq_length"):
            settings["max_seq_length"] = module.max_seq_length
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    hash_state_dict(digest, model)
    return digest.hexdigest()
