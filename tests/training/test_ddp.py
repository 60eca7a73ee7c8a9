"""Scale-out: distillation under ``torchrun`` with two CPU processes (gloo DDP).

Each test starts ``torchrun --standalone --nproc_per_node 2`` (a free port, no rendezvous server) with one thread
per process, on a handful of pairs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT  # noqa: E402

TIMEOUT_S = 900

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH (it comes with torch)"),
]


def _torchrun(arguments: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "ST_DSE_CACHE": str(tmp_path / "cache"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = ["torchrun", "--standalone", "--nproc_per_node", "2", *arguments]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-6000:]}"
    return result


@pytest.fixture()
def teacher_path(minilm_path, tmp_path) -> str:
    from sentence_transformers import CrossEncoder

    # An untrained classifier on MiniLM: its logits are arbitrary but deterministic, which is all the recipe needs.
    path = tmp_path / "teacher"
    CrossEncoder(minilm_path, num_labels=1, max_length=64, device="cpu").save(str(path))
    return str(path)


COUNTING_WRAPPER = textwrap.dedent(
    """
    import json, os, runpy, sys
    from sentence_transformers import CrossEncoder

    predict = CrossEncoder.predict

    def counting_predict(self, inputs, *args, **kwargs):
        with open(os.path.join(os.environ["PAIR_LOG_DIR"], f"rank-{os.environ['RANK']}.jsonl"), "a") as log:
            for pair in inputs:
                log.write(json.dumps(list(pair)) + "\\n")
        return predict(self, inputs, *args, **kwargs)

    CrossEncoder.predict = counting_predict
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def test_distill_recipe_runs_under_torchrun(data_dir, teacher_path, tmp_path, monkeypatch):
    import st_dse

    output_dir = tmp_path / "student"
    wrapper = tmp_path / "count_teacher_calls.py"
    wrapper.write_text(COUNTING_WRAPPER)
    (tmp_path / "pairs").mkdir()
    monkeypatch.setenv("PAIR_LOG_DIR", str(tmp_path / "pairs"))
    result = _torchrun(
        [
            str(wrapper),
            "recipes/distill.py",
            "--task",
            "mrpc",
            "--data-dir",
            str(data_dir),
            "--teacher",
            teacher_path,
            "--max-train-samples",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--output-dir",
            str(output_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],  # fmt: skip
        tmp_path,
    )
    saved = json.loads((output_dir / "dse.json").read_text())
    assert saved["task"] == "mrpc" and set(saved["metrics"]) == {"teacher", "student"}
    # A trained --teacher turns augmentation on by default, so both ranks also built and labelled the extra pairs.
    assert saved["settings"]["augment"] == 2 and "augmentation" in saved["timings_s"]
    assert result.stdout.count("Saved the student to") == 1  # the summary is printed once

    # Each training pair (32 gold and about 64 new) was scored by the teacher exactly once, by one of the two ranks.
    train = st_dse.data.load_task(st_dse.data.get_task("mrpc"), "train", data_dir, max_samples=32)
    train_pairs = set(zip(train["sentence1"], train["sentence2"]))
    scored = {
        rank: [tuple(json.loads(line)) for line in (tmp_path / "pairs" / f"rank-{rank}.jsonl").open()]
        for rank in (0, 1)
    }
    dev = st_dse.data.load_task(st_dse.data.get_task("mrpc"), "validation", data_dir)
    dev_pairs = set(zip(dev["sentence1"], dev["sentence2"]))
    labelled = {rank: [pair for pair in pairs if pair not in dev_pairs] for rank, pairs in scored.items()}
    all_labelled = labelled[0] + labelled[1]
    assert len(all_labelled) == len(set(all_labelled)) > 32, "a pair was labelled twice"
    assert train_pairs <= set(all_labelled) and labelled[0] and labelled[1]  # both ranks did their share
    student = st_dse.load_student(str(output_dir), device="cpu")
    logits = st_dse.score_pairs(student, ["A man plays a guitar."], ["Someone plays the guitar."])
    assert logits.shape == (1,)


SYNC_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from datasets import Dataset
    from st_dse import get_pair_head
    from st_dse.data import get_task
    from st_dse.training import distill_student
    from st_dse.training.config import DistillConfig

    model_path, output_dir = sys.argv[1], sys.argv[2]
    sentences = [f"Question {i}: how do I learn subject number {i % 5}?" for i in range(32)]
    pairs = Dataset.from_dict({
        "sentence1": sentences,
        "sentence2": sentences[1:] + sentences[:1],
        "label": [i % 2 for i in range(32)],
        "teacher_logits": [[float(i % 7) - 3.0] for i in range(32)],
    })
    config = DistillConfig(student=model_path, hidden_dim=16, epochs=1, batch_size=8, max_seq_length=32)
    student = distill_student(get_task("mrpc"), pairs, None, output_dir, config)
    head = get_pair_head(student)
    state = {name: value.detach().clone() for name, value in student.state_dict().items()}
    checksums = [float(value.double().sum()) for value in state.values()]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, checksums)
    if dist.get_rank() == 0:
        with open(f"{output_dir}/sync.json", "w") as f:
            json.dump({"world_size": dist.get_world_size(), "checksums": gathered,
                       "head_type": head.head_type}, f)
    dist.barrier()
    dist.destroy_process_group()  # a gloo group left to the interpreter's teardown can abort a rank at exit
    """
)


def test_dse_training_keeps_the_ranks_in_sync(minilm_path, tmp_path):
    """Each rank trains on other batches; identical weights afterwards mean the gradients, head's included, were
    all-reduced (the head is applied outside the model's forward, which DDP must be told about)."""
    from sentence_transformers import SentenceTransformer

    script = tmp_path / "sync.py"
    script.write_text(SYNC_SCRIPT)
    _torchrun([str(script), minilm_path, str(tmp_path / "out")], tmp_path)
    result = json.loads((tmp_path / "out" / "sync.json").read_text())
    assert result["world_size"] == 2
    rank0, rank1 = result["checksums"]
    assert rank0 == pytest.approx(rank1, rel=1e-6, abs=1e-6)
    # Training moved the encoder away from the pretrained weights (so the comparison above is not vacuous).
    pretrained = SentenceTransformer(minilm_path, device="cpu").state_dict()
    moved = [abs(float(value.double().sum()) - checksum) for value, checksum in zip(pretrained.values(), rank0)]
    assert max(moved) > 1e-6
