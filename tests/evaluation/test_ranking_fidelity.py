"""Ranking fidelity: overlap@k and NDCG@k of a student's ranking under its teacher's scores."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

import st_dse
from evaluation.ranking_fidelity import ranking_fidelity, ranking_grid, student_grid
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


def test_student_grid_is_the_heads_score_of_every_pair(tmp_path, minilm_path):
    torch.manual_seed(0)
    student = st_dse.build_student(str(build_tiny_encoder(tmp_path / "tiny", minilm_path)), hidden_dim=8)
    queries, candidates = ["a cat sits", "rain falls"], ["a dog runs", "the sun", "a cat sat", "snow"]
    grid = student_grid(student, queries, candidates)
    expected = st_dse.score_pairs(
        student, [q for q in queries for _ in candidates], [c for _ in queries for c in candidates]
    )
    np.testing.assert_allclose(grid, expected.reshape(2, 4), atol=1e-5)
