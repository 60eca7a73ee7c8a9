"""evaluation.glue on tiny saved systems: every system is found, scored by the task metric, and compared."""

from __future__ import annotations

import json

import pytest
import torch
from sentence_transformers import CrossEncoder

import st_dse
from evaluation import glue
from st_dse.data import get_task, load_task
from st_dse.training import evaluate_student, save_student


@pytest.fixture
def runs(tmp_path, minilm_path):
    torch.manual_seed(0)
    CrossEncoder(minilm_path, num_labels=1).save(str(tmp_path / "mrpc-teacher"))
    for folder, teacher in (("mrpc", str(tmp_path / "mrpc-teacher")), ("mrpc-gold", None)):
        student = st_dse.build_student(minilm_path, hidden_dim=16)
        save_student(student, tmp_path / folder, get_task("mrpc"), teacher, {})
    return tmp_path


def test_glue_evaluation_reports_every_system(runs, data_dir, minilm_path, capsys):
    results = glue.main(
        ["--tasks", "mrpc", "--runs-dir", str(runs), "--data-dir", str(data_dir), "--base-model", minilm_path]
        + ["--max-samples", "24"]
    )
    systems = results[0]["systems"]
    assert set(systems) == {"teacher", "DSE student", "gold-only student", "base model (cosine)"}
    dev = load_task(get_task("mrpc"), "validation", data_dir, max_samples=24)
    # The table's student numbers are exactly what score_pairs gives on the same pairs.
    assert systems["DSE student"]["validation"] == evaluate_student(
        st_dse.load_student(str(runs / "mrpc")), get_task("mrpc"), dev
    )
    teacher_acc = systems["teacher"]["validation"]["accuracy"]
    student_acc = systems["DSE student"]["validation"]["accuracy"]
    expected = 100 * (teacher_acc - student_acc) / teacher_acc
    assert results[0]["relative_degradation_pct"]["DSE student"]["validation"] == pytest.approx(expected)
    saved = json.loads((runs / "glue_results.json").read_text())
    assert saved["tasks"][0]["task"] == "mrpc"
    out = capsys.readouterr().out
    assert "| mrpc | validation | DSE student |" in out
    # The one-row-per-task summary: main metric of each system, degradation, and the gap to gold-only.
    gap = systems["DSE student"]["validation"]["accuracy"] - systems["gold-only student"]["validation"]["accuracy"]
    summary_row = next(line for line in out.splitlines() if line.startswith("| mrpc | validation | accuracy |"))
    assert summary_row.split("|")[-2].strip() == f"{gap:+.2f}"
