"""recipes/distill.py on your own pairs and teacher: a 3-label teacher with label names, a regression teacher, mixed
labels, and the one-line errors where a user is stuck."""

from __future__ import annotations

import json

import pytest
import torch
from sentence_transformers import CrossEncoder

from st_dse.integrity import write_manifest
from st_dse.training.config import DistillConfig
from tests.conftest import load_recipe
from tests.test_reliability import build_tiny_encoder

NLI_NAMES = ["contradiction", "entailment", "neutral"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path) -> str:
    return str(build_tiny_encoder(tmp_path_factory.mktemp("tiny"), minilm_path))


def _teacher(tiny: str, folder, num_labels: int, names: list[str] | None = None) -> str:
    torch.manual_seed(0)
    teacher = CrossEncoder(tiny, num_labels=num_labels, max_length=32)
    if names:
        teacher.config.id2label = dict(enumerate(names))
        teacher.config.label2id = {name: index for index, name in enumerate(names)}
    teacher.save(str(folder))
    return str(folder)


def _run(tmp_path, tiny, teacher, train_file, dev_file, *extra):
    recipe = load_recipe("distill")
    args = ["--teacher", teacher, "--train-file", str(train_file), "--dev-file", str(dev_file), "--student", tiny]
    args += ["--epochs", "1", "--batch-size", "4", "--augment", "0", "--cache-dir", str(tmp_path / "cache")]
    return recipe.main([*args, "--output-dir", str(tmp_path / "student"), *extra])


def test_three_label_teacher_with_names_and_mixed_labels(tmp_path, tiny):
    teacher = _teacher(tiny, tmp_path / "teacher", 3, NLI_NAMES)
    rows = [
        {"premise": f"A person number {i} walks.", "hypothesis": f"Someone moves {i}.", "label": label}
        for i, label in enumerate(["entailment", "", "Contradiction", "neutral", None, "entailment"])
    ]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    results = _run(tmp_path, tiny, teacher, train, train)
    head_config = json.loads((tmp_path / "student" / "pair_head" / "config.json").read_text())
    assert head_config["num_labels"] == 3 and head_config["label_names"] == NLI_NAMES
    assert head_config["problem_type"] == "multiclass"
    agreement = results["agreement"]
    assert agreement["num_gold"] == 4 and 0 <= agreement["label_agreement"] <= 1
    assert set(results["metrics"]) == {"student", "teacher"} and "accuracy" in results["metrics"]["student"]
    assert results["distillation_weight"] == 0.5  # some rows have gold labels: gold and teacher share the loss


def test_regression_teacher_on_graded_scores(tmp_path, tiny):
    teacher = _teacher(tiny, tmp_path / "teacher", 1)
    train = tmp_path / "train.csv"
    lines = ["text1,text2,score"] + [f"Sentence {i} here,Another sentence {i * 7},{i % 6 * 0.9:.1f}" for i in range(8)]
    train.write_text("\n".join(lines) + "\n")
    results = _run(tmp_path, tiny, teacher, train, train)
    head_config = json.loads((tmp_path / "student" / "pair_head" / "config.json").read_text())
    assert head_config["problem_type"] == "regression" and head_config["label_names"] is None
    assert set(results["metrics"]["student"]) >= {"spearman", "pearson"}


def test_unlabelled_pairs_without_a_teacher_say_what_to_pass(tmp_path, tiny):
    train = tmp_path / "pairs.tsv"
    train.write_text("query\tdocument\nhow do I learn python\tbest way to learn python\n")
    with pytest.raises(SystemExit):
        load_recipe("distill").main(["--train-file", str(train), "--output-dir", str(tmp_path / "out")])


def test_an_unreadable_file_is_named(tmp_path, tiny, capsys):
    train = tmp_path / "pairs.xlsx"
    train.write_text("not a table")
    teacher = _teacher(tiny, tmp_path / "teacher", 1)
    with pytest.raises((SystemExit, ValueError), match="pairs.xlsx"):
        load_recipe("distill").main(
            ["--teacher", teacher, "--train-file", str(train), "--output-dir", str(tmp_path / "out")]
        )


def test_a_run_never_destroys_an_earlier_model_unasked(tmp_path, tiny):
    teacher = _teacher(tiny, tmp_path / "teacher", 1)
    train = tmp_path / "train.csv"
    train.write_text("sentence1,sentence2,label\n" + "".join(f"a {i},b {i},{i % 2}\n" for i in range(6)))
    first = _run(tmp_path, tiny, teacher, train, train)
    saved = tmp_path / "student"
    before = (saved / "pair_head" / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit, match="--overwrite"):
        _run(tmp_path, tiny, teacher, train, train, "--seed", "7")
    assert (saved / "pair_head" / "model.safetensors").read_bytes() == before  # refused before any work
    (saved / "NOTES.md").write_text("mine")  # a user's file: never replaced, whatever the flags
    with pytest.raises(SystemExit, match=r"not part of an st_dse student save \(NOTES.md\).*even with --overwrite"):
        _run(tmp_path, tiny, teacher, train, train, "--seed", "7", "--overwrite")
    assert (saved / "NOTES.md").read_text() == "mine"
    (saved / "NOTES.md").rename(saved / "dev_metrics.json")
    write_manifest(saved, kind="student")  # now a file of the earlier model, which the next one does not write
    second = _run(tmp_path, tiny, teacher, train, train, "--seed", "7", "--overwrite")
    assert not (saved / "dev_metrics.json").exists()  # nothing of the earlier model stays beside the new one
    assert (saved / "pair_head" / "model.safetensors").read_bytes() != before
    assert first["settings"]["seed"] == 42 and second["settings"]["seed"] == 7


@pytest.mark.parametrize("keep", [False, True])
def test_a_finished_run_removes_its_checkpoints_unless_kept(tmp_path, tiny, capsys, keep):
    teacher = _teacher(tiny, tmp_path / "teacher", 1)
    train = tmp_path / "train.csv"
    train.write_text("sentence1,sentence2,label\n" + "".join(f"A {i} b,C {i} d,{i % 2}\n" for i in range(8)))
    _run(tmp_path, tiny, teacher, train, train, *(["--keep-checkpoints"] if keep else []))
    checkpoints = tmp_path / "student-checkpoints"
    assert bool(list(checkpoints.glob("checkpoint-*"))) == keep
    assert (checkpoints / "run.json").is_file()  # what the run was stays, for --overwrite and teacher reuse
    # The trainer's log lines are JSON with numbers, not strings of numbers.
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"')]
    assert logged and all(isinstance(value, (int, float)) for line in logged for value in line.values())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--student", "/no/such/folder"], "No model folder at '/no/such/folder'"),
        (["--pooling-layers", "20"], "--pooling-layers 20: the student's encoder .* has 1 layers"),
        (["--max-seq-length", "100000"], "--max-seq-length 100000: the student's encoder .* has 128 positions"),
        (["--teacher", "STUDENT"], "is not a cross-encoder"),
    ],
)
def test_settings_the_models_cannot_take_stop_before_any_work(tmp_path, tiny, extra, message):
    teacher = _teacher(tiny, tmp_path / "teacher", 1)
    train = tmp_path / "train.csv"
    train.write_text("sentence1,sentence2,label\nA b,C d,1\nE f,G h,0\n")
    extra = [tiny if value == "STUDENT" else value for value in extra]
    with pytest.raises(SystemExit, match=message):
        _run(tmp_path, tiny, teacher, train, train, *extra)
    assert not (tmp_path / "cache").exists()  # nothing was labelled


def test_a_seed_numpy_cannot_take_is_refused_when_parsed():
    with pytest.raises(ValueError, match=r"--seed must be between 0 and 2\*\*32 - 1, got -1"):
        DistillConfig(seed=-1)
