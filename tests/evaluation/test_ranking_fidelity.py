"""Ranking fidelity: overlap@k, NDCG@k and RBO of a student's ranking under its teacher's scores, bootstrap intervals,
and the cascade metrics."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

import st_dse
from evaluation.ranking_fidelity import (
    bootstrap_interval,
    cascade_fidelity,
    ranking_fidelity,
    ranking_grid,
    rbo,
    student_grid,
)
from tests.test_reliability import build_tiny_encoder


def test_the_teachers_own_ranking_is_perfect_and_its_reverse_shares_nothing():
    teacher = np.random.default_rng(0).normal(size=(5, 40))
    same = ranking_fidelity(teacher * 3 + 1, teacher, k=10)  # any increasing map ranks alike
    assert same["overlap_at_k"] == 1.0 and same["ndcg_at_k"] == pytest.approx(1.0)
    reverse = ranking_fidelity(-teacher, teacher, k=10)
    assert reverse["overlap_at_k"] == 0.0 and reverse["ndcg_at_k"] < 0.5
    assert reverse["num_queries"] == 5 and reverse["num_candidates"] == 40


def test_values_on_a_hand_worked_example():
    teacher = np.array([[5.0, 4.0, 3.0, 0.0, 1.0]])  # gains after the shift by the minimum: 5 4 3 0 1
    student = np.array([[0.9, 0.1, 0.2, 0.8, 0.0]])  # top 2: candidates 0 and 3
    result = ranking_fidelity(student, teacher, k=2)
    assert result["overlap_at_k"] == 0.5  # candidate 0 of the teacher's {0, 1}
    dcg = 5 / np.log2(2) + 0 / np.log2(3)
    ideal = 5 / np.log2(2) + 4 / np.log2(3)
    assert result["ndcg_at_k"] == pytest.approx(dcg / ideal)
    assert result["overlap_per_query"] == [0.5]


def test_excluded_cells_are_never_ranked():
    teacher = np.array([[9.0, 3.0, 2.0, 1.0, 0.0]])
    student = np.array([[9.0, 0.0, 1.0, 2.0, 3.0]])
    # Candidate 0 is the query itself: both would put it first.
    assert ranking_fidelity(student, teacher, k=1)["overlap_at_k"] == 1.0
    excluded = ranking_fidelity(student, teacher, k=1, exclude=[[True, False, False, False, False]])
    assert excluded["overlap_at_k"] == 0.0  # teacher: candidate 1, student: candidate 4


def test_bad_arguments_are_refused_with_the_reason():
    scores = np.zeros((2, 12))
    with pytest.raises(ValueError, match="same \\(queries, candidates\\) matrix"):
        ranking_fidelity(scores, np.zeros((2, 11)))
    with pytest.raises(ValueError, match="k must be an integer in \\[1, 11\\]"):
        ranking_fidelity(scores, scores, k=12)
    with pytest.raises(ValueError, match="candidates left to rank"):
        ranking_fidelity(scores, scores, k=10, exclude=np.arange(12) < 2)


def test_grid_queries_are_distinct_first_sentences_and_candidates_every_second():
    pairs = datasets.Dataset.from_dict(
        {
            "sentence1": [f"q{i % 8}" for i in range(30)],
            "sentence2": [f"c{i}" for i in range(30)],
        }
    )
    queries, candidates = ranking_grid(pairs, num_queries=5, seed=1)
    assert len(queries) == len(set(queries)) == 5 and set(queries) <= {f"q{i}" for i in range(8)}
    assert candidates == [f"c{i}" for i in range(30)]
    assert ranking_grid(pairs, 5, seed=1) == (queries, candidates)
    assert len(ranking_grid(pairs, 100)[0]) == 8  # at most every distinct first sentence
    with pytest.raises(ValueError, match="more than 10"):
        ranking_grid(pairs.select(range(10)), 3)


def test_grid_candidate_limit_keeps_every_gold_partner_and_draws_the_rest():
    pairs = datasets.Dataset.from_dict(
        {
            "sentence1": [f"q{i % 8}" for i in range(40)],
            "sentence2": [f"c{i}" for i in range(40)],
        }
    )
    queries, everything = ranking_grid(pairs, num_queries=3, seed=1)
    limited_queries, candidates = ranking_grid(pairs, 3, seed=1, max_candidates=25)
    partners = {f"c{i}" for i in range(40) if f"q{i % 8}" in queries}
    assert limited_queries == queries and len(partners) == 15
    assert len(candidates) == 25 and partners <= set(candidates)
    assert candidates == [candidate for candidate in everything if candidate in candidates]  # the dataset's order
    assert ranking_grid(pairs, 3, seed=1, max_candidates=25) == (queries, candidates)
    assert ranking_grid(pairs, 3, seed=2, max_candidates=25)[1] != candidates
    assert ranking_grid(pairs, 3, seed=1, max_candidates=40)[1] == everything
    with pytest.raises(ValueError, match="below the 15 gold partners of the 3 queries"):
        ranking_grid(pairs, 3, seed=1, max_candidates=14)


def test_student_grid_is_the_heads_score_of_every_pair(tmp_path, minilm_path):
    torch.manual_seed(0)
    student = st_dse.build_student(str(build_tiny_encoder(tmp_path / "tiny", minilm_path)), hidden_dim=8)
    queries, candidates = ["a cat sits", "rain falls"], ["a dog runs", "the sun", "a cat sat", "snow"]
    grid = student_grid(student, queries, candidates)
    expected = st_dse.score_pairs(
        student, [q for q in queries for _ in candidates], [c for _ in queries for c in candidates]
    )
    np.testing.assert_allclose(grid, expected.reshape(2, 4), atol=1e-5)


def test_rbo_against_a_hand_computation():
    # Overlaps of the prefixes: depth 1 shares nothing, depth 2 shares {a, b}, depth 3 still {a, b}.
    p = 0.9
    expected = 2 / 3 * p**3 + (1 - p) / p * (0 / 1 * p + 2 / 2 * p**2 + 2 / 3 * p**3)
    assert rbo(["a", "b", "c"], ["b", "a", "d"], p=p) == pytest.approx(expected)
    # Extrapolated: identical lists score 1 at any depth (the truncated sum alone would stop at 1 - p**depth).
    assert rbo(list(range(10)), list(range(10))) == pytest.approx(1.0)
    assert rbo([7], [7]) == pytest.approx(1.0)
    assert rbo(list(range(10)), list(range(10, 20))) == 0.0
    assert 0 < rbo([0, 1, 2, 3], [3, 2, 1, 0]) < rbo([0, 1, 2, 3], [0, 1, 3, 2]) < 1  # the top weighs more
    with pytest.raises(ValueError, match="one depth"):
        rbo([1, 2], [1])


def test_fidelity_reports_rbo_and_bootstrap_intervals_around_each_mean():
    teacher = np.random.default_rng(0).normal(size=(30, 40))
    noisy = teacher + np.random.default_rng(1).normal(size=teacher.shape)
    result = ranking_fidelity(noisy, teacher, k=10)
    assert result["rbo_per_query"] == [
        rbo(np.argsort(-s, kind="stable")[:10].tolist(), np.argsort(-t, kind="stable")[:10].tolist())
        for s, t in zip(noisy, teacher)
    ]
    for metric in ("overlap_at_k", "ndcg_at_k", "rbo_at_k"):
        low, high = result["intervals"][metric]
        assert low < result[metric] < high
    assert ranking_fidelity(teacher, teacher)["rbo_at_k"] == pytest.approx(1.0)


def test_bootstrap_interval_holds_the_mean_and_is_reproducible():
    values = np.random.default_rng(0).uniform(size=200)
    low, high = bootstrap_interval(values)
    assert low < values.mean() < high and high - low < 0.2
    assert bootstrap_interval(values) == [low, high]  # a fixed seed
    assert bootstrap_interval([0.5] * 20) == [pytest.approx(0.5), pytest.approx(0.5)]
    # Paired: every list of one length is resampled at the same queries.
    shifted_low, shifted_high = bootstrap_interval(values + 1)
    assert shifted_low == pytest.approx(low + 1) and shifted_high == pytest.approx(high + 1)


def test_cascade_of_a_perfect_student_is_the_teacher_at_every_shortlist():
    teacher = np.random.default_rng(0).normal(size=(6, 40))
    rows = cascade_fidelity(teacher * 2, teacher, shortlists=[10, 20, 50, 100], k=10)
    assert [row["shortlist"] for row in rows] == [10, 20, 40]  # capped at the pool, repeats dropped
    assert [row["teacher_calls_saved"] for row in rows] == [4.0, 2.0, 1.0]
    for row in rows:
        assert row["ndcg_at_k"] == pytest.approx(1.0) and row["teacher_top_k_in_shortlist"] == 1.0
        assert row["intervals"]["ndcg_at_k"] == [pytest.approx(1.0), pytest.approx(1.0)]


def test_cascade_of_a_reversed_student_recovers_only_when_the_shortlist_holds_the_teachers_top():
    teacher = np.random.default_rng(0).normal(size=(6, 40))
    short, half, whole = cascade_fidelity(-teacher, teacher, shortlists=[10, 30, 40], k=10)
    assert short["teacher_top_k_in_shortlist"] == 0.0 and short["ndcg_at_k"] < 0.5
    assert half["teacher_top_k_in_shortlist"] == 0.0  # the 30 worst hold none of the best 10
    assert whole["teacher_top_k_in_shortlist"] == 1.0 and whole["ndcg_at_k"] == pytest.approx(1.0)
    # The cascade's NDCG is that of the teacher ordering the shortlist: here its 10 best of the student's 10.
    manual = ranking_fidelity(np.where(np.argsort(np.argsort(teacher, 1), 1) < 10, teacher, -1e9), teacher, k=10)
    assert short["ndcg_per_query"] == pytest.approx(manual["ndcg_per_query"])


def test_cascade_skips_excluded_candidates():
    teacher = np.arange(13, dtype=float)[None].repeat(2, 0)
    exclude = np.zeros_like(teacher, dtype=bool)
    exclude[0, 12] = True  # query 0 is candidate 12, the teacher's favourite
    (row,) = cascade_fidelity(teacher, teacher, shortlists=[100], k=10, exclude=exclude)
    assert row["shortlist"] == 13 and row["teacher_calls_saved"] == 1.0 and row["ndcg_at_k"] == pytest.approx(1.0)
