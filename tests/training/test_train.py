"""End to end on real data: fine-tune a small teacher, label pairs with it, distil a student that tracks it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy.stats import spearmanr

import st_dse
from st_dse.data import get_task, load_task
from st_dse.training import distill_student, evaluate_student, finetune_teacher, save_student, task_metrics
from st_dse.training.config import DistillConfig, TeacherConfig

NUM_PAIRS = 256


@pytest.fixture(scope="module")
def stsb_pairs(data_dir):
    # STS-B pairs made binary (similar when the gold score is at least 3): a task a small teacher learns in seconds.
    pairs = load_task(get_task("stsb"), "train", data_dir, max_samples=NUM_PAIRS)
    return pairs.map(lambda row: {"label": int(row["label"] >= 3.0)})


BINARY_STS = dataclasses.replace(
    get_task("mrpc"), name="stsb-binary", description="STS-B pairs, similar if score >= 3"
)


@pytest.mark.slow
def test_student_tracks_teacher_logits(tmp_path_factory, stsb_pairs, minilm_path, recwarn):
    work = tmp_path_factory.mktemp("e2e")
    task = BINARY_STS
    # A small real teacher: the packaged MiniLM fine-tuned as a cross-encoder on these pairs.
    teacher_config = TeacherConfig(base_model=minilm_path, epochs=2, batch_size=16, seed=0)
    teacher = finetune_teacher(task, stsb_pairs, None, work / "teacher", teacher_config)
    labelled = st_dse.label_with_teacher(teacher, stsb_pairs, cache_dir=work / "cache")
    teacher_logits = np.array(labelled["teacher_logits"])[:, 0]
    assert teacher_logits.std() > 0.05  # the teacher learned something to distil

    untrained = st_dse.build_student(minilm_path)
    before = spearmanr(st_dse.score_pairs(untrained, stsb_pairs["sentence1"], stsb_pairs["sentence2"]), teacher_logits)
    config = DistillConfig(student=minilm_path, epochs=3, batch_size=16, seed=0)
    student = distill_student(task, labelled, None, work / "student", config)
    after = spearmanr(st_dse.score_pairs(student, stsb_pairs["sentence1"], stsb_pairs["sentence2"]), teacher_logits)
    assert after.statistic >= 0.8, (
        f"student/teacher Spearman {after.statistic:.3f} (before training {before.statistic:.3f})"
    )
    assert after.statistic > before.statistic + 0.4
    # Without CUDA the data loaders do not pin memory, so nothing warns about it.
    assert not [warning for warning in recwarn if "pin_memory" in str(warning.message)]

    # Saved with its head and card; the reloaded model scores exactly as the trained one.
    results = {"metrics": {"student": evaluate_student(student, task, stsb_pairs)}}
    save_student(student, work / "saved", task, "a test teacher", results)
    reloaded = st_dse.load_student(str(work / "saved"))
    np.testing.assert_allclose(
        st_dse.score_pairs(reloaded, stsb_pairs["sentence1"], stsb_pairs["sentence2"]),
        st_dse.score_pairs(student, stsb_pairs["sentence1"], stsb_pairs["sentence2"]),
        atol=1e-5,
    )
    card = (work / "saved" / "README.md").read_text()
    assert "Distilled Sentence Embedding" in card and "a test teacher" in card and "barkan2020scalable" in card
    assert json.loads((work / "saved" / "dse.json").read_text())["task"] == "stsb-binary"


def test_task_metrics_from_logits():
    metrics = task_metrics(get_task("mrpc"), np.array([2.0, -1.0, 0.5, -0.2]), [1, 0, 0, 0])
    assert metrics["accuracy"] == 75.0
    assert metrics["f1"] == pytest.approx(100 * 2 / 3)
    regression = task_metrics(get_task("stsb"), np.array([0.1, 0.4, 0.3]), [1.0, 4.0, 3.0])
    assert regression["spearman"] == pytest.approx(100.0)


def test_resume_skips_a_checkpoint_left_half_written(tmp_path):
    from st_dse.training import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "missing") is None
    for step, complete in ((4, True), (8, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")
