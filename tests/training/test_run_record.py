"""run.json: --resume continues only the run recorded there, --overwrite deletes only what an st_dse run wrote, and an
--output-dir over the working directory or the run's inputs is refused before any work."""

from __future__ import annotations

import json
import logging
import re
import shutil

import pytest

from st_dse.training.config import DistillConfig, RunConfig
from st_dse.training.run_record import RUN_FILE, changed_settings, check_runs, run_record, start_runs
from tests.conftest import load_recipe
from tests.test_reliability import build_tiny_encoder
from tests.training.test_own_data_recipe import _teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path) -> str:
    return str(build_tiny_encoder(tmp_path_factory.mktemp("tiny"), minilm_path))


def _record(train: str = "a" * 64, output_dir: str = "out", resume: bool = False, **settings) -> dict:
    configs = [DistillConfig(**settings), RunConfig(output_dir=output_dir, resume=resume)]
    return run_record("student", configs, {"train pairs": train})


def test_changes_are_named_and_runtime_settings_are_not_compared():
    old = _record()
    new = _record("b" * 64, lr=1e-3, epochs=2)
    assert changed_settings(old, new) == [
        "epochs 4 -> 2",
        "lr 5e-05 -> 0.001",
        "train pairs aaaaaaaaaaaa... -> bbbbbbbbbbbb...",
    ]
    same = _record(output_dir="elsewhere", resume=True, label_batch_size=512, cache_dir="/tmp/cache")
    assert changed_settings(old, same) == []


def test_only_an_st_dse_run_folder_is_cleared(tmp_path):
    folder, record = tmp_path / "out-checkpoints", _record()
    with pytest.raises(ValueError, match="holds no st_dse run to continue"):
        check_runs([(folder, record)], overwrite=False, resume=True)  # never ran: nothing to resume
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for overwrite, resume in ((True, False), (False, True)):
        with pytest.raises((FileExistsError, ValueError), match="notes.txt|no st_dse run"):
            check_runs([(folder, record)], overwrite, resume)
    (folder / RUN_FILE).write_text(json.dumps(record))
    (folder / "checkpoint-3").mkdir()
    (folder / "eval").mkdir()  # the evaluator's results
    with pytest.raises(FileExistsError, match=r"no st_dse run wrote \(notes.txt\)"):
        check_runs([(folder, record)], overwrite=True, resume=False)  # a user's file beside a run: never deleted
    (folder / "notes.txt").unlink()
    with pytest.raises(FileExistsError, match="--resume to continue it, --overwrite"):
        check_runs([(folder, record)], overwrite=False, resume=False)
    check_runs([(folder, record)], overwrite=False, resume=True)  # the same run: resumed
    new = _record(seed=7)
    check_runs([(folder, new)], overwrite=True, resume=False)
    start_runs([(folder, new)], resume=False)
    assert sorted(path.name for path in folder.iterdir()) == [RUN_FILE]
    assert json.loads((folder / RUN_FILE).read_text())["settings"]["seed"] == 7


@pytest.mark.parametrize(
    "output_dir, problem",
    [
        (".", "the working directory"),
        ("..", "the working directory or a folder above it"),
        ("data", "holds an input of the run"),
        ("data/train.csv", "holds an input of the run"),
        ("data/train.csv/out", "under the file"),
    ],
)
def test_an_output_dir_over_the_working_directory_or_the_inputs_is_refused(tmp_path, monkeypatch, output_dir, problem):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "train.csv").write_text("sentence1,sentence2,label\na,b,1\n")
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for recipe in ("distill", "finetune_teacher"):
        with pytest.raises(SystemExit, match=problem):
            load_recipe(recipe).main(["--train-file", "data/train.csv", "--output-dir", output_dir, "--overwrite"])
    assert sorted(path.name for path in work.rglob("*")) == ["data", "notes.txt", "train.csv"]


def _pairs_file(path, offset: int = 0):
    path.write_text("sentence1,sentence2,label\n" + "".join(f"a {i + offset},b {i},{i % 2}\n" for i in range(6)))
    return str(path)


def test_a_folder_that_never_held_a_run_is_neither_resumed_nor_cleared(tmp_path):
    train, checkpoints = _pairs_file(tmp_path / "train.csv"), tmp_path / "out-checkpoints"
    (checkpoints / "checkpoint-2").mkdir(parents=True)  # checkpoints, but no record of an st_dse run
    (checkpoints / "notes.txt").write_text("mine")
    for flag, refusal in (("--resume", "holds no st_dse run to continue"), ("--overwrite", "no st_dse run wrote")):
        with pytest.raises(SystemExit, match=refusal):
            load_recipe("distill").main(["--train-file", train, "--output-dir", str(tmp_path / "out"), flag])
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint-2", "notes.txt"]


def _distill(tmp_path, tiny, train, *extra):
    args = ["--train-file", train, "--dev-file", train, "--student", tiny, "--epochs", "1", "--batch-size", "4"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "student"), *extra]
    return load_recipe("distill").main(args)


def test_resume_continues_only_the_recorded_run(tmp_path, tiny):
    teacher, train = _teacher(tiny, tmp_path / "teacher", 1), _pairs_file(tmp_path / "train.csv")
    _distill(tmp_path, tiny, train, "--teacher", teacher, "--augment", "0")
    checkpoints = tmp_path / "student-checkpoints"
    recorded = (checkpoints / RUN_FILE).read_text()
    before = sorted(path.name for path in checkpoints.iterdir())
    other = _pairs_file(tmp_path / "other.csv", offset=100)
    for changed, named in (
        ([other], r"train_file '.*train.csv' -> '.*other.csv'.*train pairs"),
        ([train, "--lr", "1e-3"], "lr 5e-05 -> 0.001"),
        ([train, "--epochs", "2"], "epochs 1 -> 2"),
    ):
        with pytest.raises(SystemExit, match=named):
            _distill(tmp_path, tiny, *changed, "--teacher", teacher, "--augment", "0", "--resume")
    assert (checkpoints / RUN_FILE).read_text() == recorded  # refused before any work
    assert sorted(path.name for path in checkpoints.iterdir()) == before
    # The same run, with another label batch size and cache: resumed from its last checkpoint.
    extra = ["--teacher", teacher, "--augment", "0", "--label-batch-size", "2", "--resume"]
    assert _distill(tmp_path, tiny, train, *extra)["settings"]["label_batch_size"] == 2


def test_a_teacher_left_from_other_data_is_not_reused(tmp_path, tiny, caplog):
    train = _pairs_file(tmp_path / "train.csv")
    extra = ["--teacher-base", tiny, "--teacher-epochs", "1"]
    _distill(tmp_path, tiny, train, *extra)
    teacher = tmp_path / "student-teacher"
    weights = (teacher / "model.safetensors").read_bytes()
    for folder in ("student", "student-checkpoints"):  # the student's outputs gone, the teacher left
        shutil.rmtree(tmp_path / folder)
    _pairs_file(tmp_path / "train.csv", offset=100)
    with pytest.raises(
        SystemExit, match=rf"teacher of another run \(train pairs .*\): pass --teacher {re.escape(str(teacher))}"
    ):
        _distill(tmp_path, tiny, train, *extra)
    assert (teacher / "model.safetensors").read_bytes() == weights
    assert not (tmp_path / "student-checkpoints").exists()  # refused before the run was recorded
    _pairs_file(tmp_path / "train.csv")
    with caplog.at_level(logging.INFO, logger="distill"):
        _distill(tmp_path, tiny, train, *extra)  # the data it was fine-tuned on: reused as it is
    assert "Reusing the teacher" in caplog.text and (teacher / "model.safetensors").read_bytes() == weights


def test_finetune_teacher_resumes_only_its_run(tmp_path, tiny):
    train, output = _pairs_file(tmp_path / "train.csv"), str(tmp_path / "teacher")
    args = ["--train-file", train, "--base-model", tiny, "--epochs", "1", "--max-length", "32", "--output-dir", output]
    with pytest.raises(SystemExit, match="holds no st_dse run to continue"):
        load_recipe("finetune_teacher").main([*args, "--resume"])
    assert not (tmp_path / "teacher-checkpoints").exists()
    load_recipe("finetune_teacher").main(args)
    assert json.loads((tmp_path / "teacher-checkpoints" / RUN_FILE).read_text())["st_dse_run"] == "teacher"
    with pytest.raises(SystemExit, match="lr 5e-05 -> 0.001"):
        load_recipe("finetune_teacher").main([*args, "--lr", "1e-3", "--resume"])
