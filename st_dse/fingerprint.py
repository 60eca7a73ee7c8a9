"""One digest of a model's weights, shared by the teacher-logit cache and the candidate index."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
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
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    hash_state_dict(digest, module)
    return digest.hexdigest()
