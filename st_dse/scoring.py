"""Scoring with a trained student: pairs, and queries against many precomputed candidates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor

from st_dse.head import PairHead, get_pair_head
from st_dse.teacher import check_pairs

Output = Literal["logits", "probabilities", "labels"]


def logits_to_output(logits: Tensor, problem_type: str, output: Output = "logits") -> Tensor:
    """Turn head logits ``(n, num_labels)`` into the requested output.

    ``"logits"`` gives ``(n,)`` for one-logit heads and ``(n, k)`` for k-way heads; ``"probabilities"`` applies a
    sigmoid (binary) or softmax (k-way); ``"labels"`` gives class ids (binary: logit > 0, i.e. probability > 0.5).
    """
    if output not in ("logits", "probabilities", "labels"):
        raise ValueError(f"output must be 'logits', 'probabilities' or 'labels', got {output!r}.")
    if problem_type == "regression" and output != "logits":
        raise ValueError(f"A regression head gives scores, not {output}; use output='logits'.")
    if problem_type == "multiclass":
        if output == "probabilities":
            return torch.softmax(logits, dim=-1)
        return logits.argmax(dim=-1) if output == "labels" else logits
    logits = logits[:, 0]
    if output == "probabilities":
        return torch.sigmoid(logits)
    return (logits > 0).long() if output == "labels" else logits


def _embed_unique(
    model: SentenceTransformer, sentences: Sequence[str], batch_size: int, show_progress_bar: bool | None
) -> tuple[Tensor, list[int]]:
    """Encode each distinct sentence once; return the embeddings and each input's row in them."""
    position: dict[str, int] = {}
    rows = [position.setdefault(sentence, len(position)) for sentence in sentences]
    embeddings = model.encode(
        list(position), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar
    )
    return embeddings, rows


@torch.inference_mode()
def score_pairs(
    model: SentenceTransformer,
    sentences1: Sequence[str],
    sentences2: Sequence[str],
    output: Output = "logits",
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    convert_to_numpy: bool = True,
) -> np.ndarray | Tensor:
    """Score row-aligned sentence pairs with a student's PairHead.

    Each distinct sentence is encoded once, so scoring many pairs that share sentences costs one encode per sentence.

    Args:
        model: A student with a PairHead, e.g. ``SentenceTransformer("path/to/dse-student")``.
        sentences1, sentences2: Lists of the same length; row i of each forms pair i.
        output: ``"logits"`` (the head's raw output, what the teacher's logits were distilled into),
            ``"probabilities"`` or ``"labels"``.
        batch_size: Encoding batch size.
        convert_to_numpy: Return a numpy array (default) or a torch tensor.

    Returns:
        ``(n,)`` for binary and regression heads (and for labels), ``(n, k)`` logits or probabilities for k-way heads.
    """
    head = get_pair_head(model)
    if isinstance(sentences1, str) or isinstance(sentences2, str):
        raise ValueError("score_pairs takes two lists of sentences; wrap a single pair as ([sentence1], [sentence2]).")
    sentences1, sentences2 = list(sentences1), list(sentences2)
    check_pairs(sentences1, sentences2)
    model.eval()
    if not sentences1:
        empty = torch.zeros((0, head.num_labels))
        result = logits_to_output(empty, head.problem_type, output)
    else:
        embeddings, rows = _embed_unique(model, sentences1 + sentences2, batch_size, show_progress_bar)
        rows1 = torch.tensor(rows[: len(sentences1)], device=embeddings.device)
        rows2 = torch.tensor(rows[len(sentences1) :], device=embeddings.device)
        logits = head.score(embeddings[rows1], embeddings[rows2]).float()
        result = logits_to_output(logits, head.problem_type, output).cpu()
    return result.numpy() if convert_to_numpy else result


class CandidateIndex:
    """Candidates encoded once; queries scored against all of them with the PairHead, top-k returned.

    Scoring is exact and vectorised: candidates are processed in chunks of ``chunk_size`` and the running top-k is
    kept with ``torch.topk``, with no Python loop over candidates. With a factorized head, candidate-side vectors are
    precomputed and a query costs one matrix-vector product.

    Example:
        ::

            index = CandidateIndex.from_sentences(student, corpus)
            hits = index.search(["How do I learn Python?"], top_k=5)
            # hits[0] == [{"corpus_id": 12, "score": 4.1}, ...], best first (score = the head's logit)
    """

    def __init__(
        self,
        model: SentenceTransformer,
        candidate_embeddings: Tensor | np.ndarray,
        label_index: int | None = None,
        chunk_size: int = 16384,
    ) -> None:
        self.model = model
        self.head: PairHead = get_pair_head(model)
        embeddings = torch.as_tensor(candidate_embeddings)
        if embeddings.dim() != 2 or embeddings.shape[1] != self.head.in_features:
            raise ValueError(
                f"Candidate embeddings must have shape (num_candidates, {self.head.in_features}), got "
                f"{tuple(embeddings.shape)}. Were they made by another model?"
            )
        if self.head.num_labels > 1 and label_index is None:
            raise ValueError(
                f"This head has {self.head.num_labels} labels; pass label_index= to say which label's logit ranks "
                f"candidates (label names: {self.head.label_names})."
            )
        self.label_index = label_index or 0
        if not 0 <= self.label_index < self.head.num_labels:
            raise ValueError(f"label_index must be in [0, {self.head.num_labels - 1}], got {label_index}.")
        self.chunk_size = chunk_size
        self.embeddings = embeddings.to(self.head._parameter_dtype())
        self.candidate_vectors: Tensor | None = None
        if self.head.head_type == "factorized":
            with torch.inference_mode():
                self.candidate_vectors = torch.cat(
                    [
                        self.head.candidate_vectors(chunk)[:, self.label_index]
                        for chunk in self.embeddings.split(chunk_size)
                    ]
                )

    @classmethod
    def from_sentences(
        cls,
        model: SentenceTransformer,
        candidates: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        **kwargs,
    ) -> CandidateIndex:
        """Encode ``candidates`` with the student and build the index."""
        candidates = list(candidates)
        check_pairs(candidates, candidates, what="candidate")
        model.eval()
        embeddings = model.encode(
            candidates, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar
        )
        return cls(model, embeddings.cpu(), **kwargs)

    def __len__(self) -> int:
        return len(self.embeddings)

    @torch.inference_mode()
    def search(
        self, queries: Sequence[str] | str | Tensor | np.ndarray, top_k: int = 10, batch_size: int = 32
    ) -> list[list[dict[str, float | int]]]:
        """Top ``top_k`` candidates per query by the head's logit, best first, as ``{"corpus_id", "score"}`` dicts.

        Queries may be sentences (encoded here) or precomputed query embeddings.
        """
        self.model.eval()
        query_embeddings = self._query_embeddings(queries, batch_size)
        top_k = min(top_k, len(self))
        if top_k <= 0:
            return [[] for _ in range(len(query_embeddings))]
        scores, ids = self._top_k(query_embeddings, top_k)
        return [
            [{"corpus_id": int(i), "score": float(s)} for s, i in zip(row_scores, row_ids)]
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist())
        ]

    def _query_embeddings(self, queries, batch_size: int) -> Tensor:
        if isinstance(queries, str):
            queries = [queries]
        if isinstance(queries, (Tensor, np.ndarray)):
            embeddings = torch.as_tensor(queries)
            if embeddings.dim() == 1:
                embeddings = embeddings[None]
            if embeddings.shape[-1] != self.head.in_features:
                raise ValueError(
                    f"Query embeddings have dimension {embeddings.shape[-1]}, but this index's head expects "
                    f"{self.head.in_features}. Encode the queries with the same student model."
                )
            return embeddings.to(self.embeddings.dtype)
        queries = list(queries)
        check_pairs(queries, queries, what="query")
        self.model.eval()
        embeddings = self.model.encode(queries, batch_size=batch_size, convert_to_tensor=True)
        return embeddings.cpu().to(self.embeddings.dtype)

    def score_all(self, query_embeddings: Tensor) -> Tensor:
        """Logits ``(num_queries, num_candidates)`` of the ranking label, for every candidate."""
        return torch.cat(list(self._chunk_scores(query_embeddings)), dim=1)

    def _chunk_scores(self, query_embeddings: Tensor):
        if self.candidate_vectors is not None:
            query_vectors = self.head.query_vectors(query_embeddings)[:, self.label_index]
            for chunk in self.candidate_vectors.split(self.chunk_size):
                yield query_vectors @ chunk.T
        else:
            # One query at a time bounds the (candidates x hidden) activation to chunk_size * hidden_dim floats.
            for chunk in self.embeddings.split(self.chunk_size):
                yield torch.cat(
                    [self.head.score_all(query, chunk)[..., self.label_index] for query in query_embeddings.split(1)]
                )

    def _top_k(self, query_embeddings: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
        best_scores = query_embeddings.new_full((len(query_embeddings), 0), float("-inf"))
        best_ids = torch.zeros((len(query_embeddings), 0), dtype=torch.long)
        offset = 0
        for scores in self._chunk_scores(query_embeddings):
            ids = torch.arange(offset, offset + scores.shape[1]).expand(len(scores), -1)
            offset += scores.shape[1]
            merged_scores = torch.cat([best_scores, scores.float()], dim=1)
            merged_ids = torch.cat([best_ids, ids], dim=1)
            k = min(top_k, merged_scores.shape[1])
            best_scores, positions = merged_scores.topk(k, dim=1)
            best_ids = merged_ids.gather(1, positions)
        return best_scores, best_ids
