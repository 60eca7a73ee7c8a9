"""How a saved CandidateIndex is laid out, checked and read back: its config, files and checksums."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

from st_dse.fingerprint import model_fingerprint
from st_dse.inference.prefilter import Prefilter
from st_dse.inference.storage import REBUILD as REMEDY
from st_dse.inference.storage import StoredMatrix
from st_dse.integrity import CorruptFileError, VerifyMode, recover_interrupted_save, verify_manifest
from st_dse.student import get_pair_head

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1
CONFIG_NAME = "candidate_index.json"
# How many candidates the concat head rescores exactly after a faiss prefilter, and after a bfloat16 screen (whose
# rounding error is small, so a short list suffices).
DEFAULT_PREFILTER_RERANK = 1000
DEFAULT_RESCORE = 100
LOAD_OVERRIDES = ("rerank_k", "rescore_k", "faiss_params", "precision", "chunk_size")


def read_saved(
    directory: Path,
    model: SentenceTransformer,
    mmap: bool,
    verify: VerifyMode,
    device: torch.device,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """The :class:`CandidateIndex` arguments that rebuild a saved index (checked, then read), with ``overrides``."""
    unknown = set(overrides) - set(LOAD_OVERRIDES)
    if unknown:
        raise TypeError(f"load() can override only {sorted(LOAD_OVERRIDES)}, got {sorted(unknown)}.")
    head = get_pair_head(model)
    config = read_config(directory, verify)
    fingerprint = check_fingerprint(directory, config, model)
    dtype, count = config["storage_dtype"], config["num_candidates"]
    embeddings = StoredMatrix.load(directory, "embeddings", dtype, (count, head.in_features), mmap, device)
    vectors = prefilter = None
    if head.head_type == "factorized":
        vectors = StoredMatrix.load(directory, "candidate_vectors", dtype, (count, head.rank + 2), mmap, device)
    settings = {**search_settings(config), **overrides}
    if config.get("faiss_index"):
        spec, metric, params = config["faiss_index"], settings["prefilter_metric"], settings["faiss_params"]
        prefilter = Prefilter.load(directory, spec, metric, params, head, count, mmap, device)
    return {
        "candidate_embeddings": embeddings,
        "label_index": config["label_index"],
        "fingerprint": fingerprint,
        "device": device,
        "_candidate_vectors": vectors,
        "_prefilter": prefilter,
        **settings,
    }


def saved_files(config: dict[str, Any]) -> list[str]:
    """Every file a saved index with this config consists of."""
    files = [CONFIG_NAME, *StoredMatrix.file_names("embeddings", config["storage_dtype"])]
    if config["head_type"] == "factorized":
        files += StoredMatrix.file_names("candidate_vectors", config["storage_dtype"])
    if config.get("faiss_index"):
        files += Prefilter.file_names(config["head_type"], config["prefilter_metric"])
    return files


def read_config(directory: Path, verify: VerifyMode) -> dict[str, Any]:
    """The config of a saved index, after repairing an interrupted save and verifying every file it implies."""
    if not directory.is_symlink() and not directory.is_file():  # a save into it may have been killed mid-swap
        recover_interrupted_save(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} is missing: {directory} is not a saved CandidateIndex (or its save did not finish). "
            "Build it with CandidateIndex.from_sentences(model, corpus).save(path)."
        )
    verify_manifest(directory, files=[CONFIG_NAME], verify=verify, remedy=REMEDY)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFileError(
            f"{config_path} is not a readable index config ({error}). {REMEDY}", config_path
        ) from None
    required = {"model_fingerprint", "num_candidates", "head_type", "label_index", "storage_dtype"}
    missing = required - set(config) if isinstance(config, dict) else required
    if missing:
        raise CorruptFileError(f"{config_path} lacks the keys {sorted(missing)}. {REMEDY}", config_path)
    if config.get("format_version", 0) > INDEX_FORMAT_VERSION:
        raise ValueError(
            f"{directory} was saved in index format {config['format_version']}, newer than the "
            f"{INDEX_FORMAT_VERSION} this st_dse reads. Upgrade st_dse."
        )
    verified = verify_manifest(directory, files=saved_files(config), verify=verify, remedy=REMEDY)
    if not verified and verify != "none":
        logger.warning("%s has no checksums.json (saved by an older st_dse?): its files were not verified.", directory)
    return config


def search_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The search settings a saved config holds (with the defaults of settings older configs lack)."""
    return {
        "chunk_size": config.get("chunk_size"),
        "prefilter_metric": config.get("prefilter_metric", "head"),
        "rerank_k": config.get("rerank_k", DEFAULT_PREFILTER_RERANK),
        "precision": config.get("precision", "float32"),
        "rescore_k": config.get("rescore_k", DEFAULT_RESCORE),
        "faiss_params": config.get("faiss_params"),
    }


def check_fingerprint(directory: Path, config: dict[str, Any], model: SentenceTransformer) -> str:
    fingerprint = model_fingerprint(model)
    if fingerprint != config["model_fingerprint"]:
        raise ValueError(
            f"The index in {directory} was built with another model (fingerprint "
            f"{config['model_fingerprint'][:12]}..., this model's is {fingerprint[:12]}...): its embeddings mean "
            "nothing to this model's head. Load the student that built it, or rebuild the index with this model: "
            "CandidateIndex.from_sentences(model, corpus)."
        )
    return fingerprint
