"""evaluation/glue.py on tiny saved systems: every system is found, scored by the task metric, and compared."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from sentence_transformers import CrossEncoder

import st_dse
from st_dse.tasks import load_task
from st_dse.training import evaluate_student, save_student
from tests.conftest import REPO_ROOT

# Loaded from its path: putting evaluation/ on sys.path would let evaluation/mteb.py shadow the mteb package.
_spec = importlib.util.spec_from_file_location("glue_evaluation", REPO_ROOT / "evaluation" / "glue.py")
glue = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(glue)


@pytest.fixture
def runs(tmp_path, minilm_path):
    torch.manual_seed(0)
    CrossEncoder(minilm_path, num_labels=1).save(str(tmp_path / "mrpc" / "teacher"))
    for folder, teacher in (("mrpc", str(tmp_path / "mrpc" / "teacher")), ("mrpc-gold", None)):
        save_student(st_dse.build_student(minilm_path, hidden_dim=16), tmp_path / folder, "mrpc", teacher, {})
    return tmp_path


def test_glue_evaluation_reports_every_system(runs, data_dir, minilm_path, capsys):
    results = glue.main(
        ["--tasks", "mrpc", "--runs-dir", str(runs), "--data-dir", str(data_dir), "--base-model", minilm_path]
        + ["--max-samples", "24"]
    )
    systems = results[0]["systems"]
    assert set(systems) == {"teacher", "DSE student", "gold-only student", "base model (cosine)"}
    dev = load_task("mrpc", "validation", data_dir, max_samples=24)
    # The table's student numbers are exactly what score_pairs gives on the same pairs.
    assert systems["DSE student"]["validation"] == evaluate_student(
        st_dse.load_student(str(runs / "mrpc")), "mrpc", dev
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
