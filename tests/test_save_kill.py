"""A student saved over another one and killed (SIGKILL) at any point leaves one whole student: the old or the new.

A child process loads student B and saves it over a folder holding student A with ``DSEStudent.save``, killing
itself with SIGKILL at one point of the save: at each step of :func:`st_dse.integrity.atomic_save_dir` (through its
``_step_hook``), and inside the write itself (before the encoder, between the encoder's modules, between the encoder
and the head, between the head's config and its weights, before the head's checksums). To load MiniLM once, the child
forks one grandchild per kill point. Each folder must then load with ``load_student`` as exactly A (killed before the
new folder was renamed into place) or exactly B (after), with no hidden folder left beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import st_dse
from st_dse.student import DSEStudent

pytestmark = [
    pytest.mark.slow,  # MiniLM saved 16 times and loaded 16 times: about 40-80 s on two busy cores
    pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGKILL"), reason="needs fork and SIGKILL"),
    pytest.mark.usefixtures("one_torch_thread"),
]

SENTENCES1 = ["A man is playing a guitar.", "The cat sleeps on the mat.", "Stocks fell sharply on Monday."]
SENTENCES2 = ["Someone plays an instrument.", "A dog runs in the park.", "Markets dropped at the start of the week."]

# (kind, point, what the folder must hold afterwards). Steps are atomic_save_dir's step names, each reported just
# after it happened; methods are killed when called, before they write anything.
KILL_POINTS = [
    ("step", "recovered", "A"),
    ("step", "created temporary folder", "A"),
    ("method", "Transformer.save", "A"),  # nothing written yet
    ("method", "Pooling.save", "A"),  # the Transformer is written, the Pooling not
    ("method", "PairHead.save", "A"),  # the encoder is written, the head not
    ("method", "PairHead.save_torch_weights", "A"),  # the head's config is written, its weights not
    ("method", "write_manifest", "A"),  # the head's weights are written, its checksums not
    ("step", "wrote content", "A"),
    ("step", "synced content", "A"),
    ("step", "moved old folder aside", "A"),  # no folder at the target: the loader puts A back
    ("step", "moved new folder into place", "B"),
    ("step", "synced parent folder", "B"),
    ("step", "renamed old folder for deletion", "B"),
    ("step", "deleted old folder", "B"),
]

# The child: load B once, then per kill point fork a process that arms the kill and saves B over that point's folder.
SAVING_CHILD = r"""
import functools, json, os, signal, sys
import torch
torch.set_num_threads(1)
from sentence_transformers.base.modules.transformer import Transformer
from sentence_transformers.sentence_transformer.modules.pooling import Pooling
import st_dse.modules.pair_head as pair_head_module
import st_dse.student as student_module
from st_dse.integrity import atomic_save_dir
from st_dse.modules.pair_head import PairHead

source, plan_path = sys.argv[1:]
model = student_module.load_student(source, device="cpu")
plan = json.loads(open(plan_path).read())
METHODS = {
    "Transformer.save": (Transformer, "save"),
    "Pooling.save": (Pooling, "save"),
    "PairHead.save": (PairHead, "save"),
    "PairHead.save_torch_weights": (PairHead, "save_torch_weights"),
    "write_manifest": (pair_head_module, "write_manifest"),
}

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def kill_at_step(point, name):
    if name == point:
        die()

results = []
for target, kind, point in plan:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if kind == "step":
                hook = functools.partial(kill_at_step, point)
                student_module.atomic_save_dir = functools.partial(atomic_save_dir, _step_hook=hook)
            else:
                setattr(*METHODS[point], die)
            model.save(target)
        except BaseException as error:
            print(f"{point}: {type(error).__name__}: {error}", file=sys.stderr)
            code = 3
        finally:
            os._exit(code)  # reached only when the kill point was never reached
    _, status = os.waitpid(pid, 0)  # reaped: recovery must see the saving process as gone
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    results.append({"point": point, "killed": killed, "status": status})
print(json.dumps(results))
"""


def _student(minilm_path: str, seed: int) -> DSEStudent:
    """A MiniLM student with an 8-wide head; its last layer's output bias nudged, so that A and B embed differently."""
    torch.manual_seed(seed)
    student = st_dse.build_student(minilm_path, hidden_dim=8, device="cpu")
    bias = student[0].auto_model.encoder.layer[-1].output.dense.bias
    with torch.no_grad():
        bias.add_(0.05 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(seed)))
    return student


def _outputs(model) -> tuple[np.ndarray, np.ndarray]:
    embeddings = model.encode(SENTENCES1 + SENTENCES2, convert_to_numpy=True)
    return embeddings, st_dse.score_pairs(model, SENTENCES1, SENTENCES2)


def _matches(outputs, reference) -> bool:
    return all(np.allclose(got, want, rtol=0, atol=1e-6) for got, want in zip(outputs, reference))


def test_sigkill_while_saving_over_a_student_leaves_the_old_or_the_new_one(tmp_path, minilm_path):
    # 1. Students A and B, saved; their outputs are the references.
    students = {"A": _student(minilm_path, seed=0), "B": _student(minilm_path, seed=1)}
    references = {name: _outputs(student) for name, student in students.items()}
    assert not _matches(references["A"], references["B"])
    for name, student in students.items():
        student.save(str(tmp_path / name))
    del students

    # 2. One folder per kill point holding A (hard links: the save replaces files, never writes into them).
    plan = []
    for index, (kind, point, _) in enumerate(KILL_POINTS):
        target = tmp_path / f"point-{index}" / "student"
        shutil.copytree(tmp_path / "A", target, copy_function=os.link)
        plan.append([str(target), kind, point])
    (tmp_path / "plan.json").write_text(json.dumps(plan))

    # 3. The child saves B over each folder and is killed at that folder's point.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.run(
        [sys.executable, "-c", SAVING_CHILD, str(tmp_path / "B"), str(tmp_path / "plan.json")],
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
    for index, (kind, point, expected) in enumerate(KILL_POINTS):
        target = tmp_path / f"point-{index}" / "student"
        outputs = _outputs(st_dse.load_student(str(target), device="cpu"))
        holds = [name for name, reference in references.items() if _matches(outputs, reference)]
        assert holds == [expected], f"killed at {kind} {point!r}: the folder holds {holds or 'neither A nor B'}"
        assert sorted(os.listdir(target.parent)) == ["student"], f"leftovers after {point!r}"
