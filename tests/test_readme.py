"""The README's Quickstart must run as written, with a local teacher in place of the Hub id."""

from __future__ import annotations

import os
import re

import torch
from sentence_transformers import CrossEncoder

from tests.conftest import REPO_ROOT

HUB_TEACHER = '"cross-encoder/quora-distilroberta-base"'


def _quickstart_code() -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_quickstart_runs(tmp_path, minilm_path, monkeypatch, capsys):
    code = _quickstart_code()
    assert HUB_TEACHER in code
    torch.manual_seed(0)
    CrossEncoder(minilm_path, num_labels=1).save(str(tmp_path / "teacher"))
    code = code.replace(HUB_TEACHER, repr(str(tmp_path / "teacher")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ST_DSE_CACHE", str(tmp_path / "cache"))
    exec(compile(code, "README.md#quickstart", "exec"), {})
    printed = capsys.readouterr().out
    assert "corpus_id" in printed
    assert (tmp_path / "runs" / "quickstart-student" / "pair_head" / "model.safetensors").is_file()


def _bash_block(heading: str) -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(heading, 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)


def test_your_own_data_runs(tmp_path, minilm_path):
    """The README's own-data commands, as written, with a local teacher in place of the Hub id."""
    import json
    import subprocess
    import sys

    block = _bash_block("## Your own teacher and data")
    assert HUB_TEACHER.strip('"') in block
    torch.manual_seed(0)
    CrossEncoder(minilm_path, num_labels=1).save(str(tmp_path / "teacher"))
    block = block.replace(HUB_TEACHER.strip('"'), str(tmp_path / "teacher"))
    block = block.replace("python recipes/", f"{sys.executable} {REPO_ROOT}/recipes/")
    env = {**os.environ, "ST_DSE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        ["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert result.stdout.count("Student vs. teacher on 4 pairs") == 2  # the agreement report, once per run
    labelled = json.loads((tmp_path / "runs" / "my-student" / "dse.json").read_text())
    unlabelled = json.loads((tmp_path / "runs" / "my-student-unlabelled" / "dse.json").read_text())
    assert labelled["distillation_weight"] == 0.5 and unlabelled["distillation_weight"] == 1.0
    assert set(labelled["metrics"]) == {"student", "teacher"} and labelled["agreement"]["num_gold"] == 4
    assert "spearman" in unlabelled["agreement"]
