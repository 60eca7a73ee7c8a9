"""Exact head logits of queries against stored candidates, chunk by chunk, on the device that holds them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from st_dse.inference.storage import StoredMatrix
from st_dse.modules.pair_head import PairHead, concat_logits

Precision = Literal["float32", "bfloat16"]
# Scores of at most this many (query, candidate) floats are held at once; bounds memory for big query batches.
SCORE_BUFFER_ELEMENTS = 1 << 25


class HeadScorer:
    """Exact head logits of queries against stored candidates, chunk by chunk, where the candidates are stored.

    Concat head: per query and chunk, two ``(chunk, d) @ (d, hidden)`` products (see
    :func:`st_dse.modules.pair_head.concat_hidden`). Factorized head: one ``(chunk, rank + 2) @ (rank + 2, queries)``
    product over the stored candidate vectors. Queries must be float32 on the storage's device.
    """

    def __init__(
        self,
        head: PairHead,
        label_index: int,
        embeddings: StoredMatrix,
        candidate_vectors: StoredMatrix | None,
        chunk_size: int,
    ) -> None:
        self.head = head
        self.label_index = label_index
        self.embeddings = embeddings
        self.candidate_vectors = candidate_vectors
        self.chunk_size = chunk_size

    def check_queries(self, query_embeddings: Tensor | np.ndarray) -> Tensor:
        """Query embeddings as a float32 ``(num_queries, d)`` tensor on the storage's device."""
        embeddings = torch.as_tensor(query_embeddings)
        embeddings = embeddings[None] if embeddings.dim() == 1 else embeddings
        if embeddings.dim() != 2 or embeddings.shape[-1] != self.head.in_features:
            raise ValueError(
                f"Query embeddings have dimension {embeddings.shape[-1]}, but this index's head expects "
                f"{self.head.in_features}. Encode the queries with the same student model."
            )
        return embeddings.detach().to(self.embeddings.device, torch.float32)

    @torch.inference_mode()
    def compute_candidate_vectors(self) -> Tensor:
        """Factorized head: the ranking label's candidate vectors ``(num_candidates, rank + 2)`` in float32."""
        step, count = self.chunk_size, len(self.embeddings)
        chunks = (self.embeddings.chunk(start, start + step) for start in range(0, count, step))
        parts = [self.head.candidate_vectors(chunk)[:, self.label_index].float() for chunk in chunks]
        return torch.cat(parts) if parts else torch.zeros((0, self.head.rank + 2))

    def query_vectors(self, queries: Tensor) -> Tensor:
        """Factorized head: the ranking label's query vectors ``(num_queries, rank + 2)`` in float32."""
        return self.head.query_vectors(queries.to(next(self.head.parameters()).dtype))[:, self.label_index].float()

    def chunk_scores(self, queries: Tensor, compute_dtype: torch.dtype | None = None) -> Iterator[Tensor]:
        """Scores ``(num_queries, chunk)`` of consecutive candidate chunks; bfloat16 ``compute_dtype`` screens."""
        count = len(self.embeddings)
        if self.candidate_vectors is not None:
            # A factorized chunk needs only (queries x chunk) floats of working memory: take bigger chunks.
            query_vectors = self.query_vectors(queries).T.contiguous()
            for start in range(0, count, 16 * self.chunk_size):
                yield self.candidate_vectors.matmul(query_vectors, start, min(start + 16 * self.chunk_size, count)).T
            return
        for start in range(0, count, self.chunk_size):
            candidates = self.embeddings.chunk(start, min(start + self.chunk_size, count))
            yield torch.stack(
                [concat_logits(self.head, query, candidates, self.label_index, compute_dtype) for query in queries]
            )

    def top_k(self, queries: Tensor, k: int, compute_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """The ``k`` best scores and candidate ids ``(num_queries, k)`` of every candidate, best first."""
        # Scores of a block of queries against all candidates are gathered, then one topk per block: cheaper than
        # merging running top-k lists chunk by chunk, and the block size bounds the buffer.
        count = len(self.embeddings)
        block = max(1, SCORE_BUFFER_ELEMENTS // max(count, 1))
        all_scores, all_ids = [], []
        for block_queries in queries.split(block):
            scores = torch.empty((len(block_queries), count), dtype=torch.float32, device=queries.device)
            offset = 0
            for chunk in self.chunk_scores(block_queries, compute_dtype):
                scores[:, offset : offset + chunk.shape[1]] = chunk
                offset += chunk.shape[1]
            best_scores, best_ids = scores.topk(k, dim=1)
            all_scores.append(best_scores)
            all_ids.append(best_ids)
        return torch.cat(all_scores), torch.cat(all_ids)

    def scores_for(self, query: Tensor, ids: Tensor, compute_dtype: torch.dtype | None = None) -> Tensor:
        """Scores ``(len(ids),)`` of one query against the candidates ``ids``."""
        if self.candidate_vectors is not None:
            return self.candidate_vectors.rows(ids) @ self.query_vectors(query[None])[0]
        return concat_logits(self.head, query, self.embeddings.rows(ids), self.label_index, compute_dtype)

    def rerank(
        self, queries: Tensor, shortlist: Tensor, top_k: int, rescore_k: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Exact scores of each query's shortlisted ids (``-1`` = none), best ``top_k`` first (``-inf``/``-1`` pad).

        With ``rescore_k``, a shortlist longer than ``max(rescore_k, top_k)`` is screened in bfloat16 first and only
        its best are scored in float32.
        """
        scores_out = torch.full((len(queries), top_k), float("-inf"), device=queries.device)
        ids_out = torch.full((len(queries), top_k), -1, dtype=torch.long, device=queries.device)
        for row, query in enumerate(queries):
            ids = shortlist[row].to(queries.device)
            ids = torch.unique(ids[ids >= 0])
            if len(ids) == 0:
                continue
            if rescore_k is not None and len(ids) > max(rescore_k, top_k):
                screen = self.scores_for(query, ids, torch.bfloat16)
                ids = ids[screen.topk(max(rescore_k, top_k)).indices]
            scores = self.scores_for(query, ids)
            k = min(top_k, len(ids))
            best_scores, positions = scores.topk(k)
            scores_out[row, :k] = best_scores
            ids_out[row, :k] = ids[positions]
        return scores_out, ids_out
