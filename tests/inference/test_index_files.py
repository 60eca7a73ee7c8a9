"""A saved CandidateIndex: all-or-nothing saving; damaged, swapped, truncated or misshapen files refused by name."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from st_dse import build_student
from st_dse.inference.index import CandidateIndex
from st_dse.integrity import MANIFEST_NAME, CorruptFileError, read_manifest, write_manifest

pytest.importorskip("faiss", reason="faiss-cpu is not installed: pip install faiss-cpu")
DIM = 384


@pytest.fixture(scope="module")
def student(minilm_path):
    torch.manual_seed(0)
    return build_student(minilm_path, hidden_dim=32, device="cpu")


def _candidates(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((40, DIM)) * 0.3).astype(np.float32)


@pytest.fixture()
def saved(student, tmp_path):
    """An int8 concat index with a head-surrogate prefilter: every kind of file an index can have but one."""
    folder = tmp_path / "index"
    CandidateIndex(student, _candidates(0), storage_dtype="int8", faiss_index="Flat", rerank_k=8).save(folder)
    return folder


def _flip_byte(path, offset_from_end: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path, drop: int = 64) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - drop)


def test_manifest_lists_exactly_the_saved_files(saved):
    expected = {
        "candidate_index.json",
        "embeddings.npy",
        "embeddings.scale.npy",
        "embeddings.center.npy",
        "faiss.index",
    }
    assert set(read_manifest(saved)) == expected
    assert {path.name for path in saved.iterdir()} == expected | {MANIFEST_NAME}


@pytest.mark.parametrize("name", ["embeddings.npy", "embeddings.scale.npy", "faiss.index", "candidate_index.json"])
def test_flipped_byte_is_named(student, saved, name):
    if name == "candidate_index.json":  # a change that still parses: another rerank_k
        config = json.loads((saved / name).read_text())
        (saved / name).write_text(json.dumps({**config, "rerank_k": 9}, indent=2))
    else:
        _flip_byte(saved / name)
    with pytest.raises(CorruptFileError, match="SHA-256") as raised:
        CandidateIndex.load(saved, student)
    assert raised.value.path == saved / name and str(saved / name) in str(raised.value)
    # Sizes alone cannot see a byte changed in place.
    if name != "candidate_index.json":
        assert len(CandidateIndex.load(saved, student, verify="size")) == 40


def test_embeddings_of_another_corpus_are_refused(student, saved, tmp_path):
    other = tmp_path / "other"
    CandidateIndex(student, _candidates(1), storage_dtype="int8", faiss_index="Flat", rerank_k=8).save(other)
    assert (other / "embeddings.npy").stat().st_size == (saved / "embeddings.npy").stat().st_size
    shutil.copyfile(other / "embeddings.npy", saved / "embeddings.npy")
    with pytest.raises(CorruptFileError, match=r"embeddings\.npy has SHA-256 .* damaged or comes from another save"):
        CandidateIndex.load(saved, student)


@pytest.mark.parametrize("name", ["embeddings.npy", "embeddings.center.npy", "embeddings.scale.npy"])
def test_truncated_file_is_named_in_every_mode(student, saved, name):
    _truncate(saved / name)
    for verify in ("full", "size"):
        with pytest.raises(CorruptFileError, match="bytes, but checksums.json recorded") as raised:
            CandidateIndex.load(saved, student, verify=verify)
        assert raised.value.path == saved / name
    # Unverified, the reader still names the file instead of passing on numpy's error.
    with pytest.raises(CorruptFileError, match=r"is not a readable \.npy array") as raised:
        CandidateIndex.load(saved, student, verify="none")
    assert raised.value.path == saved / name


def test_unverified_damage_is_named(student, saved):
    _truncate(saved / "faiss.index", drop=200)
    with pytest.raises(CorruptFileError, match=r"faiss\.index is not a readable faiss index"):
        CandidateIndex.load(saved, student, verify="none")


def test_folder_without_manifest_loads_with_a_warning(student, saved, caplog):
    (saved / MANIFEST_NAME).unlink()
    with caplog.at_level(logging.WARNING, logger="st_dse.inference.index"):
        index = CandidateIndex.load(saved, student)
    assert len(index) == 40 and "has no checksums.json" in caplog.text
    # A wrong-shape array (here one candidate fewer) is still named, with the shape it should have.
    np.save(saved / "embeddings.npy", np.zeros((39, DIM), dtype=np.int8))
    with pytest.raises(CorruptFileError, match=r"embeddings\.npy holds int8 values of shape \(39, 384\), but int8 of"):
        CandidateIndex.load(saved, student)
    np.save(saved / "embeddings.npy", np.zeros((40, DIM), dtype=np.int8))
    np.save(saved / "embeddings.scale.npy", np.ones(DIM + 1, dtype=np.float32))
    with pytest.raises(CorruptFileError, match=r"embeddings\.scale\.npy holds float32 values of shape \(385,\)"):
        CandidateIndex.load(saved, student)


def test_missing_file_is_named(student, saved):
    (saved / "embeddings.center.npy").unlink()
    with pytest.raises(CorruptFileError, match=r"embeddings\.center\.npy is missing"):
        CandidateIndex.load(saved, student, verify="size")


def test_save_replaces_the_whole_folder(student, saved, tmp_path):
    (saved / "NOTES.md").write_text("a user's file")
    with pytest.raises(FileExistsError, match=r"not part of an st_dse index save \(NOTES.md\)"):
        CandidateIndex(student, _candidates(2), storage_dtype="float16").save(saved)
    (saved / "NOTES.md").rename(saved / "stale.txt")
    write_manifest(saved, kind="index")  # now a file of the earlier index, which the next save does not write
    CandidateIndex(student, _candidates(2), storage_dtype="float16").save(saved)
    assert sorted(path.name for path in saved.iterdir()) == sorted(
        ["candidate_index.json", "embeddings.npy", MANIFEST_NAME]
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index"]  # no hidden folders left beside it
    assert CandidateIndex.load(saved, student).storage_dtype == "float16"


@pytest.mark.skipif(sys.platform == "win32", reason="process ids as used here are POSIX-only")
def test_load_recovers_a_save_interrupted_between_its_renames(student, saved):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    saved.rename(saved.parent / f".index.old-{int(child.stdout)}-ab12")  # what a save killed mid-swap leaves
    assert len(CandidateIndex.load(saved, student)) == 40


def test_index_loads_through_a_symbolic_link(student, saved, tmp_path):
    (tmp_path / "link").symlink_to(saved)
    assert len(CandidateIndex.load(tmp_path / "link", student)) == 40
