"""A student saved over another one and killed (SIGKILL) at any point leaves one whole student: the old or the new.

A child process loads student B and saves it over a folder holding student A with ``DSEStudent.save``, killing
itself with SIGKILL at one point of the save: inside the write (before the encoder, between the encoder's modules,
between the encoder and the head, between the head's config and its weights, before the head's checksums), before
anything is synced, and before or after each file-system step :func:`st_dse.integrity.atomic_save_dir` takes beside
the folder (creating the new folder, each rename, deleting the old folder). To load MiniLM once, the child forks one
grandchild per kill point. Each folder must then load with ``load_student`` as exactly A (killed before the new folder
was renamed into place) or exactly B (after), with no hidden folder left beside it.
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
    pytest.mark.slow,  # MiniLM saved 15 times and loaded 15 times: about 40-80 s on two busy cores
    pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGKILL"), reason="needs fork and SIGKILL"),
    pytest.mark.usefixtures("one_torch_thread"),
]

SENTENCES1 = ["A man is playing a guitar.", "The cat sleeps on the mat.", "Stocks fell sharply on Monday."]
SENTENCES2 = ["Someone plays an instrument.", "A dog runs in the park.", "Markets dropped at the start of the week."]

# (when, what, which call, what the folder must hold afterwards). "before"/"after" kill around the n-th call of an os
# function on a path beside the folder (or, for unlink, inside a folder being deleted); "method" and "function" kill
# when that method or st_dse.integrity function is first called, before it does anything.
KILL_POINTS = [
    ("before", "mkdir", 1, "A"),  # nothing made yet
    ("after", "mkdir", 1, "A"),  # the new folder made, nothing written into it
    ("method", "Transformer.save", 1, "A"),
    ("method", "Pooling.save", 1, "A"),  # the Transformer is written, the Pooling not
    ("method", "PairHead.save", 1, "A"),  # the encoder is written, the head not
    ("method", "PairHead.save_torch_weights", 1, "A"),  # the head's config is written, its weights not
    ("method", "write_manifest", 1, "A"),  # the head's weights are written, its checksums not
    ("function", "_fsync", 1, "A"),  # everything written, nothing synced
    ("before", "rename", 1, "A"),  # everything synced, the old folder not moved yet
    ("after", "rename", 1, "A"),  # the old folder moved aside, the new one not in place: the loader puts A back
    ("after", "rename", 2, "B"),  # the new folder in place, the old one beside it
    ("after", "rename", 3, "B"),  # the old folder renamed for deletion
    ("after", "unlink", 1, "B"),  # the old folder partly deleted
]

# The child: load B once, then per kill point fork a process that arms the kill and saves B over that point's folder.
SAVING_CHILD = r"""
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from sentence_transformers.base.modules.transformer import Transformer
from sentence_transformers.sentence_transformer.modules.pooling import Pooling
import st_dse.integrity as integrity
import st_dse.modules.pair_head as pair_head_module
import st_dse.student as student_module
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
    "_fsync": (integrity, "_fsync"),
}

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def arm(when, name, count, parent):
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
            if when in ("method", "function"):
                setattr(*METHODS[what], die)
            else:
                arm(when, what, count, os.path.dirname(target))
            model.save(target)
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
    for index, (when, what, count, _) in enumerate(KILL_POINTS):
        target = tmp_path / f"point-{index}" / "student"
        shutil.copytree(tmp_path / "A", target, copy_function=os.link)
        plan.append([str(target), when, what, count])
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
    for index, (when, what, count, expected) in enumerate(KILL_POINTS):
        target, point = tmp_path / f"point-{index}" / "student", f"{when} {what} {count}"
        outputs = _outputs(st_dse.load_student(str(target), device="cpu"))
        holds = [name for name, reference in references.items() if _matches(outputs, reference)]
        assert holds == [expected], f"killed {point}: the folder holds {holds or 'neither A nor B'}"
        assert sorted(os.listdir(target.parent)) == ["student"], f"leftovers after {point}"
