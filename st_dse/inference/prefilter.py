"""The approximate prefilter of a CandidateIndex: a faiss index over the candidates, and the head surrogate it uses.

For a concat head the exact score of ``n`` candidates costs ``n`` evaluations of the head's MLP; a prefilter picks a
shortlist with a faiss search first, and the index then scores only the shortlist exactly. By default the faiss index
ranks candidates by :class:`HeadSurrogate`, a per-query linear stand-in for the head itself. For a factorized head the
faiss index searches the candidate-side head vectors by inner product, which is the head's logit.

faiss runs on the CPU: an index whose candidates live on an accelerator searches its prefilter on the CPU and scores
the shortlist on the accelerator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from st_dse.inference.storage import REBUILD, StoredMatrix, load_array
from st_dse.integrity import CorruptFileError
from st_dse.modules.pair_head import PairHead, concat_hidden, concat_weight_blocks

PrefilterMetric = Literal["head", "cosine", "inner_product", "l2"]
PREFILTER_METRICS = ("head", "cosine", "inner_product", "l2")
FAISS_NAME = "faiss.index"
SURROGATE_NAMES = ("surrogate_reference.npy", "surrogate_scale.npy")
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
    typical ``|v - v'|`` per dimension ``c``. What remains is an inner product of a query vector ``q(u)`` with
    ``[v, v * v]``, which faiss can search; the index then rescores the shortlist exactly.

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
        first, _, _, second = head.classifier
        dtype = first.weight.dtype
        _, w_v, w_mul, w_diff = concat_weight_blocks(head)
        output_weights = second.weight[label_index]
        scale = self.scale.to(dtype)
        vectors = []
        for query in queries.to(dtype):
            active = (concat_hidden(head, query, self.reference) > 0).to(dtype).mean(dim=0)
            weights = output_weights * active  # (hidden,)
            linear = w_v.T @ weights + (w_mul.T @ weights) * query  # coefficient of v
            absolute = w_diff.T @ weights  # coefficient of |u - v|
            vectors.append(torch.cat([linear - absolute * query / scale, absolute / (2 * scale)]))
        if not vectors:
            return torch.zeros((0, 2 * head.in_features), device=queries.device)
        return torch.stack(vectors).float()

    def save(self, directory: Path) -> None:
        for name, values in zip(SURROGATE_NAMES, (self.reference, self.scale)):
            np.save(directory / name, values.cpu().numpy())

    @classmethod
    def load(cls, directory: Path, in_features: int, device: torch.device) -> HeadSurrogate:
        reference, scale = (
            torch.from_numpy(load_array(directory / name, np.float32, shape)).to(device)
            for name, shape in zip(SURROGATE_NAMES, ((None, in_features), (in_features,)))
        )
        return cls(reference, scale)


class Prefilter:
    """A faiss index over a CandidateIndex's candidates: builds it, searches it, saves it.

    Args:
        index: The faiss index.
        spec: Its ``faiss.index_factory`` string, e.g. ``"Flat"``, ``"IVF1024,PQ384x4fs"``, ``"HNSW32"``.
        metric: Concat head: what the index ranks by (``"head"``: the :class:`HeadSurrogate`; ``"cosine"``,
            ``"inner_product"`` or ``"l2"`` on the embeddings). Factorized head: ignored (inner product of head
            vectors).
        factorized: Whether the index holds a factorized head's candidate vectors.
        params: faiss search parameters, e.g. ``"nprobe=64"`` or ``"efSearch=512"``.
        surrogate: The head surrogate, for ``metric="head"``.
    """

    def __init__(
        self,
        index: Any,
        spec: str,
        metric: PrefilterMetric,
        factorized: bool,
        params: str | None = None,
        surrogate: HeadSurrogate | None = None,
    ) -> None:
        self.index = index
        self.spec = spec
        self.metric = metric
        self.factorized = factorized
        self.surrogate = surrogate
        self.params = None
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
    def build(
        cls,
        spec: str,
        metric: PrefilterMetric,
        params: str | None,
        head: PairHead,
        embeddings: StoredMatrix,
        candidate_vectors: StoredMatrix | None = None,
    ) -> Prefilter:
        """Train (on an evenly spread sample) and fill a faiss index over the candidates, in chunks."""
        faiss = faiss_module()
        factorized = head.head_type == "factorized"
        source = candidate_vectors if factorized else embeddings
        if factorized or metric != "l2":
            faiss_metric = faiss.METRIC_INNER_PRODUCT
        else:
            faiss_metric = faiss.METRIC_L2
        surrogate = HeadSurrogate.fit(embeddings) if not factorized and metric == "head" else None
        dim = source.shape[1] * (2 if surrogate is not None else 1)
        try:
            index = faiss.index_factory(dim, spec, faiss_metric)
        except RuntimeError as error:
            raise ValueError(f"faiss cannot build the index {spec!r}: {error}") from error
        prefilter = cls(index, spec, metric, factorized, None, surrogate)
        if not index.is_trained:
            sample = np.linspace(0, len(source) - 1, num=min(len(source), TRAIN_SAMPLE_SIZE)).astype(np.int64)
            index.train(prefilter._candidate_side(source.rows(sample)))
        for start in range(0, len(source), ADD_CHUNK_ROWS):
            index.add(prefilter._candidate_side(source.chunk(start, min(start + ADD_CHUNK_ROWS, len(source)))))
        prefilter.set_params(params)
        return prefilter

    def search(self, head: PairHead, label_index: int, query_embeddings: Tensor, k: int) -> Tensor:
        """The ``k`` best candidate ids ``(num_queries, k)`` per query, on the CPU; ``-1`` where there are fewer."""
        if self.factorized:
            queries = head.query_vectors(query_embeddings.to(next(head.parameters()).dtype))[:, label_index].float()
        elif self.surrogate is not None:
            queries = self.surrogate.query_vectors(head, label_index, query_embeddings)
        else:
            queries = query_embeddings
        _, ids = self.index.search(self._as_faiss_input(queries, normalize=not self.factorized), k)
        return torch.from_numpy(ids)

    def _candidate_side(self, values: Tensor) -> np.ndarray:
        if self.surrogate is not None:
            values = HeadSurrogate.candidate_vectors(values)
        return self._as_faiss_input(values, normalize=not self.factorized)

    def _as_faiss_input(self, values: Tensor, normalize: bool) -> np.ndarray:
        if normalize and self.metric == "cosine":
            values = torch.nn.functional.normalize(values.float(), dim=-1)
        return np.ascontiguousarray(values.detach().to("cpu", torch.float32).numpy())

    @property
    def nbytes(self) -> int:
        """Approximate bytes of the faiss index: vector codes, the ids of an IVF index, the graph of an HNSW index."""
        faiss = faiss_module()
        index = self.index
        total = int(index.ntotal) * int(index.sa_code_size()) if hasattr(index, "sa_code_size") else 0
        hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
        if hnsw is not None:
            total += int(hnsw.neighbors.size()) * 4
        try:
            faiss.extract_index_ivf(index)
            total += int(index.ntotal) * 8
        except RuntimeError:
            pass  # not an IVF index: no stored ids
        if self.surrogate is not None:
            total += (self.surrogate.reference.numel() + self.surrogate.scale.numel()) * 4
        return total

    # -- saving and loading ------------------------------------------------------------------------------------------

    @staticmethod
    def file_names(head_type: str, metric: PrefilterMetric) -> list[str]:
        """The files :meth:`save` writes for a prefilter of this head type and metric."""
        return [FAISS_NAME, *(SURROGATE_NAMES if head_type == "concat" and metric == "head" else ())]

    def save(self, directory: Path) -> None:
        faiss_module().write_index(self.index, str(directory / FAISS_NAME))
        if self.surrogate is not None:
            self.surrogate.save(directory)

    @classmethod
    def load(
        cls,
        directory: Path,
        spec: str,
        metric: PrefilterMetric,
        params: str | None,
        head: PairHead,
        num_candidates: int,
        mmap: bool = True,
        device: torch.device | str = "cpu",
    ) -> Prefilter:
        """Read a prefilter written by :meth:`save` (the faiss index memory-mapped where its type allows).

        Raises:
            CorruptFileError: ``faiss.index`` cannot be read or holds another number or size of vectors; a surrogate
                file is missing or damaged. The message names the file.
        """
        faiss = faiss_module()
        path = directory / FAISS_NAME
        factorized = head.head_type == "factorized"
        try:
            try:
                index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
            except RuntimeError:  # not every faiss index type can be memory-mapped
                index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise CorruptFileError(f"{path} is not a readable faiss index ({error}). {REBUILD}", path) from None
        surrogate = None
        if not factorized and metric == "head":
            surrogate = HeadSurrogate.load(directory, head.in_features, torch.device(device))
        dim = head.rank + 2 if factorized else head.in_features * (2 if surrogate is not None else 1)
        if index.ntotal != num_candidates or index.d != dim:
            raise CorruptFileError(
                f"{path} holds {index.ntotal} vectors of dimension {index.d}, but the index config implies "
                f"{num_candidates} of dimension {dim}: the folder mixes files from different saves. {REBUILD}",
                path,
            )
        return cls(index, spec, metric, factorized, params, surrogate)


def faiss_module():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "This CandidateIndex uses faiss (faiss_index=...); install it with `pip install faiss-cpu`."
        ) from error
    return faiss
