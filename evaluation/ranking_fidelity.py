"""Ranking fidelity: does the student rank candidates for a query the way its teacher does?

DSE exists for search: one query against many cached candidates. A student can match its teacher's labels on a task's
pairs and still order a query's candidates differently. These functions measure that on a grid of queries x
candidates scored by both models:

* ``overlap@k``: the share of the teacher's top k that is also in the student's top k.
* ``ndcg@k``: the NDCG of the student's top k, with the teacher's scores as gains (shifted per query so that the
  query's lowest-scored candidate has gain 0); 1.0 when the student's top k is the teacher's, in the teacher's order.

Both are averaged over queries. :func:`ranking_grid` builds the grid from a task's dev pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from st_dse.student import get_pair_head


def ranking_grid(
    dataset: datasets.Dataset,
    num_queries: int,
    seed: int = 0,
    sentence1_column: str = "sentence1",
    sentence2_column: str = "sentence2",
) -> tuple[list[str], list[str]]:
    """Queries and a shared candidate pool from a set of pairs.

    Queries: ``num_queries`` distinct first sentences, drawn at random (``seed``). Candidates: every distinct second
    sentence of the dataset, so each query's gold partner is among them. A query is never its own candidate.

    Raises:
        ValueError: ``num_queries`` < 1, or fewer than 11 distinct candidates (nothing to rank).
    """
    if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 1:
        raise ValueError(f"num_queries must be an integer >= 1, got {num_queries!r}.")
    firsts = list(dict.fromkeys(dataset[sentence1_column]))
    candidates = list(dict.fromkeys(dataset[sentence2_column]))
    if len(candidates) < 11:
        raise ValueError(f"Only {len(candidates)} distinct candidates: a ranking needs more than 10.")
    order = np.random.default_rng(seed).permutation(len(firsts))[: min(num_queries, len(firsts))]
    return [firsts[i] for i in sorted(order)], candidates


def student_grid(
    model: SentenceTransformer,
    queries: Sequence[str],
    candidates: Sequence[str],
    column: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """``(len(queries), len(candidates))`` raw logits of the student's PairHead (logit ``column`` for k-way heads)."""
    head = get_pair_head(model)
    encode = dict(batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    with torch.inference_mode():
        query_embeddings = model.encode(list(queries), **encode)
        candidate_embeddings = model.encode(list(candidates), **encode)
        logits = head.score_all(query_embeddings, candidate_embeddings).float()
    if logits.dim() == 3:
        logits = logits[..., column]
    return logits.cpu().numpy()


def ranking_fidelity(student_scores: Any, teacher_scores: Any, k: int = 10, exclude: Any = None) -> dict[str, Any]:
    """Overlap@k and NDCG@k of the student's ranking against the teacher's, per query and averaged.

    Args:
        student_scores, teacher_scores: ``(num_queries, num_candidates)`` scores (higher ranks first).
        k: the cut-off.
        exclude: optional boolean mask of the same shape; True cells are not ranked (e.g. a query against itself).

    Returns:
        ``{"k", "num_queries", "num_candidates", "overlap_at_k", "ndcg_at_k", "overlap_per_query",
        "ndcg_per_query"}``.
    """
    student, teacher = np.asarray(student_scores, dtype=np.float64), np.asarray(teacher_scores, dtype=np.float64)
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"Student scores {student.shape} and teacher scores {teacher.shape} must be the same (queries, candidates)"
            " matrix."
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < student.shape[1]:
        raise ValueError(
            f"k must be an integer in [1, {student.shape[1] - 1}] (fewer than the candidates), got {k!r}."
        )
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        student, teacher = np.where(exclude, -np.inf, student), np.where(exclude, -np.inf, teacher)
    overlaps, ndcgs = [], []
    for student_row, teacher_row in zip(student, teacher):
        ranked = np.isfinite(teacher_row)
        if ranked.sum() <= k:
            raise ValueError(f"A query has {ranked.sum()} candidates left to rank; k={k} needs more.")
        student_top, teacher_top = _top(student_row, k), _top(teacher_row, k)
        overlaps.append(len(set(student_top) & set(teacher_top)) / k)
        gains = teacher_row - teacher_row[ranked].min()
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        ideal = float((gains[teacher_top] * discounts).sum())
        ndcgs.append(float((gains[student_top] * discounts).sum()) / ideal if ideal > 0 else 1.0)
    return {
        "k": k,
        "num_queries": len(overlaps),
        "num_candidates": student.shape[1],
        "overlap_at_k": float(np.mean(overlaps)),
        "ndcg_at_k": float(np.mean(ndcgs)),
        "overlap_per_query": overlaps,
        "ndcg_per_query": ndcgs,
    }


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first; ties broken by the lower index (a stable order)."""
    return np.argsort(-scores, kind="stable")[:k]
