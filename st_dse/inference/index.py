"""CandidateIndex: a corpus encoded once by a DSE student, searched with the student's PairHead.

A cross-encoder must run once per (query, candidate) pair, so ranking N candidates for one query costs N transformer
passes. A DSE student encodes each candidate once, ahead of time; a query then costs one encode plus N evaluations of
the small PairHead over cached embeddings, which this index runs as a few large matrix products.

A saved index is a folder: ``candidate_index.json`` (settings and the student's fingerprint), the candidate rows as
``.npy`` files (see :class:`~st_dse.inference.storage.StoredMatrix`), an optional faiss prefilter (see
:class:`~st_dse.inference.prefilter.Prefilter`) and ``checksums.json``, the size and SHA-256 of every file.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor

from st_dse.data.pairs import check_pairs
from st_dse.fingerprint import model_fingerprint
from st_dse.inference.index_files import (
    CONFIG_NAME,
    DEFAULT_PREFILTER_RERANK,
    DEFAULT_RESCORE,
    INDEX_FORMAT_VERSION,
    read_saved,
)
from st_dse.inference.prefilter import PREFILTER_METRICS, Prefilter, PrefilterMetric
from st_dse.inference.scorer import HeadScorer, Precision
from st_dse.inference.storage import StorageDtype, StoredMatrix
from st_dse.integrity import VerifyMode, atomic_save_dir
from st_dse.modules.pair_head import PairHead
from st_dse.student import get_pair_head

logger = logging.getLogger(__name__)

# Candidates per matrix product when chunk_size is not given: an accelerator wants far larger products than a CPU.
DEFAULT_CHUNK_SIZE = {"cpu": 8192, "cuda": 65536}


class CandidateIndex:
    """Candidates encoded once; queries scored against all of them with the student's PairHead, top-k returned.

    Exact by default: every candidate is scored by the head, ``chunk_size`` candidates per matrix product (see
    :class:`HeadScorer`). A faiss prefilter makes it approximate: the head then scores only a shortlist. Returned
    scores are always the head's exact logits of the stored candidate values.

    Args:
        model: The student (a SentenceTransformer with a PairHead) whose encoder made ``candidate_embeddings``.
        candidate_embeddings: ``(num_candidates, dim)`` embeddings from ``model.encode`` (see :meth:`from_sentences`),
            or a :class:`~st_dse.inference.storage.StoredMatrix` (e.g. built with ``StoredMatrix.from_chunks``).
        label_index: Which logit ranks candidates; required when the head has several labels.
        chunk_size: Candidates scored per matrix product, which bounds working memory (default 8192 on a CPU, 65536
            on an accelerator).
        storage_dtype: ``"float32"`` (exact), ``"float16"`` or ``"int8"`` (4x smaller; per-dimension quantisation).
        faiss_index: A faiss ``index_factory`` string. Concat head: a prefilter (``"Flat"``, ``"PQ384x4fs"``,
            ``"IVF1024,PQ384x4fs"``, ``"HNSW32"``...) whose best ``rerank_k`` candidates the head scores. Factorized
            head: an inner-product index over the candidate-side head vectors (``"Flat"`` is exact). faiss runs on
            the CPU whatever ``device`` is. Needs ``pip install faiss-cpu``.
        faiss_params: faiss search parameters, e.g. ``"nprobe=64"`` or ``"efSearch=512"``.
        prefilter_metric: What a concat prefilter ranks by: ``"head"`` (default), a linear surrogate of the head
            (see :meth:`surrogate_query_vectors`); or ``"cosine"``, ``"inner_product"``, ``"l2"`` on the embeddings.
        rerank_k: How many prefiltered candidates a concat head scores (default 1000).
        precision, rescore_k: Concat head. ``"bfloat16"`` screens candidates (all, or the prefilter's) with bfloat16
            products and rescores the best ``rescore_k`` (default 100) in float32.
        fingerprint: The model's :func:`model_fingerprint`; computed when None.
        device: Where candidates are stored and scored: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``. The head is
            copied there if the model lives elsewhere. Results come back on the CPU.

    Example:
        ::

            index = CandidateIndex.from_sentences(student, corpus, storage_dtype="float16")
            hits = index.search(["How do I learn Python?"], top_k=5)
            # hits[0] == [{"corpus_id": 12, "score": 4.1}, ...], best first (score = the head's logit)
            index.save("corpus-index")
            index = CandidateIndex.load("corpus-index", student)  # checked, memory-mapped; refuses another model
    """

    def __init__(
        self,
        model: SentenceTransformer,
        candidate_embeddings: Tensor | np.ndarray | StoredMatrix,
        label_index: int | None = None,
        chunk_size: int | None = None,
        storage_dtype: StorageDtype = "float32",
        faiss_index: str | None = None,
        faiss_params: str | None = None,
        prefilter_metric: PrefilterMetric = "head",
        rerank_k: int = DEFAULT_PREFILTER_RERANK,
        precision: Precision = "float32",
        rescore_k: int = DEFAULT_RESCORE,
        fingerprint: str | None = None,
        device: str | torch.device = "cpu",
        *,
        _candidate_vectors: StoredMatrix | None = None,
        _prefilter: Prefilter | None = None,
    ) -> None:
        head = get_pair_head(model)
        _check_settings(head, label_index, chunk_size, prefilter_metric, precision, rerank_k, rescore_k)
        self.model, self.device = model, _resolve_device(device)
        self.head = head if next(head.parameters()).device == self.device else copy.deepcopy(head).to(self.device)
        self.label_index, self.fingerprint = label_index or 0, fingerprint or model_fingerprint(model)
        self.embeddings = _as_stored(candidate_embeddings, storage_dtype, head.in_features).to(self.device)
        self.storage_dtype, self.prefilter_metric = self.embeddings.dtype, prefilter_metric
        self.chunk_size, self.precision, self.rerank_k, self.rescore_k = chunk_size, precision, rerank_k, rescore_k
        scorer_chunk = chunk_size or DEFAULT_CHUNK_SIZE.get(self.device.type, DEFAULT_CHUNK_SIZE["cuda"])
        self._scorer = HeadScorer(self.head, self.label_index, self.embeddings, None, scorer_chunk)
        vectors = _candidate_vectors
        if head.head_type == "factorized" and vectors is None:
            vectors = StoredMatrix.from_float(self._scorer.compute_candidate_vectors(), self.storage_dtype)
        vectors = None if vectors is None else vectors.to(self.device)
        self.candidate_vectors = self._scorer.candidate_vectors = vectors
        self.prefilter = _prefilter
        if faiss_index is not None and _prefilter is None:
            self.prefilter = Prefilter.build(
                faiss_index, prefilter_metric, faiss_params, self.head, self.embeddings, vectors
            )

    @classmethod
    def from_sentences(
        cls,
        model: SentenceTransformer,
        candidates: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        pool: dict | None = None,
        device: str | list[str] | None = None,
        index_device: str | torch.device = "cpu",
        **kwargs,
    ) -> CandidateIndex:
        """Encode ``candidates`` with the student (batched) and build the index.

        ``device`` is where encoding runs: ``["cpu", "cpu"]`` or ``["cuda:0", "cuda:1"]`` encode with several
        processes (or pass a ``pool`` from ``model.start_multi_process_pool(...)``). ``index_device`` is where the
        index keeps and scores the candidates. Other keyword arguments go to :class:`CandidateIndex`.
        """
        candidates = list(candidates)
        check_pairs(candidates, candidates, what="candidate")
        model.eval()
        options = {"show_progress_bar": show_progress_bar, "device": device, "pool": pool}
        embeddings = model.encode(candidates, batch_size=_positive("batch_size", batch_size), **options)
        return cls(model, np.asarray(embeddings, dtype=np.float32), device=index_device, **kwargs)

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def nbytes(self) -> int:
        """Bytes of stored candidate data: embeddings, candidate vectors and the faiss prefilter."""
        vectors = self.candidate_vectors.nbytes if self.candidate_vectors is not None else 0
        return self.embeddings.nbytes + vectors + (self.prefilter.nbytes if self.prefilter is not None else 0)

    @property
    def is_memory_mapped(self) -> bool:
        return self.embeddings.is_memory_mapped

    @torch.inference_mode()
    def search(
        self,
        queries: Sequence[str] | str | Tensor | np.ndarray,
        top_k: int = 10,
        batch_size: int = 32,
        rerank_k: int | None = None,
    ) -> list[list[dict[str, float | int]]]:
        """Top ``top_k`` candidates per query by the head's logit, best first, as ``{"corpus_id", "score"}`` dicts.

        Queries may be sentences (encoded here, ``batch_size`` at a time) or precomputed query embeddings.
        ``rerank_k`` overrides the index's setting for this call. Raises ValueError for a ``top_k``, ``batch_size``
        or ``rerank_k`` below 1.
        """
        _positive("top_k", top_k)
        _positive("batch_size", batch_size)
        query_embeddings = _encode_queries(self.model, queries, batch_size)
        scores, ids = self.search_embeddings(query_embeddings, top_k, rerank_k=rerank_k)
        return [
            [{"corpus_id": int(i), "score": float(s)} for s, i in zip(row_scores, row_ids)]
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist())
        ]

    @torch.inference_mode()
    def search_embeddings(
        self, query_embeddings: Tensor | np.ndarray, top_k: int = 10, rerank_k: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Like :meth:`search` for query embeddings: ``(scores, corpus_ids)`` CPU tensors of shape
        ``(num_queries, min(top_k, len(index)))``."""
        top_k = min(_positive("top_k", top_k), len(self))
        rerank_k = self.rerank_k if rerank_k is None else _positive("rerank_k", rerank_k)
        queries = self._scorer.check_queries(query_embeddings)
        if top_k == 0 or len(queries) == 0:
            return torch.zeros((len(queries), 0)), torch.zeros((len(queries), 0), dtype=torch.long)
        rescore_k = self.rescore_k if self.precision == "bfloat16" else None
        if self.prefilter is not None:
            k = top_k if self.head.head_type == "factorized" else min(max(rerank_k, top_k), len(self))
            shortlist = self.prefilter.search(self.head, self.label_index, queries, k)
            scores, ids = self._scorer.rerank(queries, shortlist, top_k, rescore_k)
        elif rescore_k is not None:
            _, shortlist = self._scorer.top_k(queries, min(max(rescore_k, top_k), len(self)), torch.bfloat16)
            scores, ids = self._scorer.rerank(queries, shortlist, top_k)
        else:
            scores, ids = self._scorer.top_k(queries, top_k)
        return scores.cpu(), ids.cpu()

    @torch.inference_mode()
    def score_all(self, query_embeddings: Tensor | np.ndarray) -> Tensor:
        """Exact logits ``(num_queries, num_candidates)`` of the ranking label, for every candidate, on the CPU."""
        queries = self._scorer.check_queries(query_embeddings)
        if len(self) == 0:
            return torch.zeros((len(queries), 0))
        return torch.cat([chunk.cpu() for chunk in self._scorer.chunk_scores(queries)], dim=1)

    @torch.inference_mode()
    def score_candidates(self, query_embeddings: Tensor | np.ndarray, candidate_ids: Tensor | np.ndarray) -> Tensor:
        """Exact logits ``(num_queries, k)`` of each query against its own ``k`` candidates ``candidate_ids[q]``."""
        queries = self._scorer.check_queries(query_embeddings)
        ids = torch.as_tensor(candidate_ids, dtype=torch.long).reshape(len(queries), -1).to(self.device)
        return torch.stack([self._scorer.scores_for(query, ids[row]) for row, query in enumerate(queries)]).cpu()

    @torch.inference_mode()
    def surrogate_query_vectors(self, query_embeddings: Tensor | np.ndarray) -> Tensor:
        """Concat head: the vectors ``(num_queries, 2d)`` the default prefilter searches ``[v, v * v]`` with; see
        :class:`~st_dse.inference.prefilter.HeadSurrogate`."""
        if getattr(self.prefilter, "surrogate", None) is None:
            raise ValueError("surrogate_query_vectors needs faiss_index= and prefilter_metric='head' (concat head).")
        queries = self._scorer.check_queries(query_embeddings)
        return self.prefilter.surrogate.query_vectors(self.head, self.label_index, queries).cpu()

    def config(self) -> dict[str, Any]:
        """The settings :meth:`save` writes to ``candidate_index.json``."""
        names = (
            "label_index",
            "storage_dtype",
            "chunk_size",
            "prefilter_metric",
            "rerank_k",
            "precision",
            "rescore_k",
        )
        return {
            "format_version": INDEX_FORMAT_VERSION,
            "model_fingerprint": self.fingerprint,
            "num_candidates": len(self),
            "in_features": self.head.in_features,
            "head_type": self.head.head_type,
            "faiss_index": getattr(self.prefilter, "spec", None),
            "faiss_params": getattr(self.prefilter, "params", None),
            **{name: getattr(self, name) for name in names},
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to the folder ``path`` (replacing any folder there, all or nothing): ``.npy`` arrays, the
        faiss prefilter, the config (last) and ``checksums.json``, every file's size and SHA-256 for :meth:`load`."""

        def write(folder: Path) -> None:
            self.embeddings.save(folder, "embeddings")
            if self.candidate_vectors is not None:
                self.candidate_vectors.save(folder, "candidate_vectors")
            if self.prefilter is not None:
                self.prefilter.save(folder)
            (folder / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2))

        atomic_save_dir(path, write, manifest=True)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: SentenceTransformer,
        mmap: bool = True,
        verify: VerifyMode = "full",
        device: str | torch.device = "cpu",
        **overrides,
    ) -> CandidateIndex:
        """Open an index saved by :meth:`save`, for ``model``: the same student that built it.

        Args:
            mmap: On the CPU, memory-map the arrays: no copy; pages are read on first use.
            verify: Check the files against ``checksums.json`` first: ``"full"`` (sizes and SHA-256: reads every
                byte), ``"size"`` (instant; catches truncation, not changed bytes) or ``"none"``. A folder without
                a manifest loads unchecked, with a warning.
            device: Where to put the candidates, as in :class:`CandidateIndex`.
            overrides: Search settings: ``rerank_k``, ``rescore_k``, ``faiss_params``, ``precision``, ``chunk_size``.

        Raises:
            CorruptFileError: a file is missing, damaged or from another save; the message names it.
            ValueError: ``model`` is not the model that built the index (its fingerprint differs).
        """
        return cls(model, **read_saved(Path(path), model, mmap, verify, _resolve_device(device), overrides))


def _encode_queries(model: SentenceTransformer, queries, batch_size: int) -> Tensor | np.ndarray:
    """Query embeddings: sentences (one or a list) encoded by ``model``; embeddings passed through."""
    queries = [queries] if isinstance(queries, str) else queries
    if isinstance(queries, (Tensor, np.ndarray)):
        return queries
    queries = list(queries)
    if not queries:
        return torch.zeros((0, get_pair_head(model).in_features))
    check_pairs(queries, queries, what="query")
    model.eval()
    return model.encode(queries, batch_size=batch_size, convert_to_tensor=True)


def _check_settings(
    head: PairHead,
    label_index: int | None,
    chunk_size: int | None,
    prefilter_metric: str,
    precision: str,
    rerank_k: int,
    rescore_k: int,
) -> None:
    if head.num_labels > 1 and label_index is None:
        raise ValueError(
            f"This head has {head.num_labels} labels; pass label_index= to say which label's logit ranks "
            f"candidates (label names: {head.label_names})."
        )
    if not 0 <= (label_index or 0) < head.num_labels:
        raise ValueError(f"label_index must be in [0, {head.num_labels - 1}], got {label_index}.")
    if chunk_size is not None:
        _positive("chunk_size", chunk_size)
    _positive("rerank_k", rerank_k)
    _positive("rescore_k", rescore_k)
    if prefilter_metric not in PREFILTER_METRICS:
        raise ValueError(f"prefilter_metric must be one of {PREFILTER_METRICS}, got {prefilter_metric!r}.")
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}.")
    if precision == "bfloat16" and head.head_type != "concat":
        raise ValueError("precision='bfloat16' applies to the concat head; a factorized head is already cheap.")


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r}, but torch sees no CUDA device here; pass device='cpu'.")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def _as_stored(candidates: Tensor | np.ndarray | StoredMatrix, storage_dtype: str, dim: int) -> StoredMatrix:
    if not isinstance(candidates, StoredMatrix):
        if isinstance(candidates, Tensor):
            candidates = candidates.detach().to("cpu", torch.float32).numpy()
        candidates = np.asarray(candidates)
        if candidates.ndim != 2 or candidates.shape[1] != dim:
            raise ValueError(
                f"Candidate embeddings must have shape (num_candidates, {dim}), got {tuple(candidates.shape)}. "
                "Were they made by another model?"
            )
        candidates = StoredMatrix.from_float(candidates, storage_dtype)
    if candidates.shape[1] != dim:
        raise ValueError(f"Candidate embeddings must have shape (num_candidates, {dim}), got {candidates.shape}.")
    return candidates
