"""The approximate prefilter of a CandidateIndex: a faiss index (on the CPU) that shortlists candidates.

A concat head's shortlist comes from :class:`HeadSurrogate`, a per-query linear stand-in for the head; a factorized
head's from the inner product of its head vectors, which is its logit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from st_dse.inference.storage import StoredMatrix, corrupt
from st_dse.modules.pair_head import PairHead, concat_hidden, concat_weight_blocks

PrefilterMetric = Literal["head", "cosine", "inner_product", "l2"]
PREFILTER_METRICS = ("head", "cosine", "inner_product", "l2")
FAISS_NAME = "faiss.index"
# Candidates whose hidden-unit activity sets the surrogate's gates.
SURROGATE_REFERENCE_SIZE = 1024
# Candidates a faiss index is trained on (IVF centroids, quantiser codebooks), and added per call.
TRAIN_SAMPLE_SIZE = 131072
ADD_CHUNK_ROWS = 65536


class HeadSurrogate:
    """A linear stand-in for the concat head, per query: ``logit(u, v) ~ <q(u), [v, v * v]> + const(u)``.

    The head is ``w2 . relu(W_u u + W_v v + W_mul (u * v) + W_diff |u - v| + b)``. For a query ``u``, each hidden
    unit's ReLU is replaced by how often that unit is active over a reference sample of the candidates (so the head
    becomes linear in ``v`` and ``|u - v|``), and ``|x|`` by the parabola ``x^2 / (2c)`` fitted to the candidates'
    typical ``|v - v'|`` per dimension ``c``. What remains is an inner product with ``[v, v * v]``, which faiss can
    search. A loaded index fits it again (:meth:`fit`) rather than saving it.

    Args:
        reference: ``(m, d)`` candidate embeddings, an evenly spread sample of the corpus.
        scale: ``(d,)`` mean ``|v - v'|`` per dimension between reference candidates.
    """

    def __init__(self, reference: Tensor, scale: Tensor) -> None:
        self.reference = reference
        self.scale = scale

    @classmethod
    def fit(cls, embeddings: StoredMatrix) -> HeadSurrogate:
        """The reference sample and the scale of a corpus."""
        size = min(len(embeddings), SURROGATE_REFERENCE_SIZE)
        reference = embeddings.rows(np.linspace(0, max(len(embeddings) - 1, 0), num=size).astype(np.int64))
        half = len(reference) // 2
        if half:
            scale = (reference[:half, None, :] - reference[None, half : 2 * half, :]).abs().mean(dim=(0, 1))
        else:
            scale = torch.ones(embeddings.shape[1], device=reference.device)
        return cls(reference, scale.clamp_min(1e-6))

    @staticmethod
    def candidate_vectors(embeddings: Tensor) -> Tensor:
        """``[v, v * v]`` for candidates ``v``: the side faiss stores."""
        embeddings = embeddings.float()
        return torch.cat([embeddings, embeddings * embeddings], dim=1)

    def query_vectors(self, head: PairHead, label_index: int, queries: Tensor) -> Tensor:
        """``(num_queries, 2d)`` float32 vectors ``q(u)`` whose inner product with ``[v, v * v]`` ranks candidates."""
        dtype = head.classifier[0].weight.dtype
        _, w_v, w_mul, w_diff = concat_weight_blocks(head)
        output_weights = head.classifier[3].weight[label_index]
        scale = self.scale.to(dtype)
        vectors = [torch.zeros((0, 2 * head.in_features), dtype=dtype, device=queries.device)]
        for query in queries.to(dtype):
            active = (concat_hidden(head, query, self.reference) > 0).to(dtype).mean(dim=0)
            weights = output_weights * active  # (hidden,)
            linear = w_v.T @ weights + (w_mul.T @ weights) * query  # coefficient of v
            absolute = w_diff.T @ weights  # coefficient of |u - v|
            vectors.append(torch.cat([linear - absolute * query / scale, absolute / (2 * scale)])[None])
        return torch.cat(vectors).float()


class Prefilter:
    """A faiss index over a CandidateIndex's candidates (its embeddings, or a factorized head's candidate vectors).

    Args:
        index: The faiss index.
        spec: Its ``faiss.index_factory`` string, e.g. ``"Flat"``, ``"IVF1024,PQ384x4fs"``, ``"HNSW32"``.
        metric: What it ranks by: ``"head"`` (the :class:`HeadSurrogate`), ``"cosine"``, ``"inner_product"``, ``"l2"``.
        params: faiss search parameters, e.g. ``"nprobe=64"`` or ``"efSearch=512"``.
        surrogate: The head surrogate, for ``metric="head"``.
    """

    def __init__(
        self, index: Any, spec: str, metric: str, params: str | None, surrogate: HeadSurrogate | None
    ) -> None:
        self.index, self.spec, self.metric, self.surrogate = index, spec, metric, surrogate
        self.set_params(params)

    def set_params(self, params: str | None) -> None:
        """Apply faiss search parameters, e.g. ``"nprobe=64"`` (IVF) or ``"efSearch=512"`` (HNSW)."""
        if params:
            try:
                faiss_module().ParameterSpace().set_index_parameters(self.index, params)
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
        surrogate = HeadSurrogate.fit(source) if metric == "head" else None
        dim = source.shape[1] * (2 if surrogate is not None else 1)
        try:
            index = faiss.index_factory(dim, spec, faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            raise ValueError(f"faiss cannot build the index {spec!r}: {error}") from error
        prefilter = cls(index, spec, metric, None, surrogate)
        if not index.is_trained:
            sample = np.linspace(0, len(source) - 1, num=min(len(source), TRAIN_SAMPLE_SIZE)).astype(np.int64)
            index.train(prefilter.candidate_side(source.rows(sample)))
        for start in range(0, len(source), ADD_CHUNK_ROWS):
            index.add(prefilter.candidate_side(source.chunk(start, start + ADD_CHUNK_ROWS)))
        return prefilter

    def search(self, head: PairHead, label_index: int, queries: Tensor, k: int) -> Tensor:
        """The ``k`` best candidate ids ``(num_queries, k)`` per query, on the CPU; ``-1`` where there are fewer."""
        if head.head_type == "factorized":
            queries = head.query_vectors(queries.to(next(head.parameters()).dtype))[:, label_index]
        elif self.surrogate is not None:
            queries = self.surrogate.query_vectors(head, label_index, queries)
        return torch.from_numpy(self.index.search(self.faiss_input(queries), k)[1])

    def candidate_side(self, values: Tensor) -> np.ndarray:
        """What faiss stores for these candidate rows."""
        return self.faiss_input(values if self.surrogate is None else HeadSurrogate.candidate_vectors(values))

    def faiss_input(self, values: Tensor) -> np.ndarray:
        if self.metric == "cosine":
            values = torch.nn.functional.normalize(values.float(), dim=-1)
        return np.ascontiguousarray(values.detach().to("cpu", torch.float32).numpy())

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
    def load(cls, directory: Path, config: dict[str, Any], source: StoredMatrix, params: str | None, mmap: bool):
        """Read a prefilter that :meth:`save` wrote for ``source`` (memory-mapped where the faiss index type allows);
        a damaged ``faiss.index`` (unreadable, or other vectors than ``source``) raises a CorruptFileError for it."""
        faiss, path = faiss_module(), directory / FAISS_NAME
        try:
            try:
                index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
            except RuntimeError:  # not every faiss index type can be memory-mapped
                index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise corrupt(path, f"is not a readable faiss index ({error})") from None
        metric = config["prefilter_metric"]
        dim = source.shape[1] * (2 if metric == "head" else 1)
        if (index.ntotal, index.d) != (len(source), dim):
            raise corrupt(
                path,
                f"holds {index.ntotal} vectors of dimension {index.d}, but the index config implies {len(source)} of "
                f"dimension {dim}: the folder mixes files from different saves",
            )
        surrogate = HeadSurrogate.fit(source) if metric == "head" else None
        return cls(index, config["faiss_index"], metric, params, surrogate)


def faiss_module():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "This CandidateIndex uses faiss (faiss_index=...); install it with `pip install faiss-cpu`."
        ) from error
    return faiss
