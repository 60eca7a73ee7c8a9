"""evaluation.ranking on tiny saved models: the report is ranking_fidelity and cascade_fidelity of their grids."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

import st_dse
from evaluation import ranking
from evaluation.ranking_fidelity import cascade_fidelity, ranking_fidelity, student_grid
from st_dse.data import get_task
from st_dse.teacher.labelling import raw_logits
from st_dse.training import save_student
from tests.test_reliability import build_tiny_encoder

WORDS = "cat dog sun rain snow tree car road bird fish".split()


@pytest.fixture(scope="module")
def models(tmp_path_factory, minilm_path):
    root = tmp_path_factory.mktemp("ranking")
    tiny = str(build_tiny_encoder(root / "tiny", minilm_path))
    torch.manual_seed(0)
    CrossEncoder(tiny, num_labels=1, max_length=32).save(str(root / "teacher"))
    torch.manual_seed(1)
    CrossEncoder(tiny, num_labels=1, max_length=32).save(str(root / "teacher-seed1"))
    three = CrossEncoder(tiny, num_labels=3, max_length=32)
    three.config.id2label = {0: "contradiction", 1: "entailment", 2: "neutral"}
    three.save(str(root / "teacher3"))
    save_student(st_dse.build_student(tiny, hidden_dim=8), root / "student", get_task("mrpc"), None, {})
    dev = root / "dev.csv"
    with dev.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence1", "sentence2"])
        for i in range(24):
            writer.writerow([f"the {WORDS[i % 10]} and the {WORDS[(i * 3) % 10]}", f"a {WORDS[(i * 7) % 10]} {i}"])
    return root


def test_report_is_the_fidelity_of_the_two_grids(models, tmp_path):
    args = ["--dev-file", str(models / "dev.csv"), "--teacher", str(models / "teacher"), "--cpu"]
    args += ["--students", str(models / "student"), "--queries", "5", "--cache-dir", str(tmp_path / "cache")]
    results = ranking.main([*args, "--output-dir", str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "ranking.json").read_text())
    assert saved["students"] == results["students"]
    queries, candidates = results["settings"]["num_queries"], results["settings"]["num_candidates"]
    assert (queries, candidates) == (5, 24)

    # The same numbers from the library functions directly.
    from evaluation.ranking_fidelity import ranking_grid
    from st_dse.data.pairs import read_pair_file

    query_list, candidate_list = ranking_grid(read_pair_file(models / "dev.csv"), 5, seed=0)
    teacher = CrossEncoder(str(models / "teacher"), device="cpu")
    pairs = [(q, c) for q in query_list for c in candidate_list]
    teacher_scores = raw_logits(teacher, pairs)[:, 0].reshape(5, 24)
    student_scores = student_grid(
        st_dse.load_student(str(models / "student"), device="cpu"), query_list, candidate_list
    )
    expected = ranking_fidelity(student_scores, teacher_scores, k=10)
    got = results["students"][str(models / "student")]
    assert got["overlap_per_query"] == expected["overlap_per_query"]
    np.testing.assert_allclose(got["ndcg_per_query"], expected["ndcg_per_query"], atol=1e-6)


def grid_of(teacher_path, queries, candidates):
    teacher = CrossEncoder(str(teacher_path), device="cpu")
    pairs = [(q, c) for q in queries for c in candidates]
    return raw_logits(teacher, pairs)[:, 0].reshape(len(queries), len(candidates))


def test_reference_teachers_set_the_ceiling_and_the_cascade_table(models, tmp_path, capsys):
    from evaluation.ranking_fidelity import ranking_grid
    from st_dse.data.pairs import read_pair_file

    student_path, teacher, reseeded = (str(models / name) for name in ("student", "teacher", "teacher-seed1"))
    args = ["--dev-file", str(models / "dev.csv"), "--teacher", teacher, "--cpu", "--queries", "6"]
    args += ["--students", student_path, "--reference-teachers", teacher, reseeded]
    results = ranking.main([*args, "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "ranking.json").read_text())["cascade"] == results["cascade"]

    queries, candidates = ranking_grid(read_pair_file(models / "dev.csv"), 6, seed=0)
    teacher_scores, reseeded_scores = grid_of(teacher, queries, candidates), grid_of(reseeded, queries, candidates)
    # The teacher as its own reference is perfect; the ceiling is the mean over the references.
    assert results["reference_teachers"][teacher]["ndcg_at_k"] == pytest.approx(1.0)
    reseeded_fidelity = ranking_fidelity(reseeded_scores, teacher_scores)
    assert results["reference_teachers"][reseeded]["overlap_per_query"] == reseeded_fidelity["overlap_per_query"]
    ceiling = results["ceiling"]["ndcg_at_k"]
    assert ceiling == pytest.approx((1 + reseeded_fidelity["ndcg_at_k"]) / 2, abs=1e-6)
    student = results["students"][student_path]
    assert student["share_of_ceiling"]["ndcg_at_k"] == pytest.approx(student["ndcg_at_k"] / ceiling)
    difference = student["ndcg_minus_reference"]
    assert difference["mean"] == pytest.approx(student["ndcg_at_k"] - ceiling)
    assert difference["interval"][0] <= difference["mean"] <= difference["interval"][1]

    # Cascade rows from the grids: shortlists 10, 20 and the whole pool of 24 (every default above is capped).
    student_scores = student_grid(st_dse.load_student(student_path, device="cpu"), queries, candidates)
    rows = results["cascade"][student_path]
    assert [row["shortlist"] for row in rows] == [10, 20, 24]
    expected = cascade_fidelity(student_scores, teacher_scores, [10, 20, 24])
    assert [row["teacher_top_k_in_shortlist"] for row in rows] == [r["teacher_top_k_in_shortlist"] for r in expected]
    assert rows[-1]["ndcg_at_k"] == pytest.approx(1.0) and rows[-1]["teacher_calls_saved"] == 1.0
    reference_expected = cascade_fidelity(reseeded_scores, teacher_scores, [10, 20, 24])
    reference_rows = results["reference_cascade"][reseeded]
    assert [r["teacher_top_k_in_shortlist"] for r in reference_rows] == [
        r["teacher_top_k_in_shortlist"] for r in reference_expected
    ]
    table = capsys.readouterr().out
    assert "share of ceiling" in table and "reseeded teacher's shortlist" in table
    assert f"| {student_path} | 24 | 1.0x | 1.000 [1.000, 1.000] | 1.000 [1.000, 1.000] | 1.000 |" in table


def test_a_three_label_teacher_needs_the_label_that_ranks(models, tmp_path):
    args = ["--dev-file", str(models / "dev.csv"), "--teacher", str(models / "teacher3"), "--cpu", "--queries", "2"]
    args += ["--students", str(models / "student"), "--cache-dir", str(tmp_path / "cache")]
    with pytest.raises(SystemExit, match="pass --label NAME"):
        ranking.main([*args, "--output-dir", str(tmp_path / "out")])


def test_arguments_are_checked_at_parsing(capsys):
    with pytest.raises(SystemExit):
        ranking.parse_args(["--task", "nope", "--teacher", "t", "--students", "s"])
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ranking.parse_args(["--task", "mrpc", "--teacher", "t", "--students", "s", "--shortlists", "0"])
    assert "--shortlists" in capsys.readouterr().err
    args = ranking.parse_args(["--task", "mrpc", "--teacher", "t", "--students", "s"])
    assert (args.queries, args.k, args.shortlists, args.reference_teachers) == (200, 10, [10, 20, 50, 100, 200], [])
