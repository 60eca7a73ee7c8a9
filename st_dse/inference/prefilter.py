"""The approximate prefilter of a CandidateIndex: a faiss index (on the CPU) that shortlists candidates."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from st_dse.inference.storage import StoredMatrix, corrupt
from st_dse.modules.pair_head import PairHead, concat_hidden, concat_weight_blocks

PrefilterMetric = Literal["head", "cosine", "inner_product", "l2"]
PREFILTER_METRICS = get_args(PrefilterMetric)
FAISS_NAME = "faiss.index"
SURROGATE_REFERENCE_SIZE = 1024  # candidates whose hidden-unit activity sets the surrogate's gates
TRAIN_SAMPLE_SIZE = 131072  # candidates a faiss index is trained on (IVF centroids, quantiser codebooks)
ADD_CHUNK_ROWS = 65536


class HeadSurrogate:
    """A per-query linear stand-in for the concat head: ``logit(u, v) ~ <q(u), [v, v * v]> + const(u)``.

    Each hidden unit's ReLU becomes how often it is active over an evenly spread ``reference`` sample of the
    candidates, and ``|u - v|`` the parabola ``x^2 / (2c)`` for the candidates' mean ``|v - v'|`` per dimension
    ``c`` (``scale``): an inner product faiss can search. A loaded index fits it again rather than saving it.
    """

    def __init__(self, embeddings: StoredMatrix) -> None:
        size = min(len(embeddings), SURROGATE_REFERENCE_SIZE)
        self.reference = embeddings.rows(np.linspace(0, max(len(embeddings) - 1, 0), num=size).astype(np.int64))
        half = len(self.reference) // 2
        if half:
            scale = (self.reference[:half, None] - self.reference[None, half : 2 * half]).abs().mean(dim=(0, 1))
        else:
            scale = torch.ones(embeddings.shape[1], device=self.reference.device)
        self.scale = scale.clamp_min(1e-6)

    def query_vectors(self, head: PairHead, label_index: int, queries: Tensor) -> Tensor:
        """``(num_queries, 2d)`` float32 vectors ``q(u)`` whose inner product with ``[v, v * v]`` ranks candidates."""
        dtype = head.classifier[0].weight.dtype
        _, w_v, w_mul, w_diff = concat_weight_blocks(head)
        output_weights, scale = head.classifier[3].weight[label_index], self.scale.to(dtype)
        vectors = [torch.zeros((0, 2 * head.in_features), dtype=dtype, device=queries.device)]
        for query in queries.to(dtype):
            weights = output_weights * (concat_hidden(head, query, self.reference) > 0).to(dtype).mean(dim=0)
            linear = w_v.T @ weights + (w_mul.T @ weights) * query  # coefficient of v
            absolute = w_diff.T @ weights  # coefficient of |u - v|
            vectors.append(torch.cat([linear - absolute * query / scale, absolute / (2 * scale)])[None])
        return torch.cat(vectors).float()


class Prefilter:
    """A faiss index over a CandidateIndex's ``source`` rows (its embeddings, or a factorized head's vectors).

    Args:
        index: The faiss index, over :meth:`candidate_side` of the ``source`` rows.
        spec: Its ``faiss.index_factory`` string, e.g. ``"Flat"``, ``"IVF1024,PQ384x4fs"``, ``"HNSW32"``.
        metric: ``"head"`` (the :class:`HeadSurrogate`, fitted on ``source``), ``"cosine"``, ``"inner_product"``
            or ``"l2"``.
        params: faiss search parameters, e.g. ``"nprobe=64"`` or ``"efSearch=512"``.
    """

    def __init__(self, index: Any, spec: str, metric: str, source: StoredMatrix, params: str | None = None) -> None:
        self.index, self.spec, self.metric = index, spec, metric
        self.surrogate = HeadSurrogate(source) if metric == "head" else None
        self.set_params(params)

    def set_params(self, params: str | None) -> None:
        """Apply faiss search parameters, e.g. ``"nprobe=64"`` (IVF) or ``"efSearch=512"`` (HNSW)."""
        try:
            faiss_module().ParameterSpace().set_index_parameters(self.index, params or "")
        except RuntimeError as error:
            raise ValueError(
                f"faiss cannot apply the search parameters {params!r} to the index {self.spec!r} "
                f"(nprobe is for IVF indexes, efSearch for HNSW): {error}"
            ) from error
        self.params = params

    @classmethod
    def build(cls, spec: str, metric: PrefilterMetric, source: StoredMatrix) -> Prefilter:
        """Train (on an evenly spread sample) and fill a faiss index over the rows of ``source``, in chunks."""
        faiss = faiss_module()
        try:
            index = faiss.index_factory(
                _width(source, metric), spec, faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
            )
        except RuntimeError as error:
            raise ValueError(f"faiss cannot build the index {spec!r}: {error}") from error
        prefilter = cls(index, spec, metric, source)
        if not index.is_trained:
            sample = np.linspace(0, len(source) - 1, num=min(len(source), TRAIN_SAMPLE_SIZE)).astype(np.int64)
            index.train(prefilter.candidate_side(source.rows(sample)))
        for start in range(0, len(source), ADD_CHUNK_ROWS):
            index.add(prefilter.candidate_side(source.chunk(start, start + ADD_CHUNK_ROWS)))
        return prefilter

    def search(self, head: PairHead, label_index: int, queries: Tensor, k: int) -> Tensor:
        """The ``k`` best candidate ids ``(num_queries, k)`` per query, on the CPU; ``-1`` where there are fewer."""
        if head.head_type == "factorized":
            queries = head.query_vectors(queries)[:, label_index]
        elif self.surrogate is not None:
            queries = self.surrogate.query_vectors(head, label_index, queries)
        return torch.from_numpy(self.index.search(self._faiss_input(queries), k)[1])

    def candidate_side(self, rows: Tensor) -> np.ndarray:
        """What faiss stores for these candidate rows: the rows, or ``[v, v * v]`` for the head surrogate."""
        return self._faiss_input(rows if self.surrogate is None else torch.cat([rows, rows * rows], dim=1))

    def _faiss_input(self, values: Tensor) -> np.ndarray:
        values = values.detach().to("cpu", torch.float32)
        values = torch.nn.functional.normalize(values, dim=-1) if self.metric == "cosine" else values
        return np.ascontiguousarray(values.numpy())

    @property
    def nbytes(self) -> int:
        """Approximate bytes of the faiss index: vector codes, the ids of an IVF index, the graph of an HNSW index."""
        faiss = faiss_module()
        index = faiss.downcast_index(self.index)
        hnsw = getattr(index, "hnsw", None)
        codes = index if hnsw is None else faiss.downcast_index(index.storage)
        total = index.ntotal * codes.sa_code_size() + (0 if hnsw is None else hnsw.neighbors.size() * 4)
        total += index.ntotal * 8 if faiss.try_extract_index_ivf(index) is not None else 0
        surrogate = self.surrogate
        return int(total + (0 if surrogate is None else (surrogate.reference.numel() + surrogate.scale.numel()) * 4))

    def save(self, directory: Path) -> None:
        faiss_module().write_index(self.index, str(directory / FAISS_NAME))

    @classmethod
    def load(cls, directory: Path, spec: str, metric: str, source: StoredMatrix, params: str | None, mmap: bool):
        """Read the ``faiss.index`` :meth:`save` wrote for ``source`` (memory-mapped where its type allows); an
        unreadable one, or one over other vectors, raises a CorruptFileError naming it."""
        faiss, path = faiss_module(), directory / FAISS_NAME
        try:
            try:
                index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
            except RuntimeError:  # not every faiss index type can be memory-mapped
                index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise corrupt(path, f"is not a readable faiss index ({error})") from None
        if (index.ntotal, index.d) != (len(source), _width(source, metric)):
            raise corrupt(
                path,
                f"holds {index.ntotal} vectors of dimension {index.d}, but the index config implies {len(source)} of "
                f"dimension {_width(source, metric)}: the folder mixes files from different saves",
            )
        return cls(index, spec, metric, source, params)


def _width(source: StoredMatrix, metric: str) -> int:
    return source.shape[1] * (2 if metric == "head" else 1)


def faiss_module():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "This CandidateIndex uses faiss (faiss_index=...); install it with `pip install faiss-cpu`."
        ) from error
    return faiss
