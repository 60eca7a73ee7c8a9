"""Digests of a model's weights and settings: the teacher-logit cache's key and the candidate index's guard."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from sentence_transformers.util import fullname
from torch import nn

# Keys of a transformers config that name where or with what it was saved, not how the model computes.
CONFIG_METADATA = {"architectures", "transformers_version"}
# Keys of a fast tokenizer's serialisation that its last call set (every call sets them again), not the tokenizer.
TOKENIZER_CALL_STATE = {"truncation", "padding"}


def model_fingerprint(model: nn.Module) -> str:
    """A hex digest of what decides a sentence-transformers model's outputs (a SentenceTransformer or a CrossEncoder).

    It covers every weight; each module's class and settings (pooling mode, maximum sequence length, head config);
    each underlying transformers model's class and config, without the fields that only say where it was loaded
    from; each tokenizer (vocabulary, normaliser such as lowercasing, pre-tokeniser, special tokens); and the model's
    prompts and activation function. The same model loaded twice, or saved and loaded again, keeps its fingerprint.
    """
    digest = hashlib.sha256(json.dumps(_model_settings(model), sort_keys=True, default=str).encode())
    for name, module in model.named_children():
        digest.update(json.dumps(_module_settings(name, module), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():  # every weight: name, dtype, shape and bytes
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _model_settings(model: nn.Module) -> dict[str, Any]:
    settings = {"class": fullname(model), "prompts": getattr(model, "prompts", None)}
    settings["default_prompt_name"] = getattr(model, "default_prompt_name", None)
    if (activation := getattr(model, "activation_fn", None)) is not None:
        settings["activation_fn"] = _callable_name(activation)
    return settings


def _module_settings(name: str, module: nn.Module) -> dict[str, Any]:
    config = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
    settings = {"name": name, "class": fullname(module), **config}
    if hasattr(module, "max_seq_length"):
        settings["max_seq_length"] = module.max_seq_length
    if (model_config := getattr(getattr(module, "auto_model", None), "config", None)) is not None:
        settings["auto_model"] = fullname(module.auto_model)
        settings["auto_model_config"] = {
            key: value
            for key, value in model_config.to_dict().items()
            if not key.startswith("_") and key not in CONFIG_METADATA  # _name_or_path, _commit_hash, ...
        }
    if (tokenizer := getattr(module, "tokenizer", None)) is not None:
        settings["tokenizer"] = _tokenizer_settings(tokenizer)
    return settings


def _tokenizer_settings(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)  # a transformers tokenizer, or a tokenizers one
    if hasattr(backend, "to_str"):
        serialised = json.loads(backend.to_str())
        serialised = {key: value for key, value in serialised.items() if key not in TOKENIZER_CALL_STATE}
    else:  # a tokenizer without a fast backend: its vocabulary and its settings but the files it was read from
        settings = getattr(tokenizer, "init_kwargs", {})
        settings = {key: value for key, value in settings.items() if not key.endswith(("_file", "name_or_path"))}
        serialised = {"vocab": tokenizer.get_vocab(), "settings": settings}
    special_tokens = getattr(tokenizer, "special_tokens_map", None)
    return {"class": fullname(tokenizer), "special_tokens": special_tokens, **serialised}


def _callable_name(function: Any) -> str:
    # A module's repr shows its arguments (Softmax(dim=1)); a function is named by where it is defined. A lambda or a
    # partial has no such name: its repr (with its address) matches no other function's, so it never shares a key.
    if isinstance(function, nn.Module):
        return f"{fullname(function)}: {function!r}"
    qualname = getattr(function, "__qualname__", "<")
    return repr(function) if "<" in qualname else f"{function.__module__}.{qualname}"
