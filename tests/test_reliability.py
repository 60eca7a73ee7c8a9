"""Nothing lost, nothing silent: interrupted runs resume to the same result, and bad input is refused clearly.

Other files test most refusals next to the code that makes them; this file adds the kill-and-rerun tests, the
sharded-labelling recipe, and the refusals not tested elsewhere.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder
from transformers import BertConfig, BertModel

import st_dse
from evaluation.senteval_protocol import load_sst2, load_trec
from st_dse.data import get_task
from st_dse.losses import pack_dse_labels
from st_dse.teacher import label_with_teacher
from st_dse.training import distill_student, evaluate_student
from st_dse.training import train as training
from st_dse.training.config import DistillConfig
from tests.conftest import load_recipe

REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build_tiny_encoder(folder: Path, minilm_path: str) -> Path:
    """A randomly initialised 1-layer, 16-dimensional BERT with MiniLM's tokenizer: a model that trains in seconds."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory, minilm_path) -> str:
    return str(build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"), minilm_path))


# ---------------------------------------------------------------- teacher labelling killed with SIGKILL

NUM_KILL_PAIRS = 240
KILL_BATCH_SIZE = 8

# The labelling process the test kills. It scores one batch per teacher call (the default chunk), sleeps before each
# call so the test can kill it mid-run, and notes each call it starts in a progress file (appended lines survive a
# SIGKILL). With a reference argument it also labels without the cache: what an uninterrupted run gives.
LABELLING_CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from datasets import Dataset
from sentence_transformers import CrossEncoder
from st_dse.teacher import label_with_teacher

model_path, cache_dir, progress_path, output_path, delay, num_pairs, batch_size, reference = sys.argv[1:]
torch.manual_seed(0)  # the teacher's classification layer is freshly initialised: the same one in every process
teacher = CrossEncoder(model_path, num_labels=1, device="cpu")
pairs = Dataset.from_dict({
    "sentence1": [f"Pair {i}: a person {'walks' if i % 2 else 'runs'} {i % 7} miles." for i in range(int(num_pairs))],
    "sentence2": [f"Someone moves {'slowly ' * (i % 4)}for {i} minutes." for i in range(int(num_pairs))],
})
scored = []
predict = teacher.predict

def slow_counting_predict(batch, *args, **kwargs):
    with open(progress_path, "a") as progress:
        progress.write(f"{len(batch)}\n")
    time.sleep(float(delay))
    scored.append(len(batch))
    return predict(batch, *args, **kwargs)

teacher.predict = slow_counting_predict
labelled = label_with_teacher(teacher, pairs, cache_dir=cache_dir, batch_size=int(batch_size))
result = {"logits": labelled["teacher_logits"][:], "pairs_scored": sum(scored)}
if reference == "yes":
    teacher.predict = predict
    result["reference"] = label_with_teacher(teacher, pairs, use_cache=False, batch_size=int(batch_size))[
        "teacher_logits"
    ][:]
with open(output_path, "w") as handle:
    json.dump(result, handle)
"""


def _run_labelling_child(model_path, work: Path, delay: float, reference: bool) -> subprocess.Popen:
    arguments = [model_path, work / "cache", work / "progress.txt", work / "result.json", delay]
    arguments += [NUM_KILL_PAIRS, KILL_BATCH_SIZE, "yes" if reference else "no"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-c", LABELLING_CHILD, *map(str, arguments)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _cached_pairs(cache: Path) -> int:
    count = 0
    for path in cache.rglob("*.npz"):
        with np.load(path) as stored:
            count += len(stored["keys"])
    return count


@pytest.mark.slow  # two fresh Python processes that load the teacher: about 20-30 s on two busy cores
def test_sigkill_during_labelling_loses_at_most_the_batch_in_flight(tmp_path, minilm_path):
    # 1. Start labelling and kill it with SIGKILL once a few batches are cached, while it still runs.
    killed = _run_labelling_child(minilm_path, tmp_path, delay=0.1, reference=False)
    deadline = time.monotonic() + 300
    while len(list((tmp_path / "cache").rglob("logits-*.npz"))) < 5:
        assert killed.poll() is None, f"the labelling process ended before it was killed: {killed.stderr.read()}"
        assert time.monotonic() < deadline, "no teacher batch was cached within 5 minutes"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "result.json").exists()

    # Every batch whose teacher call finished is cached; only the one in flight (if any) was lost.
    started_calls = len((tmp_path / "progress.txt").read_text().split())
    cached = _cached_pairs(tmp_path / "cache")
    assert cached % KILL_BATCH_SIZE == 0
    assert (started_calls - 1) * KILL_BATCH_SIZE <= cached < NUM_KILL_PAIRS
    assert not list((tmp_path / "cache").rglob("merged-*.npz"))  # the killed run was not complete

    # 2. Rerun the same command: it scores only the pairs not cached, and equals an uninterrupted run exactly.
    rerun = _run_labelling_child(minilm_path, tmp_path, delay=0.0, reference=True)
    _, errors = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, errors
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["pairs_scored"] == NUM_KILL_PAIRS - cached
    assert result["logits"] == result["reference"]
    # The complete rerun folded the per-batch files into one.
    assert [path.name.split("-")[0] for path in (tmp_path / "cache").rglob("*.npz")] == ["merged"]


# ---------------------------------------------------------------- distillation resumed from its last checkpoint


def _pairs(count: int, offset: int = 0) -> Dataset:
    rng = np.random.default_rng(offset)
    words = ["cat", "dog", "runs", "sleeps", "a", "the", "red", "blue", "park", "house", "eats", "fast"]
    first = [" ".join(rng.choice(words, size=5)) + f" {i}" for i in range(offset, offset + count)]
    second = [" ".join(rng.choice(words, size=4)) + f" {i % 5}" for i in range(offset, offset + count)]
    labels = rng.integers(0, 2, size=count).tolist()
    teacher_logits = rng.normal(size=(count, 1)).round(3).tolist()
    return Dataset.from_dict(
        {"sentence1": first, "sentence2": second, "label": labels, "teacher_logits": teacher_logits}
    )


class _Callback:
    """A trainer callback: stops training after epoch 1 (once that epoch is checkpointed) and records the steps run.

    Stopping there leaves on disk what a kill right after the epoch-1 checkpoint leaves.
    """

    def __init__(self, stop_after_first_epoch: bool) -> None:
        self.stop_after_first_epoch = stop_after_first_epoch
        self.steps: list[int] = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stop_after_first_epoch:
            control.should_training_stop = True


def _train_with_callback(monkeypatch, callback: _Callback, *args, **kwargs):
    class TrainerWithCallback(training.SentenceTransformerTrainer):
        def __init__(self, *trainer_args, **trainer_kwargs):
            super().__init__(*trainer_args, **trainer_kwargs)
            self.add_callback(callback)

    with monkeypatch.context() as patch:
        patch.setattr(training, "SentenceTransformerTrainer", TrainerWithCallback)
        return distill_student(*args, **kwargs)


RESUME_SETTINGS = {"epochs": 2, "batch_size": 16, "hidden_dim": 8, "seed": 7, "lr": 1e-3}


def test_resumed_distillation_ends_like_an_uninterrupted_run(tmp_path, tiny_encoder, monkeypatch):
    task = get_task("mrpc")
    train, dev = _pairs(64), _pairs(24, offset=1000)
    # distill_student does not seed the PairHead's initialisation (the trainer seeds only after the model exists),
    # so both runs seed it here; a resumed run takes its weights from the checkpoint.
    torch.manual_seed(0)
    config = DistillConfig(student=tiny_encoder, **RESUME_SETTINGS)
    uninterrupted = distill_student(task, train, dev, tmp_path / "once", config)

    torch.manual_seed(0)
    first_epoch = _Callback(stop_after_first_epoch=True)
    _train_with_callback(monkeypatch, first_epoch, task, train, dev, tmp_path / "twice", config)
    assert first_epoch.steps == [1, 2, 3, 4]  # epoch 1 of 2: 64 pairs / 16 = 4 steps an epoch
    checkpoints = sorted(path.name for path in (tmp_path / "twice").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4"]

    torch.manual_seed(123)  # whatever the resumed run's initialisation, it continues from checkpoint-4
    second_epoch = _Callback(stop_after_first_epoch=False)
    resumed = _train_with_callback(
        monkeypatch,
        second_epoch,
        task,
        train,
        dev,
        tmp_path / "twice",
        config,
        resume=True,
    )
    assert second_epoch.steps == [5, 6, 7, 8]

    # Tolerance: 1e-5 on the head's logits (float32 arithmetic; in practice the two runs agree to the last bit).
    once = st_dse.score_pairs(uninterrupted, dev["sentence1"], dev["sentence2"])
    again = st_dse.score_pairs(resumed, dev["sentence1"], dev["sentence2"])
    np.testing.assert_allclose(again, once, rtol=0, atol=1e-5)
    assert evaluate_student(resumed, task, dev) == evaluate_student(uninterrupted, task, dev)


# ---------------------------------------------------------------- sharded labelling from the command line


def test_label_teacher_recipe_shards_then_merges(tmp_path, tiny_encoder, capsys):
    torch.manual_seed(0)
    CrossEncoder(tiny_encoder, num_labels=1, device="cpu").save(str(tmp_path / "teacher"))
    rows = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    rows += [f"{i % 2}\t{i}\t{i + 100}\tSentence number {i}.\tAnother sentence {i * 3}." for i in range(40)]
    (tmp_path / "glue" / "MRPC").mkdir(parents=True)
    (tmp_path / "glue" / "MRPC" / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = load_recipe("label_teacher")
    common = ["--task", "mrpc", "--teacher", str(tmp_path / "teacher"), "--data-dir", str(tmp_path)]
    common += ["--cache-dir", str(tmp_path / "cache"), "--batch-size", "4"]

    first = recipe.main([*common, "--shard-index", "0", "--num-shards", "2"])
    assert 0 < first["labelled"] == first["rows_in_shard"] < 40
    with pytest.raises(SystemExit, match=r"Unfinished shards \(pairs missing\): 1 \("):
        recipe.main([*common, "--merge", "--num-shards", "2"])
    second = recipe.main([*common, "--shard-index", "1", "--num-shards", "2"])
    assert first["labelled"] + second["labelled"] == 40
    merged = recipe.main([*common, "--merge", "--num-shards", "2"])
    assert len(merged["cache_files"]) == 1
    # Everything is cached now: a full run labels nothing, and distill.py's own labelling call would find it all.
    assert recipe.main(common)["labelled"] == 0
    capsys.readouterr()


# ---------------------------------------------------------------- bad input not covered in the other test files


@pytest.fixture(scope="module")
def tiny_student(tiny_encoder):
    torch.manual_seed(0)
    return st_dse.build_student(tiny_encoder, hidden_dim=8)


@pytest.mark.parametrize(
    ("sentences1", "message"),
    [
        (["fine", 7], r"Row 1: the first sentence is int \(7\), expected a string"),
        (["fine", math.nan], r"Row 1: the first sentence is float \(nan\), expected a string"),
        ([b"bytes", "fine"], r"Row 0: the first sentence is bytes"),
    ],
)
def test_non_string_sentences_are_refused(tiny_student, sentences1, message):
    with pytest.raises(ValueError, match=message):
        st_dse.score_pairs(tiny_student, sentences1, ["ok", "ok"])


def test_non_string_column_is_refused_by_teacher_labelling(tmp_path, tiny_encoder):
    teacher = CrossEncoder(tiny_encoder, num_labels=1, device="cpu")
    numbers = Dataset.from_dict({"sentence1": ["fine", "also fine"], "sentence2": [3, 4]})
    with pytest.raises(ValueError, match="Row 0: the second sentence is int"):
        label_with_teacher(teacher, numbers, cache_dir=tmp_path)


def test_missing_gold_label_column_is_named():
    unlabelled = Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "teacher_logits": [[0.5]]})
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['label'\]"):
        pack_dse_labels(unlabelled)
    # Teacher-only data has no gold label: say so explicitly, and the gold loss skips those rows.
    assert math.isnan(pack_dse_labels(unlabelled, gold_column=None)["label"][0][0])


@pytest.mark.parametrize(
    ("task", "teacher_logits", "label", "message"),
    [
        ("mnli", [0.5], 0, "Packed labels have 1 teacher logits per pair, but the PairHead has num_labels=3"),
        (
            "mrpc",
            [0.1, 0.2, 0.3],
            1,
            "Packed labels have 3 teacher logits per pair, but the PairHead has num_labels=1",
        ),
        ("mnli", [0.1, 0.2, 0.3], 3, r"Multiclass gold labels must be class ids in \[0, 2\]"),
        ("mrpc", [0.5], 2, "Binary gold labels must be 0 or 1"),
    ],
)
def test_labels_that_do_not_fit_the_task_stop_distillation(
    tmp_path, tiny_encoder, task, teacher_logits, label, message
):
    pairs = Dataset.from_dict(
        {
            "sentence1": ["a b", "c d"],
            "sentence2": ["e f", "g h"],
            "label": [label] * 2,
            "teacher_logits": [teacher_logits] * 2,
        }
    )
    with pytest.raises(ValueError, match=message):
        distill_student(
            get_task(task),
            pairs,
            None,
            tmp_path,
            DistillConfig(student=tiny_encoder, epochs=1, batch_size=2, hidden_dim=8),
        )


def test_unknown_task_in_the_labelling_recipe(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_recipe("label_teacher").main(["--task", "cola", "--teacher", str(tmp_path), "--data-dir", str(tmp_path)])
    error = capsys.readouterr().err
    assert "Unknown task 'cola'. Known tasks: mrpc" in error and "--train-file" in error


def test_senteval_file_in_an_unexpected_encoding_is_named(tmp_path):
    binary = tmp_path / "downstream" / "SST" / "binary"
    binary.mkdir(parents=True)
    (binary / "sentiment-train").write_bytes("Un caf\u00e9 tr\u00e8s bon .\t1\n".encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"sentiment-train is not valid utf-8 text .*SentEval reads this file as utf-8"
    ):
        load_sst2(tmp_path)


def test_real_trec_train_file_is_latin1_and_loads(data_dir):
    trec = data_dir / "senteval" / "data" / "downstream" / "TREC" / "train_5500.label"
    if not trec.is_file():
        pytest.skip(f"{trec} not found")
    with pytest.raises(UnicodeDecodeError):
        trec.read_text(encoding="utf-8")  # the file really is not UTF-8: this test exercises the fallback
    splits = load_trec(data_dir / "senteval" / "data")
    assert (len(splits["train"].sentences), len(splits["test"].sentences)) == (5452, 500)
    assert any(not sentence.isascii() for sentence in splits["train"].sentences)


@pytest.mark.parametrize(
    ("line", "problem"),
    [("HUM:ind\n", "IndexError"), ("NOPE:x What is this ?\n", "unknown TREC label")],
)
def test_malformed_senteval_line_names_the_data(tmp_path, line, problem):
    trec = tmp_path / "downstream" / "TREC"
    trec.mkdir(parents=True)
    (trec / "train_5500.label").write_text("DESC:def What is a cat ?\n" + line, encoding="latin-1")
    (trec / "TREC_10.label").write_text("DESC:def What is a dog ?\n", encoding="latin-1")
    with pytest.raises(ValueError, match=problem) as error:
        load_trec(tmp_path)
    assert str(tmp_path) in str(error.value)
