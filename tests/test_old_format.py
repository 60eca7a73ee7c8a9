"""Student folders saved by earlier st_dse versions (the PairHead listed in modules.json) load and convert."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import st_dse

SENTENCES = ["A man plays a guitar.", "Someone plays the guitar.", "A dog runs.", "Stock markets fell today."]


@pytest.fixture
def old_folder(tmp_path, minilm_path):
    """A student saved in the earlier format: modules.json lists st_dse.head.PairHead in 2_PairHead/."""
    torch.manual_seed(3)
    student = st_dse.build_student(minilm_path, hidden_dim=16)
    folder = tmp_path / "old"
    student.save(str(folder))
    (folder / "pair_head" / "checksums.json").unlink()  # the earlier format had no checksums
    shutil.move(folder / "pair_head", folder / "2_PairHead")
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_PairHead", "type": "st_dse.head.PairHead"})
    (folder / "modules.json").write_text(json.dumps(modules))
    return student, folder


def test_an_old_folder_loads_with_load_student_and_scores_the_same(old_folder):
    student, folder = old_folder
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(folder))  # sentence-transformers refuses the foreign module type, as before
    reloaded = st_dse.load_student(str(folder))  # no trust_remote_code: st_dse maps the old type to its own class
    np.testing.assert_allclose(
        st_dse.score_pairs(reloaded, SENTENCES[:2], SENTENCES[2:]),
        st_dse.score_pairs(student, SENTENCES[:2], SENTENCES[2:]),
        atol=1e-6,
    )


def test_one_call_converts_an_old_folder(old_folder, tmp_path):
    student, folder = old_folder
    st_dse.load_student(str(folder)).save(str(tmp_path / "new"))
    modules = json.loads((tmp_path / "new" / "modules.json").read_text())
    assert all(entry["type"].startswith("sentence_transformers.") for entry in modules)
    encoder = SentenceTransformer(str(tmp_path / "new"))  # now loads with no flags
    np.testing.assert_allclose(encoder.encode(SENTENCES), student.encode(SENTENCES), atol=1e-6)
    converted = st_dse.load_student(str(tmp_path / "new"))
    np.testing.assert_allclose(
        st_dse.score_pairs(converted, SENTENCES[:2], SENTENCES[2:]),
        st_dse.score_pairs(student, SENTENCES[:2], SENTENCES[2:]),
        atol=1e-6,
    )
