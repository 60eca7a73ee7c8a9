"""evaluation.ranking on tiny saved models: the report is ranking_fidelity of the two models' grids."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

import st_dse
from evaluation import ranking
from evaluation.ranking_fidelity import ranking_fidelity, student_grid
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
    from st_dse.data.pair_files import read_pair_file

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


def test_a_three_label_teacher_needs_the_label_that_ranks(models, tmp_path):
    args = ["--dev-file", str(models / "dev.csv"), "--teacher", str(models / "teacher3"), "--cpu", "--queries", "2"]
    args += ["--students", str(models / "student"), "--cache-dir", str(tmp_path / "cache")]
    with pytest.raises(SystemExit, match="pass --label NAME"):
        ranking.main([*args, "--output-dir", str(tmp_path / "out")])


def test_an_unknown_task_fails_at_argument_parsing(capsys):
    with pytest.raises(SystemExit):
        ranking.parse_args(["--task", "nope", "--teacher", "t", "--students", "s"])
    assert "nope" in capsys.readouterr().err
