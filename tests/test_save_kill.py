"""A model folder saved over another one and killed (SIGKILL) at any point holds one whole save: the old or the new.

Three saves are tested: a student (``DSEStudent.save``), an ONNX export (``export_onnx``) and a fine-tuned teacher
(``finetune_teacher``, its folder with ``dev_metrics.json``). A child process loads what it saves once, then forks one
grandchild per kill point, which saves B over a folder holding A and kills itself with SIGKILL at that point: inside
the write (between the files a save writes, before its checksums), before anything is synced, or before or after a
file-system step :func:`st_dse.integrity.atomic_save_dir` takes beside the folder (creating the new folder, each
rename, deleting the old folder). Each folder must then load as exactly A (killed before the new folder was renamed
into place) or exactly B (after), with no hidden folder left beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder

import st_dse
import st_dse.training.train as train_module
from st_dse.data.benchmarks import get_task
from st_dse.integrity import recover_interrupted_save
from st_dse.student import DSEStudent
from st_dse.training.config import TeacherConfig
from tests.test_reliability import build_tiny_encoder

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGKILL"), reason="needs fork and SIGKILL"),
    pytest.mark.usefixtures("one_torch_thread"),
]

SENTENCES1 = ["A man is playing a guitar.", "The cat sleeps on the mat.", "Stocks fell sharply on Monday."]
SENTENCES2 = ["Someone plays an instrument.", "A dog runs in the park.", "Markets dropped at the start of the week."]
PAIRS = {"sentence1": SENTENCES1, "sentence2": SENTENCES2, "label": [1, 0, 1]}

# Per kind of save: (when, what, which call, what the folder must hold afterwards). "before"/"after" kill around the
# n-th call of an os function on a path beside the folder (or, for unlink, inside a folder being deleted); "call"
# kills at the n-th call of that method or function, before it does anything.
RENAMES = [
    ("before", "rename", 1, "A"),  # everything synced, the old folder not moved yet
    ("after", "rename", 1, "A"),  # the old folder moved aside, the new one not in place: the loader puts A back
    ("after", "rename", 2, "B"),  # the new folder in place, the old one beside it
]
KILL_POINTS = {
    "student": [
        ("before", "mkdir", 1, "A"),  # nothing made yet
        ("after", "mkdir", 1, "A"),  # the new folder made, nothing written into it
        ("call", "Transformer.save", 1, "A"),
        ("call", "Pooling.save", 1, "A"),  # the Transformer is written, the Pooling not
        ("call", "PairHead.save", 1, "A"),  # the encoder is written, the head not
        ("call", "PairHead.save_torch_weights", 1, "A"),  # the head's config is written, its weights not
        ("call", "PairHead write_manifest", 1, "A"),  # the head's weights are written, its checksums not
        ("call", "_fsync", 1, "A"),  # everything written, nothing synced
        *RENAMES,
        ("after", "rename", 3, "B"),  # the old folder renamed for deletion
        ("after", "unlink", 1, "B"),  # the old folder partly deleted
    ],
    "onnx": [
        ("call", "_export", 1, "A"),  # nothing written
        ("call", "_export", 2, "A"),  # encoder.onnx written, pair_head.onnx not
        ("call", "write_manifest", 1, "A"),  # both graphs, the tokenizer and onnx_config.json written, no checksums
        *RENAMES,
    ],
    "teacher": [
        ("call", "Transformer.save", 1, "A"),  # nothing written
        ("call", "dev_metrics", 1, "A"),  # the new weights written, the new dev_metrics.json not
        ("call", "write_manifest", 1, "A"),  # weights and metrics written, no checksums
        *RENAMES,
    ],
}

# The child: load what it saves once, then per kill point fork a process that arms the kill and saves B over that
# point's folder.
SAVING_CHILD = r"""
import json, os, signal, sys
from types import SimpleNamespace
import torch
torch.set_num_threads(1)
from datasets import Dataset
from sentence_transformers.base.modules.transformer import Transformer
from sentence_transformers.sentence_transformer.modules.pooling import Pooling
import st_dse.inference.export as export_module
import st_dse.integrity as integrity
import st_dse.modules.pair_head as pair_head_module
import st_dse.student as student_module
import st_dse.training.train as train_module
from st_dse.data.benchmarks import get_task
from st_dse.modules.pair_head import PairHead
from st_dse.training.config import TeacherConfig

kind, source, plan_path = sys.argv[1:]
plan = json.loads(open(plan_path).read())
if kind == "teacher":  # no training: the weights are the seeded fresh classifier, the metrics name the save
    untrained = SimpleNamespace(args=SimpleNamespace(disable_tqdm=True), train=lambda **_: None)
    train_module.CrossEncoderTrainer = lambda **kwargs: untrained
    train_module.evaluate_cross_encoder = lambda cross_encoder, task, dataset: {"save": "B"}
    pairs = Dataset.from_dict(json.loads(os.environ["PAIRS"]))
    config = TeacherConfig(base_model=source, seed=1, max_length=32)
    save = lambda target: train_module.finetune_teacher(get_task("mrpc"), pairs, pairs, target, config)
else:
    model = student_module.load_student(source, device="cpu")
    save = model.save if kind == "student" else lambda target: export_module.export_onnx(model, target)
CALLS = {
    "Transformer.save": (Transformer, "save"),
    "Pooling.save": (Pooling, "save"),
    "PairHead.save": (PairHead, "save"),
    "PairHead.save_torch_weights": (PairHead, "save_torch_weights"),
    "PairHead write_manifest": (pair_head_module, "write_manifest"),
    "write_manifest": (integrity, "write_manifest"),
    "_fsync": (integrity, "_fsync"),
    "_export": (export_module, "_export"),
    "dev_metrics": (train_module, "json"),  # train.py's json writes dev_metrics.json only
}

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def kill_at_call(what, count):
    owner, name = CALLS[what]
    real, calls = getattr(owner, name), []
    if what == "dev_metrics":
        setattr(owner, name, SimpleNamespace(dumps=die))
        return

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == count:
            die()
        return real(*args, **kwargs)

    setattr(owner, name, counted)

def kill_around(when, name, count, parent):
    real, calls = getattr(os, name), []

    def traced(path, *args, **kwargs):
        beside = "dir_fd" in kwargs or os.path.dirname(os.path.abspath(os.fspath(path))) == parent
        if beside and when == "before" and len(calls) + 1 == count:
            die()
        result = real(path, *args, **kwargs)
        if beside:
            calls.append(path)
            if when == "after" and len(calls) == count:
                die()
        return result

    setattr(os, name, traced)

results = []
for target, when, what, count in plan:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if when == "call":
                kill_at_call(what, count)
            else:
                kill_around(when, what, count, os.path.dirname(target))
            save(target)
        except BaseException as error:
            print(f"{when} {what} {count}: {type(error).__name__}: {error}", file=sys.stderr)
            code = 3
        finally:
            os._exit(code)  # reached only when the kill point was never reached
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    results.append({"point": f"{when} {what} {count}", "killed": killed, "status": status})
print(json.dumps(results))
"""


def _student(encoder_path: str, seed: int) -> DSEStudent:
    """A student with an 8-wide head; its last layer's output bias nudged, so that A and B embed differently."""
    torch.manual_seed(seed)
    student = st_dse.build_student(encoder_path, hidden_dim=8, device="cpu")
    bias = student[0].auto_model.encoder.layer[-1].output.dense.bias
    with torch.no_grad():
        bias.add_(0.05 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(seed)))
    return student


def _has_onnx() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def _outputs(kind: str, folder) -> tuple:
    """What the folder computes, as its kind's loader gives it."""
    if kind == "student":
        model = st_dse.load_student(str(folder), device="cpu")
        return model.encode(SENTENCES1 + SENTENCES2), st_dse.score_pairs(model, SENTENCES1, SENTENCES2)
    if kind == "onnx":
        from st_dse.inference.export import OnnxStudent

        model = OnnxStudent(folder, providers=["CPUExecutionProvider"])
        return model.encode(SENTENCES1 + SENTENCES2), model.score_pairs(SENTENCES1, SENTENCES2)
    recover_interrupted_save(folder)  # what recipes/distill.py does before it reuses a teacher folder
    teacher = CrossEncoder(str(folder), device="cpu")
    metrics = json.loads((folder / "dev_metrics.json").read_text())
    return teacher.predict(list(zip(SENTENCES1, SENTENCES2)), activation_fn=torch.nn.Identity()), metrics["save"]


def _matches(outputs, reference) -> bool:
    return all(
        np.allclose(got, want, rtol=0, atol=1e-6) if isinstance(got, np.ndarray) else got == want
        for got, want in zip(outputs, reference)
    )


def _save_a_and_b(kind: str, tmp_path, minilm_path, monkeypatch) -> str:
    """Save A and B into ``tmp_path``; return what the child loads to save B."""
    if kind == "teacher":  # no training: the weights are the seeded fresh classifier, the metrics name the save
        encoder = str(build_tiny_encoder(tmp_path / "encoder", minilm_path))
        untrained = SimpleNamespace(args=SimpleNamespace(disable_tqdm=True), train=lambda **_: None)
        monkeypatch.setattr(train_module, "CrossEncoderTrainer", lambda **kwargs: untrained)
        pairs = Dataset.from_dict(PAIRS)
        for seed, name in enumerate("AB"):
            monkeypatch.setattr(train_module, "evaluate_cross_encoder", lambda *args, name=name: {"save": name})
            config = TeacherConfig(base_model=encoder, seed=seed, max_length=32)
            train_module.finetune_teacher(get_task("mrpc"), pairs, pairs, tmp_path / name, config)
        return encoder
    encoder = minilm_path if kind == "student" else str(build_tiny_encoder(tmp_path / "encoder", minilm_path))
    for seed, name in enumerate("AB"):
        student = _student(encoder, seed)
        if kind == "student":
            student.save(str(tmp_path / name))
        else:
            from st_dse.inference.export import export_onnx

            student.save(str(tmp_path / f"student-{name}"))
            export_onnx(student, tmp_path / name)
    return str(tmp_path / "student-B") if kind == "onnx" else str(tmp_path / "B")


@pytest.mark.parametrize(
    "kind",
    [
        # MiniLM saved 15 times and loaded 15 times: about 40-80 s on two busy cores
        pytest.param("student", marks=pytest.mark.slow),
        pytest.param("onnx", marks=pytest.mark.skipif(not _has_onnx(), reason="the onnx extra is not installed")),
        "teacher",
    ],
)
def test_sigkill_while_saving_over_a_folder_leaves_the_old_or_the_new_save(kind, tmp_path, minilm_path, monkeypatch):
    # 1. A and B, saved; their outputs are the references.
    source = _save_a_and_b(kind, tmp_path, minilm_path, monkeypatch)
    references = {name: _outputs(kind, tmp_path / name) for name in "AB"}
    assert not _matches(references["A"], references["B"])

    # 2. One folder per kill point holding A (hard links: the save replaces files, never writes into them).
    plan = []
    for index, (when, what, count, _) in enumerate(KILL_POINTS[kind]):
        target = tmp_path / f"point-{index}" / kind
        shutil.copytree(tmp_path / "A", target, copy_function=os.link)
        plan.append([str(target), when, what, count])
    (tmp_path / "plan.json").write_text(json.dumps(plan))

    # 3. The child saves B over each folder and is killed at that folder's point.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PAIRS": json.dumps(PAIRS)}
    child = subprocess.run(
        [sys.executable, "-c", SAVING_CHILD, kind, source, str(tmp_path / "plan.json")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])
    not_killed = [result["point"] for result in results if not result["killed"]]
    assert not not_killed, f"these kill points were never reached: {not_killed}\n{child.stderr[-3000:]}"

    # 4. Every folder loads as exactly A or exactly B, the one expected at its point, with nothing left beside it.
    for index, (when, what, count, expected) in enumerate(KILL_POINTS[kind]):
        target, point = tmp_path / f"point-{index}" / kind, f"{when} {what} {count}"
        outputs = _outputs(kind, target)
        holds = [name for name, reference in references.items() if _matches(outputs, reference)]
        assert holds == [expected], f"killed {point}: the folder holds {holds or 'neither A nor B'}"
        assert sorted(os.listdir(target.parent)) == [kind], f"leftovers after {point}"
