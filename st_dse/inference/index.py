"""CandidateIndex: a corpus encoded once by a DSE student, searched with the student's PairHead."""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor

from st_dse.checks import int_at_least, one_of
from st_dse.data import check_pairs
from st_dse.fingerprint import model_fingerprint
from st_dse.inference.prefilter import PREFILTER_METRICS, Prefilter, PrefilterMetric
from st_dse.inference.storage import REBUILD, StorageDtype, StoredMatrix, corrupt
from st_dse.integrity import VerifyMode, atomic_save_dir, recover_interrupted_save, verify_manifest
from st_dse.modules.pair_head import concat_logits
from st_dse.student import get_pair_head

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1
CONFIG_NAME = "candidate_index.json"
CONFIG_KEYS = (
    "format_version model_fingerprint num_candidates in_features head_type label_index storage_dtype chunk_size "
    "faiss_index faiss_params prefilter_metric rerank_k rescore_k"
).split()
SETTINGS = ("label_index", "chunk_size", "rerank_k", "rescore_k")  # the constructor's, as saved
# Candidates per matrix product when chunk_size is not given: an accelerator wants far larger products than a CPU.
DEFAULT_CHUNK_SIZE = {"cpu": 8192, "cuda": 65536}
# Scores of at most this many (query, candidate) floats are held at once; bounds memory for big query batches.
SCORE_BUFFER_ELEMENTS = 1 << 25


class CandidateIndex:
    """Candidates encoded once; queries scored against all of them with the student's PairHead, top-k returned.

    Exact by default; a faiss prefilter makes it approximate (the head scores a shortlist). Scores are always the
    head's exact logits of the stored candidates.

    Args:
        model: The student (a SentenceTransformer with a PairHead) that encoded ``candidate_embeddings``.
        candidate_embeddings: ``(num_candidates, dim)`` embeddings from ``model.encode``, or a ``StoredMatrix``.
        label_index: Which logit ranks candidates; required when the head has several labels.
        chunk_size: Candidates per matrix product: bounds working memory (default 8192 on a CPU, 65536 on a GPU).
        storage_dtype: ``"float32"`` (exact), ``"float16"`` or ``"int8"`` (4x smaller; per-dimension quantisation).
        faiss_index: A faiss ``index_factory`` string (``"Flat"``, ``"IVF1024,PQ384x4fs"``, ``"HNSW32"``...): for a
            concat head a prefilter whose best ``rerank_k`` candidates the head scores, for a factorized head an
            inner-product index over its candidate vectors. Needs ``pip install faiss-cpu``.
        prefilter_metric: What a concat prefilter ranks by: ``"head"`` (a linear surrogate of the head), ``"cosine"``,
            ``"inner_product"`` or ``"l2"``.
        rerank_k: How many prefiltered candidates a concat head scores.
        rescore_k: Concat head: screen candidates in bfloat16 and rescore the best ``rescore_k`` in float32.
        device: Where candidates are stored and scored; results come back on the CPU.

    Example::

        index = CandidateIndex.from_sentences(student, corpus, storage_dtype="float16")
        hits = index.search(["How do I learn Python?"], top_k=5)  # [[{"corpus_id": 12, "score": 4.1}, ...]]
        index.save("corpus-index")
        index = CandidateIndex.load("corpus-index", student)
    """

    def __init__(
        self,
        model: SentenceTransformer,
        candidate_embeddings: Tensor | np.ndarray | StoredMatrix,
        label_index: int | None = None,
        chunk_size: int | None = None,
        storage_dtype: StorageDtype = "float32",
        faiss_index: str | None = None,
        prefilter_metric: PrefilterMetric = "head",
        rerank_k: int = 1000,
        rescore_k: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        head = get_pair_head(model)
        if label_index is None and head.num_labels > 1 or not 0 <= (label_index or 0) < head.num_labels:
            raise ValueError(
                f"This head has {head.num_labels} labels {head.label_names}; pass label_index= in "
                f"[0, {head.num_labels - 1}] to say which label's logit ranks candidates, got {label_index}."
            )
        one_of("prefilter_metric", prefilter_metric, PREFILTER_METRICS)
        if rescore_k is not None and int_at_least("rescore_k", rescore_k) and head.head_type != "concat":
            raise ValueError("rescore_k (a bfloat16 screen) applies to the concat head; a factorized head is cheap.")
        self.chunk_size = chunk_size if chunk_size is None else int_at_least("chunk_size", chunk_size)
        self.rerank_k, self.rescore_k = int_at_least("rerank_k", rerank_k), rescore_k
        _check_dimension("Candidate", "candidates", np.shape(candidate_embeddings), head.in_features)
        if not isinstance(candidate_embeddings, StoredMatrix):
            candidate_embeddings = StoredMatrix.from_float(candidate_embeddings, storage_dtype)
        self.model, self.fingerprint, self.label_index = model, model_fingerprint(model), label_index or 0
        self.embeddings = candidate_embeddings.to(device)
        self.device, self.storage_dtype = self.embeddings.device, self.embeddings.dtype
        self.head = head if next(head.parameters()).device == self.device else copy.deepcopy(head).to(self.device)
        self.prefilter: Prefilter | None = None
        if faiss_index is not None:  # a factorized head's logit is the inner product of its head vectors
            metric = "inner_product" if head.head_type == "factorized" else prefilter_metric
            self.prefilter = Prefilter.build(faiss_index, metric, self.prefilter_source)

    @cached_property
    def candidate_vectors(self) -> StoredMatrix | None:
        """A factorized head's candidate-side vectors of the ranking label, from the stored embeddings and stored as
        they are (None for a concat head); computed at first use, or read from the folder by :meth:`load`."""
        if self.head.head_type != "factorized":
            return None
        with torch.inference_mode():
            chunks = (self.embeddings.chunk(start, start + self._step()) for start in self._starts())
            vectors = torch.cat([self.head.candidate_vectors(chunk)[:, self.label_index] for chunk in chunks])
        return StoredMatrix.from_float(vectors, self.storage_dtype).to(self.device)

    @property
    def prefilter_source(self) -> StoredMatrix:
        """What a faiss prefilter indexes: the candidate vectors of a factorized head, else the embeddings."""
        return self.embeddings if self.candidate_vectors is None else self.candidate_vectors

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
        """Encode ``candidates`` with the student and build the index.

        ``device`` (a list for several processes) or ``pool`` go to ``model.encode``; ``index_device`` is where the
        index keeps the candidates; other keyword arguments go to :class:`CandidateIndex`.
        """
        candidates = list(candidates)
        check_pairs(candidates, candidates, what="candidate")
        model.eval()
        options = {"show_progress_bar": show_progress_bar, "device": device, "pool": pool}
        embeddings = model.encode(candidates, batch_size=int_at_least("batch_size", batch_size), **options)
        return cls(model, np.asarray(embeddings, dtype=np.float32), device=index_device, **kwargs)

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def faiss_params(self) -> str | None:
        """The prefilter's faiss search parameters (``"nprobe=64"`` for IVF, ``"efSearch=512"`` for HNSW); settable."""
        return None if self.prefilter is None else self.prefilter.params

    @faiss_params.setter
    def faiss_params(self, params: str | None) -> None:
        self.prefilter.set_params(params)

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
        Queries are sentences (encoded here) or query embeddings; ``rerank_k`` overrides the index's for this call."""
        if not isinstance(queries, (Tensor, np.ndarray)):
            sentences = [queries] if isinstance(queries, str) else list(queries)
            int_at_least("batch_size", batch_size)
            check_pairs(sentences, sentences, what="query")
            self.model.eval()
            queries = torch.zeros((0, self.head.in_features))  # model.encode([]) has no dimension
            if sentences:
                queries = self.model.encode(sentences, batch_size=batch_size, convert_to_tensor=True)
        scores, ids = self.search_embeddings(queries, top_k, rerank_k=rerank_k)
        return [[{"corpus_id": i, "score": s} for s, i in zip(*row)] for row in zip(scores.tolist(), ids.tolist())]

    @torch.inference_mode()
    def search_embeddings(
        self, query_embeddings: Tensor | np.ndarray, top_k: int = 10, rerank_k: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Like :meth:`search` for query embeddings: ``(scores, corpus_ids)`` CPU tensors of shape
        ``(num_queries, min(top_k, len(index)))``."""
        top_k = min(int_at_least("top_k", top_k), len(self))
        rerank_k = self.rerank_k if rerank_k is None else int_at_least("rerank_k", rerank_k)
        queries = self._queries(query_embeddings)
        if top_k == 0 or len(queries) == 0:
            return torch.zeros((len(queries), 0)), torch.zeros((len(queries), 0), dtype=torch.long)
        if self.prefilter is not None:
            k = top_k if self.head.head_type == "factorized" else min(max(rerank_k, top_k), len(self))
            shortlist = self.prefilter.search(self.head, self.label_index, queries, k)
            scores, ids = self._rerank(queries, shortlist, top_k, self.rescore_k)
        elif self.rescore_k is not None:
            _, shortlist = self._top_k(queries, min(max(self.rescore_k, top_k), len(self)), torch.bfloat16)
            scores, ids = self._rerank(queries, shortlist, top_k)
        else:
            scores, ids = self._top_k(queries, top_k)
        return scores.cpu(), ids.cpu()

    @torch.inference_mode()
    def score_all(self, query_embeddings: Tensor | np.ndarray) -> Tensor:
        """Exact logits ``(num_queries, num_candidates)`` of the ranking label, for every candidate, on the CPU."""
        queries = self._queries(query_embeddings)
        return torch.cat([chunk.cpu() for chunk in self._chunk_scores(queries)], 1)

    @torch.inference_mode()
    def score_candidates(self, query_embeddings: Tensor | np.ndarray, candidate_ids: Tensor | np.ndarray) -> Tensor:
        """Exact logits ``(num_queries, k)`` of each query against its own ``k`` candidates ``candidate_ids[q]``."""
        queries = self._queries(query_embeddings)
        ids = torch.as_tensor(candidate_ids, dtype=torch.long).reshape(len(queries), -1).to(self.device)
        return torch.stack([self._scores_for(query, ids[row]) for row, query in enumerate(queries)]).cpu()

    def _queries(self, query_embeddings: Tensor | np.ndarray) -> Tensor:
        embeddings = torch.as_tensor(query_embeddings)
        embeddings = embeddings[None] if embeddings.dim() == 1 else embeddings
        _check_dimension("Query", "queries", tuple(embeddings.shape), self.head.in_features)
        return embeddings.detach().to(self.device, torch.float32)

    def _step(self) -> int:
        return self.chunk_size or DEFAULT_CHUNK_SIZE.get(self.device.type, DEFAULT_CHUNK_SIZE["cuda"])

    def _starts(self, step: int | None = None) -> range:
        return range(0, max(len(self), 1), step or self._step())  # an empty index has one empty chunk

    def _query_vectors(self, queries: Tensor) -> Tensor:
        return self.head.query_vectors(queries)[:, self.label_index].float()

    def _chunk_scores(self, queries: Tensor, compute_dtype: torch.dtype | None = None) -> Iterator[Tensor]:
        if self.candidate_vectors is not None:
            # A factorized chunk needs only (queries x chunk) floats of working memory: take bigger chunks.
            query_vectors = self._query_vectors(queries).T.contiguous()
            for start in self._starts(16 * self._step()):
                yield self.candidate_vectors.matmul(query_vectors, start, start + 16 * self._step()).T
            return
        for start in self._starts():
            candidates = self.embeddings.chunk(start, start + self._step())
            yield torch.stack(
                [concat_logits(self.head, query, candidates, self.label_index, compute_dtype) for query in queries]
            )

    def _top_k(self, queries: Tensor, k: int, compute_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        # One topk per block of queries over all scores: cheaper than merging running top-k lists chunk by chunk.
        block = max(1, SCORE_BUFFER_ELEMENTS // max(len(self), 1))
        best = [torch.cat(list(self._chunk_scores(part, compute_dtype)), 1).topk(k) for part in queries.split(block)]
        return torch.cat([scores for scores, _ in best]), torch.cat([ids for _, ids in best])

    def _scores_for(self, query: Tensor, ids: Tensor, compute_dtype: torch.dtype | None = None) -> Tensor:
        if self.candidate_vectors is not None:
            return self.candidate_vectors.rows(ids) @ self._query_vectors(query[None])[0]
        return concat_logits(self.head, query, self.embeddings.rows(ids), self.label_index, compute_dtype)

    def _rerank(
        self, queries: Tensor, shortlist: Tensor, top_k: int, rescore_k: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Exact scores of each query's shortlisted ids (``-1`` = none), best ``top_k`` first (``-inf``/``-1`` pad);
        with ``rescore_k`` a longer shortlist is screened in bfloat16 first and only its best scored in float32."""
        scores_out = torch.full((len(queries), top_k), float("-inf"), device=queries.device)
        ids_out = torch.full((len(queries), top_k), -1, dtype=torch.long, device=queries.device)
        for row, query in enumerate(queries):
            ids = shortlist[row].to(queries.device)
            ids = torch.unique(ids[ids >= 0])
            if rescore_k is not None and len(ids) > max(rescore_k, top_k):
                ids = ids[self._scores_for(query, ids, torch.bfloat16).topk(max(rescore_k, top_k)).indices]
            k = min(top_k, len(ids))
            if k:
                scores_out[row, :k], positions = self._scores_for(query, ids).topk(k)
                ids_out[row, :k] = ids[positions]
        return scores_out, ids_out

    def config(self) -> dict[str, Any]:
        """The settings :meth:`save` writes to ``candidate_index.json``."""
        prefilter = self.prefilter
        values = (INDEX_FORMAT_VERSION, self.fingerprint, len(self), self.head.in_features, self.head.head_type)
        values += (self.label_index, self.storage_dtype, self.chunk_size, prefilter and prefilter.spec)
        values += (self.faiss_params, prefilter and prefilter.metric, self.rerank_k, self.rescore_k)
        return dict(zip(CONFIG_KEYS, values))

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to the folder ``path``, all or nothing, with a ``checksums.json`` for :meth:`load`."""

        def write(folder: Path) -> None:
            self.embeddings.save(folder, "embeddings")
            if self.candidate_vectors is not None:
                self.candidate_vectors.save(folder, "candidate_vectors")
            if self.prefilter is not None:
                self.prefilter.save(folder)
            (folder / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2))

        atomic_save_dir(path, write, kind="index")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: SentenceTransformer,
        mmap: bool = True,
        verify: VerifyMode = "full",
        device: str | torch.device = "cpu",
        faiss_params: str | None = None,
    ) -> CandidateIndex:
        """Open an index saved by :meth:`save`, for ``model``: the same student that built it.

        Args:
            mmap: On the CPU, memory-map the arrays instead of copying them.
            verify: Check the files against ``checksums.json``: ``"full"`` (sizes and SHA-256), ``"size"`` or
                ``"none"``. A missing, damaged or foreign file raises a CorruptFileError.
            device: Where to put the candidates.
            faiss_params: faiss search parameters instead of the saved ones.
        """
        directory, head = Path(path), get_pair_head(model)
        config = _read_config(directory, verify)
        load = partial(StoredMatrix.load, directory, dtype=config["storage_dtype"], mmap=mmap, device=device)
        count, settings = config["num_candidates"], {key: config[key] for key in SETTINGS}
        index = None  # a head of another shape may not take the saved settings: another model, refused below
        same_shape = (config["in_features"], config["head_type"]) == (head.in_features, head.head_type)
        if same_shape and config["label_index"] < head.num_labels:
            index = cls(model, load(name="embeddings", shape=(count, head.in_features)), **settings, device=device)
        if index is None or index.fingerprint != config["model_fingerprint"]:
            fingerprint = model_fingerprint(model) if index is None else index.fingerprint
            raise ValueError(
                f"The index in {directory} was built with another model (fingerprint "
                f"{config['model_fingerprint'][:12]}..., this model's is {fingerprint[:12]}...): its embeddings mean "
                "nothing to this model's head. Load the student that built it, or rebuild the index with this model: "
                "CandidateIndex.from_sentences(model, corpus)."
            )
        if head.head_type == "factorized":  # the saved vectors, not computed again
            index.candidate_vectors = load(name="candidate_vectors", shape=(count, head.rank + 2))
        if config["faiss_index"]:
            params = config["faiss_params"] if faiss_params is None else faiss_params
            spec, metric = config["faiss_index"], config["prefilter_metric"]
            index.prefilter = Prefilter.load(directory, spec, metric, index.prefilter_source, params, mmap)
        return index


def _read_config(directory: Path, verify: VerifyMode) -> dict[str, Any]:
    if not directory.is_symlink() and not directory.is_file():  # a save into it may have been killed mid-swap
        recover_interrupted_save(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: {directory} is not a saved CandidateIndex (or its save did not finish). "
            "Build it with CandidateIndex.from_sentences(model, corpus).save(path)."
        )
    if not verify_manifest(directory, verify=verify, remedy=REBUILD) and verify != "none":
        logger.warning("%s has no checksums.json: its files were not verified.", directory)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        config = {key: config[key] for key in CONFIG_KEYS}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise corrupt(path, f"is not a readable index config ({error!r})") from None
    if config["format_version"] > INDEX_FORMAT_VERSION:
        raise ValueError(f"{directory} was saved by a newer st_dse (index format {config['format_version']}).")
    return config


def _check_dimension(kind: str, rows: str, shape: tuple[int, ...], dim: int) -> None:
    if len(shape) != 2 or shape[-1] != dim:
        raise ValueError(
            f"{kind} embeddings have dimension {shape[-1] if shape else 0}, but this index's head expects {dim}: "
            f"pass embeddings of shape (num_{rows}, {dim}) from the same student (were they made by another model?)."
        )
