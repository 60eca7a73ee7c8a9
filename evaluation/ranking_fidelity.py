"""Ranking fidelity: does the student rank candidates for a query the way its teacher does?

DSE exists for search: one query against many cached candidates. A student can match its teacher's labels on a task's
pairs and still order a query's candidates differently. These functions measure that on a grid of queries x
candidates scored by both models:

* ``overlap@k``: the share of the teacher's top k that is also in the student's top k.
* ``ndcg@k``: the NDCG of the student's top k, with the teacher's scores as gains (shifted per query so that the
  query's lowest-scored candidate has gain 0); 1.0 when the student's top k is the teacher's, in the teacher's order.
* ``rbo@k``: extrapolated rank-biased overlap (p=0.9) of the two top-k lists; see :func:`rbo`.

Each is averaged over queries, with a percentile bootstrap 95% interval over queries (:func:`bootstrap_interval`).
:func:`cascade_fidelity` scores a cascade (the student shortlists, the teacher re-ranks the shortlist) from the same
grid. :func:`ranking_grid` builds the grid from a task's dev pairs.
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
    max_candidates: int | None = None,
) -> tuple[list[str], list[str]]:
    """Queries and a shared candidate pool from a set of pairs.

    Queries: ``num_queries`` distinct first sentences, drawn at random (``seed``). Candidates: every distinct second
    sentence of the dataset, so each query's gold partner is among them; with ``max_candidates``, the queries' gold
    partners and a random draw of the other second sentences, ``max_candidates`` in all (in the dataset's order). A
    query is never its own candidate.

    Raises:
        ValueError: ``num_queries`` < 1, fewer than 11 distinct candidates (nothing to rank), or ``max_candidates``
            below the number of the queries' gold partners.
    """
    if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 1:
        raise ValueError(f"num_queries must be an integer >= 1, got {num_queries!r}.")
    column1, column2 = list(dataset[sentence1_column]), list(dataset[sentence2_column])
    firsts, candidates = list(dict.fromkeys(column1)), list(dict.fromkeys(column2))
    if len(candidates) < 11:
        raise ValueError(f"Only {len(candidates)} distinct candidates: a ranking needs more than 10.")
    rng = np.random.default_rng(seed)
    queries = [firsts[i] for i in sorted(rng.permutation(len(firsts))[: min(num_queries, len(firsts))])]
    if max_candidates is None or max_candidates >= len(candidates):
        return queries, candidates
    chosen = set(queries)
    keep = {second for first, second in zip(column1, column2) if first in chosen}
    if max_candidates < max(len(keep), 11):
        raise ValueError(
            f"max_candidates={max_candidates} is below the {len(keep)} gold partners of the {len(queries)} queries "
            "(or 11, the least a ranking needs): raise the candidate limit or draw fewer queries."
        )
    others = [candidate for candidate in candidates if candidate not in keep]
    keep |= {others[i] for i in rng.permutation(len(others))[: max_candidates - len(keep)]}
    return queries, [candidate for candidate in candidates if candidate in keep]


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


def rbo(ranking: Sequence, reference: Sequence, p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap of two rankings of the same depth ``k`` (Webber, Moffat and Zobel, 2010,
    eq. 32): ``RBO_ext = X_k / k * p**k + (1 - p) / p * sum_{d=1..k} X_d / d * p**d``, where ``X_d`` is the number of
    items the two top-``d`` prefixes share.

    1.0 for identical lists and 0.0 for disjoint ones at any depth (the truncated sum alone would top out at
    ``1 - p**k``); ``p`` weighs the top: with p=0.9 the first 10 ranks carry 86% of the weight.
    """
    if len(ranking) != len(reference) or not ranking:
        raise ValueError(f"RBO needs two non-empty rankings of one depth, got {len(ranking)} and {len(reference)}.")
    seen, seen_reference, shared, total = set(), set(), 0, 0.0
    for depth, (item, reference_item) in enumerate(zip(ranking, reference), start=1):
        if item == reference_item:
            shared += 1
        else:
            shared += (item in seen_reference) + (reference_item in seen)
        seen.add(item)
        seen_reference.add(reference_item)
        total += shared / depth * p**depth
    depth = len(ranking)
    return float(shared / depth * p**depth + (1 - p) / p * total)


def bootstrap_interval(
    values: Sequence[float], num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> list[float]:
    """Percentile bootstrap interval ``[low, high]`` of the mean of per-query ``values``, queries resampled with
    replacement. The fixed ``seed`` draws the same resamples for every list of the same length, so the interval of
    per-query differences (student - reference) is a paired bootstrap."""
    values = np.asarray(values, dtype=np.float64)
    rows = np.random.default_rng(seed).integers(0, len(values), size=(num_resamples, len(values)))
    means = values[rows].mean(axis=1)
    tail = (1 - confidence) / 2
    return [float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))]


def ranking_fidelity(student_scores: Any, teacher_scores: Any, k: int = 10, exclude: Any = None) -> dict[str, Any]:
    """Overlap@k, NDCG@k and RBO@k of the student's ranking against the teacher's, per query and averaged.

    Args:
        student_scores, teacher_scores: ``(num_queries, num_candidates)`` scores (higher ranks first).
        k: the cut-off.
        exclude: optional boolean mask of the same shape; True cells are not ranked (e.g. a query against itself).

    Returns:
        ``{"k", "num_queries", "num_candidates", "overlap_at_k", "ndcg_at_k", "rbo_at_k", "overlap_per_query",
        "ndcg_per_query", "rbo_per_query", "intervals"}``; ``intervals`` maps each of the three means to its
        bootstrap 95% interval.
    """
    student, teacher = _score_grids(student_scores, teacher_scores, k, exclude)
    overlaps, ndcgs, rbos = [], [], []
    for student_row, teacher_row in zip(student, teacher):
        student_top, teacher_top = _top(student_row, k), _top(teacher_row, k)
        overlaps.append(len(set(student_top) & set(teacher_top)) / k)
        ndcgs.append(_ndcg(student_top, teacher_row, k))
        rbos.append(rbo(student_top.tolist(), teacher_top.tolist()))
    per_query = {"overlap_at_k": overlaps, "ndcg_at_k": ndcgs, "rbo_at_k": rbos}
    return {
        "k": k,
        "num_queries": len(overlaps),
        "num_candidates": student.shape[1],
        **{name: float(np.mean(values)) for name, values in per_query.items()},
        "overlap_per_query": overlaps,
        "ndcg_per_query": ndcgs,
        "rbo_per_query": rbos,
        "intervals": {name: bootstrap_interval(values) for name, values in per_query.items()},
    }


def cascade_fidelity(
    student_scores: Any, teacher_scores: Any, shortlists: Sequence[int], k: int = 10, exclude: Any = None
) -> list[dict[str, Any]]:
    """A cascade per shortlist size ``s``: the student's top ``s`` candidates re-ranked by the teacher's scores (the
    grid's, so no new teacher calls). ``s`` is capped at the candidates a query has, and repeated sizes dropped.

    Returns one row per size: ``{"shortlist", "teacher_calls_saved" (exhaustive teacher calls / cascade calls),
    "ndcg_at_k" (NDCG@k of the cascade's top k under the teacher's scores), "teacher_top_k_in_shortlist" (the share
    of the teacher's exhaustive top k the shortlist holds), their ``*_per_query`` lists and bootstrap "intervals"}``.
    """
    student, teacher = _score_grids(student_scores, teacher_scores, k, exclude)
    rankable = np.isfinite(teacher).sum(axis=1)
    rows = []
    for shortlist in sorted({min(int(size), int(rankable.max())) for size in shortlists}):
        sizes = np.minimum(shortlist, rankable)
        ndcgs, recalls = [], []
        for student_row, teacher_row, size in zip(student, teacher, sizes):
            shortlisted = _top(student_row, size)
            reranked = shortlisted[_top(teacher_row[shortlisted], min(k, size))]
            ndcgs.append(_ndcg(reranked, teacher_row, k))
            recalls.append(len(set(shortlisted) & set(_top(teacher_row, k))) / k)
        per_query = {"ndcg_at_k": ndcgs, "teacher_top_k_in_shortlist": recalls}
        rows.append(
            {
                "shortlist": shortlist,
                "teacher_calls_saved": float(rankable.sum() / sizes.sum()),
                **{name: float(np.mean(values)) for name, values in per_query.items()},
                "ndcg_per_query": ndcgs,
                "teacher_top_k_in_shortlist_per_query": recalls,
                "intervals": {name: bootstrap_interval(values) for name, values in per_query.items()},
            }
        )
    return rows


def _score_grids(student_scores: Any, teacher_scores: Any, k: int, exclude: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both grids as float64 with excluded cells at ``-inf``, after checking their shapes and ``k``."""
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
    rankable = np.isfinite(teacher).sum(axis=1)
    if rankable.min() <= k:
        raise ValueError(f"A query has {rankable.min()} candidates left to rank; k={k} needs more.")
    return student, teacher


def _ndcg(ranked: np.ndarray, teacher_row: np.ndarray, k: int) -> float:
    """NDCG@k of the candidates ``ranked`` (best first, at most k), the teacher's shifted scores as gains."""
    gains = teacher_row - teacher_row[np.isfinite(teacher_row)].min()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = float((gains[_top(teacher_row, k)] * discounts).sum())
    return float((gains[ranked] * discounts[: len(ranked)]).sum()) / ideal if ideal > 0 else 1.0


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first; ties broken by the lower index (a stable order)."""
    return np.argsort(-scores, kind="stable")[:k]
