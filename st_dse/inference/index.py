"""CandidateIndex: a corpus encoded once by a DSE student, searched with the student's PairHead.

Why it exists: a cross-encoder must run once per (query, candidate) pair, so ranking N candidates for one query costs
N transformer passes. A DSE student encodes each candidate once, ahead of time; a query then costs one encode plus N
evaluations of the small PairHead over cached embeddings, which this index runs as a few large matrix products.

What it stores, in memory or in a folder written by :meth:`CandidateIndex.save`:

- the candidate embeddings, in ``float32``, ``float16`` or ``int8`` (per-dimension affine quantisation);
- for a factorized head, the candidate-side head vectors (see :meth:`st_dse.PairHead.candidate_vectors`), in the same
  dtype, so that a query costs one matrix-vector product (exact maximum-inner-product search);
- optionally a faiss index: for the concat head an approximate prefilter whose best ``rerank_k`` candidates are
  then scored exactly by the head (by default it ranks by a linear surrogate of the head itself, see
  :meth:`CandidateIndex.surrogate_query_vectors`); for the factorized head a faiss index over the
  candidate vectors (``"Flat"`` is exact, ``"HNSW32"`` approximate);
- a fingerprint of the student (a hash of all its weights and module settings). :meth:`CandidateIndex.load` refuses a
  model with another fingerprint: embeddings from one model are meaningless to another model's head.

:meth:`CandidateIndex.load` memory-maps the arrays, so opening a large index is instant and its pages are shared
between processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor

from st_dse.data.pairs import check_pairs
from st_dse.fingerprint import hash_state_dict
from st_dse.modules.pair_head import PairHead
from st_dse.student import get_pair_head

logger = logging.getLogger(__name__)

StorageDtype = Literal["float32", "float16", "int8"]
Precision = Literal["float32", "bfloat16"]
PrefilterMetric = Literal["head", "cosine", "inner_product", "l2"]
PREFILTER_METRICS = ("head", "cosine", "inner_product", "l2")

STORAGE_DTYPES = ("float32", "float16", "int8")
INDEX_FORMAT_VERSION = 1
CONFIG_NAME = "candidate_index.json"
FAISS_NAME = "faiss.index"
# How many candidates the concat head rescores exactly after a faiss prefilter, and after a bfloat16 screen (whose
# rounding error is small, so a short list suffices).
DEFAULT_PREFILTER_RERANK = 1000
DEFAULT_RESCORE = 100
# Candidates whose hidden-unit activity sets the head surrogate's gates (see CandidateIndex.surrogate_query_vectors).
SURROGATE_REFERENCE_SIZE = 1024
# Scores of at most this many (query, candidate) floats are held at once; bounds memory for big query batches.
SCORE_BUFFER_ELEMENTS = 1 << 25


def model_fingerprint(model: SentenceTransformer) -> str:
    """A hex digest of everything that decides a student's embeddings and head scores.

    It hashes every weight (name, dtype, shape, bytes) and each module's class and settings (pooling mode,
    maximum sequence length, head config), so a further fine-tuned or differently configured copy of a model
    gets another fingerprint even when it was saved under the same path.
    """
    digest = hashlib.sha256()
    for name, module in model.named_children():
        config = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
        settings = {"name": name, "class": f"{type(module).__module__}.{type(module).__qualname__}", **config}
        if hasattr(module, "max_seq_length"):
            settings["max_seq_length"] = module.max_seq_length
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    hash_state_dict(digest, model)
    return digest.hexdigest()


class StoredMatrix:
    """A ``(rows, columns)`` float matrix kept as float32, float16 or int8, readable in float32 chunks.

    int8 uses one affine map per column: ``value = code * scale + center`` with codes in [-127, 127], so each
    dimension keeps its own range; the rounding error is at most ``scale / 2`` per value.
    """

    def __init__(
        self, data: np.ndarray, dtype: StorageDtype, scale: np.ndarray | None = None, center: np.ndarray | None = None
    ) -> None:
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {STORAGE_DTYPES}, got {dtype!r}.")
        if (dtype == "int8") != (scale is not None and center is not None):
            raise ValueError("int8 storage needs a scale and a center per column; float storage takes neither.")
        self.data = data
        self.dtype = dtype
        self.scale = scale
        self.center = center

    @classmethod
    def from_float(cls, values: np.ndarray | Tensor, dtype: StorageDtype) -> StoredMatrix:
        if isinstance(values, Tensor):
            values = values.detach().to("cpu", torch.float32).numpy()
        values = np.asarray(values, dtype=np.float32)
        if dtype == "float32":
            return cls(np.ascontiguousarray(values), dtype)
        if dtype == "float16":
            if np.abs(values).max(initial=0.0) > np.finfo(np.float16).max:
                raise ValueError("Values exceed the float16 range; store this index as float32 or int8.")
            return cls(values.astype(np.float16), dtype)
        if dtype != "int8":
            raise ValueError(f"storage_dtype must be one of {STORAGE_DTYPES}, got {dtype!r}.")
        if len(values):
            low, high = values.min(axis=0), values.max(axis=0)
        else:
            low = high = np.zeros(values.shape[1], dtype=np.float32)
        center = ((low + high) / 2).astype(np.float32)
        # A constant column has no range; any positive scale reproduces it exactly from code 0.
        scale = np.where(high > low, (high - low) / 254, 1.0).astype(np.float32)
        codes = np.clip(np.rint((values - center) / scale), -127, 127).astype(np.int8)
        return cls(codes, dtype, scale, center)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    @property
    def nbytes(self) -> int:
        extra = 0 if self.scale is None else self.scale.nbytes + self.center.nbytes
        return int(self.data.nbytes) + extra

    def raw_chunk(self, start: int, stop: int) -> Tensor:
        """Stored values of rows [start, stop) as a tensor, without a copy where possible."""
        with warnings.catch_warnings():
            # Memory-mapped arrays are read-only; they are only ever read here.
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(np.asarray(self.data[start:stop]))

    def chunk(self, start: int, stop: int) -> Tensor:
        """Rows [start, stop) in float32."""
        raw = self.raw_chunk(start, stop)
        if self.dtype == "float32":
            return raw
        values = raw.float()
        if self.dtype == "int8":
            values = torch.addcmul(torch.from_numpy(self.center), values, torch.from_numpy(self.scale))
        return values

    def rows(self, ids: Tensor | np.ndarray) -> Tensor:
        """Rows at arbitrary positions, in float32."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return torch.zeros((0, self.shape[1]), dtype=torch.float32)
        # Sorted reads touch each memory-mapped page once; the order is restored afterwards.
        order = np.argsort(ids, kind="stable")
        gathered = np.empty((ids.size, self.shape[1]), dtype=self.data.dtype)
        gathered[order] = self.data[ids[order]]
        values = torch.from_numpy(gathered).float()
        if self.dtype == "int8":
            values = torch.addcmul(torch.from_numpy(self.center), values, torch.from_numpy(self.scale))
        return values

    def to_float32(self) -> np.ndarray:
        return np.concatenate([self.chunk(s, min(s + 65536, len(self))).numpy() for s in range(0, len(self), 65536)])

    def matmul(self, right: Tensor, start: int, stop: int) -> Tensor:
        """``rows[start:stop] @ right`` in float32, for ``right`` of shape ``(columns, k)``.

        For int8 the scale is folded into ``right`` and the center into a constant, so the codes are only cast.
        """
        raw = self.raw_chunk(start, stop)
        if self.dtype == "float32":
            return raw @ right
        if self.dtype == "float16":
            return raw.float() @ right
        scale, center = torch.from_numpy(self.scale), torch.from_numpy(self.center)
        return raw.float() @ (right * scale[:, None]) + center @ right

    def save(self, directory: Path, name: str) -> None:
        np.save(directory / f"{name}.npy", self.data)
        if self.dtype == "int8":
            np.save(directory / f"{name}.scale.npy", self.scale)
            np.save(directory / f"{name}.center.npy", self.center)

    @classmethod
    def load(cls, directory: Path, name: str, dtype: StorageDtype, mmap: bool) -> StoredMatrix:
        mode = "r" if mmap else None
        data = np.load(directory / f"{name}.npy", mmap_mode=mode, allow_pickle=False)
        expected = {"float32": np.float32, "float16": np.float16, "int8": np.int8}[dtype]
        if data.dtype != expected or data.ndim != 2:
            raise ValueError(
                f"{directory / f'{name}.npy'} holds {data.dtype} data of shape {data.shape}, but the index config "
                f"says {dtype} matrices: the folder mixes files from different indexes. Build the index again."
            )
        if dtype != "int8":
            return cls(data, dtype)
        scale = np.load(directory / f"{name}.scale.npy", allow_pickle=False)
        center = np.load(directory / f"{name}.center.npy", allow_pickle=False)
        return cls(data, dtype, scale, center)


class CandidateIndex:
    """Candidates encoded once; queries scored against all of them with the student's PairHead, top-k returned.

    Exact by default: every candidate is scored by the head, in chunks of ``chunk_size`` candidates, each chunk one
    or two matrix products, with no Python loop over candidates. For a concat head the first layer is rearranged so a
    query against ``n`` candidates costs one ``(n, 2d) @ (2d, hidden)`` product (the ``u`` and ``u * v`` terms fold
    into a per-query weight matrix). For a factorized head the candidate vectors are precomputed and a query is one
    matrix-vector product.

    Args:
        model: The student (a SentenceTransformer with a PairHead) whose encoder made ``candidate_embeddings``.
        candidate_embeddings: ``(num_candidates, dim)`` embeddings from ``model.encode`` (see :meth:`from_sentences`).
        label_index: Which logit ranks candidates; required when the head has several labels.
        chunk_size: Candidates scored per matrix product; bounds the working memory.
        storage_dtype: ``"float32"`` (exact), ``"float16"`` or ``"int8"`` (4x smaller; per-dimension quantisation).
            Search is exact with respect to the stored values.
        faiss_index: Optional faiss ``index_factory`` string. Concat head: an approximate prefilter over the
            embeddings (e.g. ``"Flat"``, ``"IVF1024,Flat"``, ``"HNSW32"``), whose ``rerank_k`` best candidates the head
            then scores exactly. Factorized head: the maximum-inner-product index over candidate vectors (``"Flat"``
            is exact, ``"HNSW32"`` approximate). Needs ``pip install faiss-cpu``.
        faiss_params: faiss search parameters, e.g. ``"nprobe=64"`` or ``"efSearch=512"``.
        prefilter_metric: Concat prefilter only: what the faiss index ranks by. ``"head"`` (the default): a
            per-query linear surrogate of the head (see :meth:`surrogate_query_vectors`), which follows a trained
            head far better than embedding similarity does; or ``"cosine"``, ``"inner_product"``, ``"l2"`` on the
            embeddings.
        rerank_k: Concat prefilter only: how many prefiltered candidates the head scores (default 1000). More is
            slower and closer to exhaustive search.
        precision: Concat head only. ``"bfloat16"`` scores candidates (all of them, or the prefilter's) with
            bfloat16 matrix products (several times faster on CPUs with AMX or AVX512-BF16), then rescores the best
            ``rescore_k`` in float32, so returned scores are exact and the ranking differs from float32 only where
            bfloat16 rounding pushes a true top-k candidate out of the rescored set.
        rescore_k: With ``precision="bfloat16"``: how many screened candidates are rescored in float32 (default 100).
        fingerprint: The model's :func:`model_fingerprint`; computed when None.

    Example:
        ::

            index = CandidateIndex.from_sentences(student, corpus, storage_dtype="float16")
            hits = index.search(["How do I learn Python?"], top_k=5)
            # hits[0] == [{"corpus_id": 12, "score": 4.1}, ...], best first (score = the head's logit)
            index.save("corpus-index")
            index = CandidateIndex.load("corpus-index", student)  # memory-mapped; refuses another model
    """

    def __init__(
        self,
        model: SentenceTransformer,
        candidate_embeddings: Tensor | np.ndarray | StoredMatrix,
        label_index: int | None = None,
        chunk_size: int = 8192,
        storage_dtype: StorageDtype = "float32",
        faiss_index: str | None = None,
        faiss_params: str | None = None,
        prefilter_metric: PrefilterMetric = "head",
        rerank_k: int = DEFAULT_PREFILTER_RERANK,
        precision: Precision = "float32",
        rescore_k: int = DEFAULT_RESCORE,
        fingerprint: str | None = None,
        *,
        _candidate_vectors: StoredMatrix | None = None,
        _faiss: Any = None,
        _surrogate: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        self.model = model
        self.head: PairHead = get_pair_head(model)
        dim = self.head.in_features
        if isinstance(candidate_embeddings, StoredMatrix):
            self.embeddings = candidate_embeddings
        else:
            embeddings = candidate_embeddings
            if isinstance(embeddings, Tensor):
                embeddings = embeddings.detach().to("cpu", torch.float32).numpy()
            embeddings = np.asarray(embeddings)
            if embeddings.ndim != 2 or embeddings.shape[1] != dim:
                raise ValueError(
                    f"Candidate embeddings must have shape (num_candidates, {dim}), got {tuple(embeddings.shape)}. "
                    "Were they made by another model?"
                )
            self.embeddings = StoredMatrix.from_float(embeddings, storage_dtype)
        if self.embeddings.shape[1] != dim:
            raise ValueError(
                f"Candidate embeddings must have shape (num_candidates, {dim}), got {self.embeddings.shape}."
            )
        if self.head.num_labels > 1 and label_index is None:
            raise ValueError(
                f"This head has {self.head.num_labels} labels; pass label_index= to say which label's logit ranks "
                f"candidates (label names: {self.head.label_names})."
            )
        self.label_index = label_index or 0
        if not 0 <= self.label_index < self.head.num_labels:
            raise ValueError(f"label_index must be in [0, {self.head.num_labels - 1}], got {label_index}.")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
        if prefilter_metric not in PREFILTER_METRICS:
            raise ValueError(f"prefilter_metric must be one of {PREFILTER_METRICS}, got {prefilter_metric!r}.")
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}.")
        if precision == "bfloat16" and self.head.head_type != "concat":
            raise ValueError("precision='bfloat16' applies to the concat head; a factorized head is already cheap.")
        if rerank_k < 1 or rescore_k < 1:
            raise ValueError(f"rerank_k and rescore_k must be positive, got {rerank_k} and {rescore_k}.")
        self.chunk_size = chunk_size
        self.storage_dtype: StorageDtype = self.embeddings.dtype
        self.faiss_index_spec = faiss_index
        self.faiss_params = faiss_params
        self.prefilter_metric: PrefilterMetric = prefilter_metric
        self.rerank_k = rerank_k
        self.rescore_k = rescore_k
        self.surrogate_reference: Tensor | None = None
        self.surrogate_scale: Tensor | None = None
        self.precision: Precision = precision
        self.fingerprint = fingerprint or model_fingerprint(model)

        self.candidate_vectors: StoredMatrix | None = _candidate_vectors
        if self.head.head_type == "factorized" and self.candidate_vectors is None:
            self.candidate_vectors = StoredMatrix.from_float(self._compute_candidate_vectors(), self.storage_dtype)
        if self.head.head_type == "concat" and faiss_index is not None and prefilter_metric == "head":
            self.surrogate_reference, self.surrogate_scale = _surrogate or self._surrogate_statistics()
        self.faiss = _faiss
        if faiss_index is not None and self.faiss is None:
            self.faiss = self._build_faiss(faiss_index)
        if self.faiss is not None and faiss_params:
            try:
                _faiss_module().ParameterSpace().set_index_parameters(self.faiss, faiss_params)
            except RuntimeError as error:
                raise ValueError(
                    f"faiss cannot apply the search parameters {faiss_params!r} to the index {faiss_index!r} "
                    f"(nprobe is for IVF indexes, efSearch for HNSW): {error}"
                ) from error

    # -- building ------------------------------------------------------------------------------------------------

    @classmethod
    def from_sentences(
        cls,
        model: SentenceTransformer,
        candidates: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        pool: dict | None = None,
        device: str | list[str] | None = None,
        **kwargs,
    ) -> CandidateIndex:
        """Encode ``candidates`` with the student (batched) and build the index.

        For a large corpus, encode with several processes through sentence-transformers' process pool: pass
        ``device=["cpu", "cpu"]`` (or ``["cuda:0", "cuda:1"]``), or a ``pool`` from
        ``model.start_multi_process_pool(...)`` to reuse one. Other keyword arguments go to :class:`CandidateIndex`.
        """
        candidates = list(candidates)
        check_pairs(candidates, candidates, what="candidate")
        model.eval()
        encode_kwargs: dict[str, Any] = {"batch_size": batch_size, "show_progress_bar": show_progress_bar}
        if pool is not None:
            encode_kwargs["pool"] = pool
        if device is not None:
            encode_kwargs["device"] = device
        embeddings = model.encode(candidates, convert_to_numpy=True, **encode_kwargs)
        return cls(model, np.asarray(embeddings, dtype=np.float32), **kwargs)

    def _compute_candidate_vectors(self) -> Tensor:
        with torch.inference_mode():
            parts = [
                self.head.candidate_vectors(self.embeddings.chunk(start, min(start + self.chunk_size, len(self))))[
                    :, self.label_index
                ].float()
                for start in range(0, len(self), self.chunk_size)
            ]
        width = self.head.rank + 2
        return torch.cat(parts) if parts else torch.zeros((0, width))

    def _prefilter_vectors(self, embeddings: Tensor) -> np.ndarray:
        """Candidate side of the concat prefilter: ``[v, v * v]`` for the head surrogate, else the embeddings."""
        vectors = embeddings.float()
        if self.prefilter_metric == "head":
            vectors = torch.cat([vectors, vectors * vectors], dim=1)
        elif self.prefilter_metric == "cosine":
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return np.ascontiguousarray(vectors.numpy(), dtype=np.float32)

    def _prefilter_queries(self, query_embeddings: Tensor) -> np.ndarray:
        if self.prefilter_metric == "head":
            return np.ascontiguousarray(self.surrogate_query_vectors(query_embeddings).numpy(), dtype=np.float32)
        return self._prefilter_vectors(query_embeddings)

    def _surrogate_statistics(self) -> tuple[Tensor, Tensor]:
        """An evenly spread reference sample of candidates, and the mean ``|v - v'|`` per dimension between them."""
        size = min(len(self), SURROGATE_REFERENCE_SIZE)
        reference = self.embeddings.rows(np.linspace(0, max(len(self) - 1, 0), num=size).astype(np.int64))
        half = len(reference) // 2
        if half:
            scale = (reference[:half, None, :] - reference[None, half : 2 * half, :]).abs().mean(dim=(0, 1))
        else:
            scale = torch.ones(self.head.in_features)
        return reference, scale.clamp_min(1e-6)

    @torch.inference_mode()
    def surrogate_query_vectors(self, query_embeddings: Tensor | np.ndarray) -> Tensor:
        """Concat head: per-query vectors ``(num_queries, 2d)`` whose inner product with ``[v, v * v]`` approximates
        the logit's ranking of candidates ``v``; what the default ``prefilter_metric="head"`` searches with.

        The head is ``w2 . relu(W_u u + W_v v + W_mul (u * v) + W_diff |u - v| + b)``. For a query ``u``, each hidden
        unit's ReLU is replaced by how often that unit is active over a reference sample of the candidates (so the
        head becomes linear in ``v`` and ``|u - v|``), and ``|x|`` by the parabola ``x^2 / (2c)`` fitted to the
        candidates' typical ``|u - v|`` per dimension ``c``. What remains is an inner product with ``[v, v * v]``,
        which faiss searches; the head then rescores the shortlist exactly. On a trained QQP head the true top 10
        of 100k candidates fell within the surrogate's top 1000 (python -m evaluation.speed measures the recall).
        """
        if self.surrogate_reference is None:
            raise ValueError("surrogate_query_vectors needs a concat index built with prefilter_metric='head'.")
        queries = self._check_query_embeddings(query_embeddings)
        first, _, _, second = self.head.classifier
        dtype = first.weight.dtype
        w_u, w_v, w_mul, w_diff = first.weight.split(self.head.in_features, dim=1)
        output_weights = second.weight[self.label_index]
        scale = self.surrogate_scale.to(dtype)
        vectors = []
        for query in queries.to(dtype):
            active = (_concat_hidden(self.head, query, self.surrogate_reference) > 0).to(dtype).mean(dim=0)
            weights = output_weights * active  # (hidden,)
            linear = w_v.T @ weights + (w_mul.T @ weights) * query  # coefficient of v
            absolute = w_diff.T @ weights  # coefficient of |u - v|
            vectors.append(torch.cat([linear - absolute * query / scale, absolute / (2 * scale)]))
        return torch.stack(vectors).float()

    def _build_faiss(self, spec: str):
        faiss = _faiss_module()
        if self.head.head_type == "factorized":
            source, metric, dim = self.candidate_vectors, faiss.METRIC_INNER_PRODUCT, self.head.rank + 2
        else:
            source = self.embeddings
            dim = self.head.in_features * (2 if self.prefilter_metric == "head" else 1)
            metric = faiss.METRIC_L2 if self.prefilter_metric == "l2" else faiss.METRIC_INNER_PRODUCT
        try:
            index = faiss.index_factory(dim, spec, metric)
        except RuntimeError as error:
            raise ValueError(f"faiss cannot build the index {spec!r}: {error}") from error

        def as_faiss_input(values: Tensor) -> np.ndarray:
            if self.head.head_type == "factorized":
                return np.ascontiguousarray(values.numpy(), dtype=np.float32)
            return self._prefilter_vectors(values)

        if not index.is_trained:
            # Train (IVF centroids, quantiser ranges) on an evenly spread sample of the candidates.
            sample_ids = np.linspace(0, len(self) - 1, num=min(len(self), 131072)).astype(np.int64)
            index.train(as_faiss_input(source.rows(sample_ids)))
        step = max(self.chunk_size, 65536)
        for start in range(0, len(self), step):
            index.add(as_faiss_input(source.chunk(start, min(start + step, len(self)))))
        return index

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def nbytes(self) -> int:
        """Bytes of stored candidate data: embeddings, candidate vectors and the faiss index's codes."""
        total = self.embeddings.nbytes + (self.candidate_vectors.nbytes if self.candidate_vectors is not None else 0)
        if self.faiss is not None:
            total += _faiss_nbytes(self.faiss)
        return total

    # -- searching -----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def search(
        self,
        queries: Sequence[str] | str | Tensor | np.ndarray,
        top_k: int = 10,
        batch_size: int = 32,
        rerank_k: int | None = None,
    ) -> list[list[dict[str, float | int]]]:
        """Top ``top_k`` candidates per query by the head's logit, best first, as ``{"corpus_id", "score"}`` dicts.

        Queries may be sentences (encoded here) or precomputed query embeddings. Scores are the head's exact logits
        (computed from the stored candidate values). ``rerank_k`` overrides the index's setting for this call.
        """
        query_embeddings = self._query_embeddings(queries, batch_size)
        scores, ids = self.search_embeddings(query_embeddings, top_k, rerank_k=rerank_k)
        return [
            [{"corpus_id": int(i), "score": float(s)} for s, i in zip(row_scores, row_ids)]
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist())
        ]

    @torch.inference_mode()
    def search_embeddings(
        self, query_embeddings: Tensor | np.ndarray, top_k: int = 10, rerank_k: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Like :meth:`search` for query embeddings, returning ``(scores, corpus_ids)`` tensors of shape
        ``(num_queries, min(top_k, len(index)))``."""
        query_embeddings = self._check_query_embeddings(query_embeddings)
        top_k = min(top_k, len(self))
        rerank_k = max(rerank_k or self.rerank_k, top_k)
        if top_k <= 0 or len(query_embeddings) == 0:
            empty = torch.zeros((len(query_embeddings), 0))
            return empty, empty.long()
        if self.faiss is not None:
            return self._faiss_search(query_embeddings, top_k, rerank_k)
        if self.precision == "bfloat16":
            rescore_k = min(max(self.rescore_k, top_k), len(self))
            _, shortlist = self._exhaustive_top_k(query_embeddings, rescore_k, precision="bfloat16")
            return self._rerank(query_embeddings, shortlist, top_k)
        return self._exhaustive_top_k(query_embeddings, top_k)

    def score_all(self, query_embeddings: Tensor | np.ndarray) -> Tensor:
        """Exact logits ``(num_queries, num_candidates)`` of the ranking label, for every candidate."""
        query_embeddings = self._check_query_embeddings(query_embeddings)
        with torch.inference_mode():
            return (
                torch.cat(list(self._chunk_scores(query_embeddings)), dim=1)
                if len(self)
                else torch.zeros((len(query_embeddings), 0))
            )

    def score_candidates(self, query_embeddings: Tensor | np.ndarray, candidate_ids: Tensor | np.ndarray) -> Tensor:
        """Exact logits ``(num_queries, k)`` of each query against its own ``k`` candidates ``candidate_ids[q]``."""
        query_embeddings = self._check_query_embeddings(query_embeddings)
        candidate_ids = torch.as_tensor(candidate_ids, dtype=torch.long).reshape(len(query_embeddings), -1)
        with torch.inference_mode():
            return torch.stack(
                [self._scores_for(query, candidate_ids[row]) for row, query in enumerate(query_embeddings)]
            )

    def _scores_for(self, query: Tensor, ids: Tensor) -> Tensor:
        if self.candidate_vectors is not None:
            return self.candidate_vectors.rows(ids) @ self._query_vectors(query[None])[0]
        return _concat_scores(self.head, query, self.embeddings.rows(ids), self.label_index)

    def _query_embeddings(self, queries, batch_size: int) -> Tensor:
        if isinstance(queries, str):
            queries = [queries]
        if isinstance(queries, (Tensor, np.ndarray)):
            return self._check_query_embeddings(queries)
        queries = list(queries)
        if not queries:
            return torch.zeros((0, self.head.in_features))
        check_pairs(queries, queries, what="query")
        self.model.eval()
        embeddings = self.model.encode(queries, batch_size=batch_size, convert_to_tensor=True)
        return self._check_query_embeddings(embeddings)

    def _check_query_embeddings(self, query_embeddings: Tensor | np.ndarray) -> Tensor:
        embeddings = torch.as_tensor(query_embeddings)
        if embeddings.dim() == 1:
            embeddings = embeddings[None]
        if embeddings.dim() != 2 or embeddings.shape[-1] != self.head.in_features:
            raise ValueError(
                f"Query embeddings have dimension {embeddings.shape[-1]}, but this index's head expects "
                f"{self.head.in_features}. Encode the queries with the same student model."
            )
        return embeddings.detach().to("cpu", torch.float32)

    def _query_vectors(self, query_embeddings: Tensor) -> Tensor:
        """Factorized head: the ranking label's query vectors ``(num_queries, rank + 2)`` in float32."""
        return self.head.query_vectors(query_embeddings.to(self.head._parameter_dtype()))[:, self.label_index].float()

    def _chunks(self, size: int | None = None) -> Iterator[tuple[int, int]]:
        size = size or self.chunk_size
        for start in range(0, len(self), size):
            yield start, min(start + size, len(self))

    def _chunk_scores(self, query_embeddings: Tensor, precision: Precision = "float32") -> Iterator[Tensor]:
        """Exact scores ``(num_queries, chunk)`` of consecutive candidate chunks."""
        if self.candidate_vectors is not None:
            # A factorized chunk needs only (queries x chunk) floats of working memory: take bigger chunks.
            query_vectors = self._query_vectors(query_embeddings).T.contiguous()
            for start, stop in self._chunks(16 * self.chunk_size):
                yield self.candidate_vectors.matmul(query_vectors, start, stop).T
            return
        for start, stop in self._chunks():
            candidates = self.embeddings.chunk(start, stop)
            yield torch.stack(
                [
                    _concat_scores(self.head, query, candidates, self.label_index, precision)
                    for query in query_embeddings
                ]
            )

    def _exhaustive_top_k(
        self, query_embeddings: Tensor, top_k: int, precision: Precision = "float32"
    ) -> tuple[Tensor, Tensor]:
        # Scores of a block of queries against all candidates are gathered, then one topk per block: cheaper than
        # merging running top-k lists chunk by chunk, and the block size bounds the buffer.
        block = max(1, SCORE_BUFFER_ELEMENTS // max(len(self), 1))
        all_scores, all_ids = [], []
        for queries in query_embeddings.split(block):
            scores = torch.empty((len(queries), len(self)), dtype=torch.float32)
            offset = 0
            for chunk in self._chunk_scores(queries, precision):
                scores[:, offset : offset + chunk.shape[1]] = chunk
                offset += chunk.shape[1]
            best_scores, best_ids = scores.topk(top_k, dim=1)
            all_scores.append(best_scores)
            all_ids.append(best_ids)
        return torch.cat(all_scores), torch.cat(all_ids)

    def _rerank(self, query_embeddings: Tensor, shortlist: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
        """Exact head scores of each query's shortlisted ids (``-1`` = no candidate), best ``top_k`` first."""
        scores_out = torch.full((len(query_embeddings), top_k), float("-inf"))
        ids_out = torch.full((len(query_embeddings), top_k), -1, dtype=torch.long)
        for row, query in enumerate(query_embeddings):
            ids = shortlist[row]
            ids = torch.unique(ids[ids >= 0])
            if len(ids) == 0:
                continue
            if self.precision == "bfloat16" and len(ids) > max(self.rescore_k, top_k):
                # Screen the shortlist in bfloat16, then rescore its best in float32.
                screen = _concat_scores(self.head, query, self.embeddings.rows(ids), self.label_index, "bfloat16")
                ids = ids[screen.topk(max(self.rescore_k, top_k)).indices]
            scores = self._scores_for(query, ids)
            k = min(top_k, len(ids))
            best_scores, positions = scores.topk(k)
            scores_out[row, :k] = best_scores
            ids_out[row, :k] = ids[positions]
        return scores_out, ids_out

    def _faiss_search(self, query_embeddings: Tensor, top_k: int, rerank_k: int) -> tuple[Tensor, Tensor]:
        if self.head.head_type == "factorized":
            query_vectors = np.ascontiguousarray(self._query_vectors(query_embeddings).numpy())
            _, ids = self.faiss.search(query_vectors, top_k)
        else:
            shortlist_size = min(rerank_k, len(self))
            _, ids = self.faiss.search(self._prefilter_queries(query_embeddings), shortlist_size)
        # Scores come from the head itself (not from faiss), so they are exact for every returned candidate.
        return self._rerank(query_embeddings, torch.from_numpy(ids), top_k)

    # -- saving and loading --------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            "format_version": INDEX_FORMAT_VERSION,
            "model_fingerprint": self.fingerprint,
            "num_candidates": len(self),
            "in_features": self.head.in_features,
            "head_type": self.head.head_type,
            "label_index": self.label_index,
            "storage_dtype": self.storage_dtype,
            "chunk_size": self.chunk_size,
            "faiss_index": self.faiss_index_spec,
            "faiss_params": self.faiss_params,
            "prefilter_metric": self.prefilter_metric,
            "rerank_k": self.rerank_k,
            "precision": self.precision,
            "rescore_k": self.rescore_k,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to the folder ``path``: a JSON config, ``.npy`` arrays and the faiss index, if any."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        self.embeddings.save(directory, "embeddings")
        if self.candidate_vectors is not None:
            self.candidate_vectors.save(directory, "candidate_vectors")
        if self.faiss is not None:
            _faiss_module().write_index(self.faiss, str(directory / FAISS_NAME))
        if self.surrogate_reference is not None:
            np.save(directory / "surrogate_reference.npy", self.surrogate_reference.numpy())
            np.save(directory / "surrogate_scale.npy", self.surrogate_scale.numpy())
        # The config goes last: a folder without it is an unfinished save and fails to load.
        (directory / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2))

    @classmethod
    def load(
        cls, path: str | os.PathLike, model: SentenceTransformer, mmap: bool = True, **overrides
    ) -> CandidateIndex:
        """Open an index saved by :meth:`save`, for ``model``: the same student that built it.

        Arrays are memory-mapped (``mmap=True``), so loading costs no copy and pages are read on first use.
        ``overrides`` change search settings (``rerank_k``, ``rescore_k``, ``faiss_params``, ``precision``,
        ``chunk_size``).

        Raises:
            ValueError: when ``model`` is not the model that built the index (its fingerprint differs).
        """
        directory = Path(path)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{config_path} is missing: {directory} is not a saved CandidateIndex (or its save did not finish). "
                "Build it with CandidateIndex.from_sentences(model, corpus).save(path)."
            )
        config = json.loads(config_path.read_text())
        if config.get("format_version", 0) > INDEX_FORMAT_VERSION:
            raise ValueError(
                f"{directory} was saved in index format {config['format_version']}, newer than the "
                f"{INDEX_FORMAT_VERSION} this st_dse reads. Upgrade st_dse."
            )
        fingerprint = model_fingerprint(model)
        if fingerprint != config["model_fingerprint"]:
            raise ValueError(
                f"The index in {directory} was built with another model (fingerprint "
                f"{config['model_fingerprint'][:12]}..., this model's is {fingerprint[:12]}...): its embeddings mean "
                "nothing to this model's head. Load the student that built it, or rebuild the index with this model: "
                "CandidateIndex.from_sentences(model, corpus)."
            )
        allowed = {"rerank_k", "rescore_k", "faiss_params", "precision", "chunk_size"}
        unknown = set(overrides) - allowed
        if unknown:
            raise TypeError(f"load() can override only {sorted(allowed)}, got {sorted(unknown)}.")
        dtype = config["storage_dtype"]
        embeddings = StoredMatrix.load(directory, "embeddings", dtype, mmap)
        if len(embeddings) != config["num_candidates"]:
            raise ValueError(
                f"{directory} holds {len(embeddings)} embeddings but its config says {config['num_candidates']}: "
                "the folder mixes files from different indexes. Build the index again."
            )
        vectors = None
        if config["head_type"] == "factorized":
            vectors = StoredMatrix.load(directory, "candidate_vectors", dtype, mmap)
        faiss_index = None
        if config.get("faiss_index"):
            faiss = _faiss_module()
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
            try:
                faiss_index = faiss.read_index(str(directory / FAISS_NAME), flags)
            except RuntimeError:  # not every faiss index type can be memory-mapped
                faiss_index = faiss.read_index(str(directory / FAISS_NAME))
        settings = {key: config[key] for key in ("chunk_size", "faiss_params", "prefilter_metric", "rerank_k")}
        settings["precision"] = config.get("precision", "float32")
        settings["rescore_k"] = config.get("rescore_k", DEFAULT_RESCORE)
        settings.update(overrides)
        surrogate = None
        if (directory / "surrogate_reference.npy").is_file():
            surrogate = (
                torch.from_numpy(np.load(directory / "surrogate_reference.npy")),
                torch.from_numpy(np.load(directory / "surrogate_scale.npy")),
            )
        return cls(
            model,
            embeddings,
            label_index=config["label_index"],
            faiss_index=config.get("faiss_index"),
            fingerprint=fingerprint,
            _candidate_vectors=vectors,
            _faiss=faiss_index,
            _surrogate=surrogate,
            **settings,
        )

    @property
    def is_memory_mapped(self) -> bool:
        return isinstance(self.embeddings.data, np.memmap)


def _concat_hidden(head: PairHead, query: Tensor, candidates: Tensor, precision: Precision = "float32") -> Tensor:
    """Concat-head hidden pre-activations ``(n, hidden)`` of one query ``(d,)`` against candidates ``(n, d)``.

    The first layer ``W [u, v, u*v, |u-v|] + b`` is regrouped as ``v @ (W_v + W_mul * u)^T + |u-v| @ W_diff^T +
    (W_u u + b)``: two ``(n, d) @ (d, hidden)`` products per query instead of one of width ``4d`` per pair. With
    ``precision="bfloat16"`` the products run in bfloat16: a fast screen whose values are rounded to about three
    significant digits.
    """
    first = head.classifier[0]
    dtype = first.weight.dtype
    query = query.to(dtype)
    w_u, w_v, w_mul, w_diff = first.weight.split(head.in_features, dim=1)
    query_bias = torch.addmv(first.bias, w_u, query)
    candidate_weights = (w_v + w_mul * query).T  # (d, hidden)
    compute = torch.bfloat16 if precision == "bfloat16" else dtype
    candidates = candidates.to(compute)
    query = query.to(compute)
    hidden = torch.addmm(query_bias.to(compute), candidates, candidate_weights.to(compute))
    return hidden.addmm_(torch.sub(candidates, query).abs_(), w_diff.T.to(compute))


def _concat_scores(
    head: PairHead, query: Tensor, candidates: Tensor, label_index: int, precision: Precision = "float32"
) -> Tensor:
    """Concat-head logits ``(n,)`` of one query against candidates ``(n, d)``, for one label (see _concat_hidden)."""
    second = head.classifier[3]
    hidden = _concat_hidden(head, query, candidates, precision).relu_()
    return torch.mv(hidden, second.weight[label_index].to(hidden.dtype)).float() + second.bias[label_index].float()


def _faiss_nbytes(index) -> int:
    """Approximate bytes of a faiss index: its vector codes, plus the graph of an HNSW index."""
    faiss = _faiss_module()
    total = int(index.ntotal) * int(index.sa_code_size()) if hasattr(index, "sa_code_size") else 0
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        total += int(hnsw.neighbors.size()) * 4
    return total


def _faiss_module():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "This CandidateIndex uses faiss (faiss_index=...); install it with `pip install faiss-cpu`."
        ) from error
    return faiss
