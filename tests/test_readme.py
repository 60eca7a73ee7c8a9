"""The README's Quickstart must run as written, with a local teacher in place of the Hub id."""

from __future__ import annotations

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
