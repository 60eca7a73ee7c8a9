"""Checksummed manifests and all-or-nothing folder replacement (st_dse.integrity), including SIGKILL at every step.

The kill tests run child processes that load st_dse/integrity.py on its own (it needs only the standard library), so
each child starts in tens of milliseconds instead of importing torch through the st_dse package.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from st_dse.integrity import (
    MANIFEST_NAME,
    CorruptFileError,
    atomic_save_dir,
    file_sha256,
    foreign_files,
    read_manifest,
    recover_interrupted_save,
    verify_manifest,
    write_manifest,
)

MODULE_PATH = Path(__file__).resolve().parents[1] / "st_dse" / "integrity.py"
FILES = ["f0.bin", "f1.bin", "f2.bin", "f3.bin", "f4.bin", "sub/f5.bin"]
posix_only = pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX-only")


def _content(tag: str, index: int) -> bytes:
    # Every byte says which save wrote it; A and B have the same sizes, so only the bytes tell them apart.
    return (f"{tag}{index}" * 700).encode()


def _write_version(folder: Path, tag: str) -> None:
    for index, name in enumerate(FILES):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(_content(tag, index))
    write_manifest(folder, FILES)


def _version_of(folder: Path) -> str:
    """The tag of the one whole save at ``folder``; fails the test on any mix, truncation or stray file."""
    assert verify_manifest(folder) is True
    tags = {(folder / name).read_bytes()[:1].decode() for name in FILES}
    assert len(tags) == 1, f"{folder} mixes saves {tags}"
    tag = tags.pop()
    for index, name in enumerate(FILES):
        assert (folder / name).read_bytes() == _content(tag, index)
    found = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    assert found == sorted([*FILES, MANIFEST_NAME])
    return tag


# -- manifests -------------------------------------------------------------------------------------------------------


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    folder = tmp_path / "saved"
    folder.mkdir()
    _write_version(folder, "A")
    return folder


def test_manifest_round_trip(saved: Path) -> None:
    entries = read_manifest(saved)
    assert sorted(entries) == sorted(FILES)
    assert entries["sub/f5.bin"] == {
        "size": len(_content("A", 5)),
        "sha256": hashlib.sha256(_content("A", 5)).hexdigest(),
    }
    assert verify_manifest(saved) is True
    assert verify_manifest(saved, verify="size") is True
    assert verify_manifest(saved, files=["f1.bin", saved / "sub" / "f5.bin"]) is True


def test_file_sha256_streams_files_larger_than_a_chunk(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # more than one chunk
    (tmp_path / "big").write_bytes(data)
    assert file_sha256(tmp_path / "big") == hashlib.sha256(data).hexdigest()


def test_flipped_byte_is_caught_and_named(saved: Path) -> None:
    path = saved / "f2.bin"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError) as raised:
        verify_manifest(saved)
    message = str(raised.value)
    assert str(path) in message and "SHA-256" in message and "damaged or comes from another save" in message
    assert raised.value.path == path and raised.value.found["sha256"] != raised.value.expected["sha256"]
    # Size-only verification cannot see a byte changed in place (documented): it checks sizes only.
    assert verify_manifest(saved, verify="size") is True


def test_truncated_file_is_caught_by_both_modes(saved: Path) -> None:
    path = saved / "f3.bin"
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size - 10)
    for mode in ("full", "size"):
        with pytest.raises(CorruptFileError, match=f"has {size - 10} bytes, but checksums.json recorded {size}"):
            verify_manifest(saved, verify=mode)


def test_file_swapped_in_from_another_save_is_caught(saved: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    _write_version(other, "B")
    (saved / "f4.bin").write_bytes((other / "f4.bin").read_bytes())  # same size, other content
    with pytest.raises(CorruptFileError, match="f4.bin has SHA-256"):
        verify_manifest(saved)


def test_missing_file_is_caught_and_named(saved: Path) -> None:
    (saved / "sub" / "f5.bin").unlink()
    for mode in ("full", "size"):
        with pytest.raises(CorruptFileError, match=r"f5\.bin is missing, but checksums.json lists it"):
            verify_manifest(saved, verify=mode)


def test_size_is_checked_before_any_hashing(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (saved / "sub" / "f5.bin").write_bytes(b"short")
    hashed = []
    monkeypatch.setattr("st_dse.integrity.file_sha256", lambda path: hashed.append(path) or "0" * 64)
    with pytest.raises(CorruptFileError, match="has 5 bytes"):
        verify_manifest(saved)
    assert hashed == []


def test_no_manifest_verifies_nothing(saved: Path) -> None:
    (saved / MANIFEST_NAME).unlink()
    assert read_manifest(saved) is None
    assert verify_manifest(saved) is False  # folders saved before manifests existed keep loading
    (saved / "f0.bin").write_bytes(b"anything")
    assert verify_manifest(saved, verify="none") is False


def test_damaged_manifest_and_unlisted_files(saved: Path) -> None:
    with pytest.raises(CorruptFileError, match="is not listed in"):
        verify_manifest(saved, files=["f0.bin", "faiss.index"])
    with pytest.raises(ValueError, match="verify must be one of"):
        verify_manifest(saved, verify="fast")
    manifest = json.loads((saved / MANIFEST_NAME).read_text())
    manifest["files"]["../outside"] = manifest["files"]["f0.bin"]
    (saved / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CorruptFileError, match="a path outside the folder"):
        verify_manifest(saved)
    (saved / MANIFEST_NAME).write_text('{"files": {"f0.bin": {"size": 1')
    with pytest.raises(CorruptFileError, match="manifest .* is damaged"):
        verify_manifest(saved)


def test_write_manifest_lists_every_file_by_default(saved: Path) -> None:
    write_manifest(saved, name="all.json")
    assert sorted(read_manifest(saved, "all.json")) == sorted([*FILES, MANIFEST_NAME])
    with pytest.raises(FileNotFoundError, match="not a file"):
        write_manifest(saved, ["f0.bin", "nope.bin"])
    with pytest.raises(ValueError, match="not a path inside"):
        write_manifest(saved, ["../f0.bin"])


# -- atomic folder replacement ---------------------------------------------------------------------------------------


def test_atomic_save_replaces_the_whole_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "nested" / "model"
    renames, rename = [], os.rename
    monkeypatch.setattr(
        os, "rename", lambda source, destination: renames.append(destination) or rename(source, destination)
    )
    atomic_save_dir(target, lambda folder: _write_version(folder, "A"), kind="test")
    assert _version_of(target) == "A"
    assert renames == [target]  # there was no old folder to move aside
    atomic_save_dir(
        target, lambda folder: _write_version(folder, "A") or (folder / "stale.txt").write_text("A"), kind="test"
    )
    renames.clear()
    atomic_save_dir(target, lambda folder: _write_version(folder, "B"), kind="test")
    assert _version_of(target) == "B"  # the stray file of the old folder did not survive
    assert renames[0].name.startswith(".model.old-") and renames[1] == target  # old aside, new in, old discarded
    assert sorted(os.listdir(target.parent)) == ["model"]


def test_files_st_dse_did_not_write_are_never_replaced(tmp_path: Path) -> None:
    target = tmp_path / "model"
    atomic_save_dir(target, lambda folder: _write_version(folder, "A"), kind="test")
    (target / "NOTES.md").write_text("mine")
    (target / "eval").mkdir()
    (target / "eval" / "scores.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"not part of an st_dse test save \(NOTES.md, eval/scores.json\)"):
        atomic_save_dir(target, lambda folder: _write_version(folder, "B"), kind="test")
    with pytest.raises(FileExistsError, match="not part of an st_dse index save"):
        atomic_save_dir(target, lambda folder: None, kind="index")  # another kind of save
    (target / "NOTES.md").unlink()
    (target / "eval" / "scores.json").unlink()
    with pytest.raises(FileExistsError, match="not part of an st_dse index save"):
        atomic_save_dir(target, lambda folder: None, kind="index")
    user_folder = tmp_path / "data"
    user_folder.mkdir()
    (user_folder / "train.csv").write_text("a,b")
    with pytest.raises(FileExistsError, match="train.csv"):
        atomic_save_dir(user_folder, lambda folder: None, kind="test")
    assert (user_folder / "train.csv").read_text() == "a,b" and _version_of(target) == "A"
    assert foreign_files(tmp_path / "missing", "test") == []


def test_the_manifest_records_every_written_file(tmp_path: Path) -> None:
    target = tmp_path / "index"
    atomic_save_dir(target, lambda folder: (folder / "a.npy").write_bytes(b"xyz"), kind="index")
    assert sorted(read_manifest(target)) == ["a.npy"]
    assert verify_manifest(target) is True


def test_failed_write_leaves_the_old_folder_and_no_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "model"
    atomic_save_dir(target, lambda folder: _write_version(folder, "A"), kind="test")

    def failing(folder: Path) -> None:
        (folder / "f0.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save_dir(target, failing, kind="test")
    assert _version_of(target) == "A"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_failed_rename_puts_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model"
    atomic_save_dir(target, lambda folder: _write_version(folder, "A"), kind="test")
    rename = os.rename

    def rename_new_folder_fails(source, destination):
        if Path(destination) == target and Path(source).name.startswith(".model.tmp-"):
            raise OSError("device busy")
        rename(source, destination)

    monkeypatch.setattr(os, "rename", rename_new_folder_fails)
    with pytest.raises(OSError, match="device busy"):
        atomic_save_dir(target, lambda folder: _write_version(folder, "B"), kind="test")
    assert _version_of(target) == "A"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_refuses_files_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        atomic_save_dir(tmp_path / "file", lambda folder: None, kind="test")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match="symbolic link"):
        atomic_save_dir(tmp_path / "link", lambda folder: None, kind="test")


def test_recovery_restores_old_and_removes_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "model"
    old = tmp_path / ".model.old-ab12cd34"  # what a save killed between its two renames leaves
    old.mkdir()
    _write_version(old, "A")
    unfinished = tmp_path / ".model.tmp-cd34ef56"  # the new folder of that save
    unfinished.mkdir()
    (unfinished / "f0.bin").write_bytes(b"partial")
    (tmp_path / ".model.del-ef56ab12").mkdir()  # a deletion cut short
    (tmp_path / ".model-mine").mkdir()  # a user's own folder, whatever its name
    assert recover_interrupted_save(target) is True
    assert _version_of(target) == "A"
    assert sorted(os.listdir(tmp_path)) == [".model-mine", "model"]
    assert recover_interrupted_save(target) is False  # nothing left to do


def _killed_between_the_renames(tmp_path: Path) -> tuple[Path, Path]:
    """A target missing and its previous version A beside it, as a save killed between its two renames leaves them."""
    target = tmp_path / "model"
    atomic_save_dir(target, lambda folder: _write_version(folder, "A"), kind="test")
    old = tmp_path / ".model.old-ab12cd34"
    os.rename(target, old)
    return target, old


def test_recovery_restores_over_an_empty_folder(tmp_path: Path) -> None:
    target, _ = _killed_between_the_renames(tmp_path)
    target.mkdir()  # e.g. made by a logger, or by a program that expected the folder
    assert recover_interrupted_save(target) is True
    assert _version_of(target) == "A" and os.listdir(tmp_path) == ["model"]


def _log_file_only(target: Path) -> None:
    target.mkdir()
    (target / "train.log").write_text("step 1")


def _incomplete_save(target: Path) -> None:
    target.mkdir()
    _write_version(target, "B")
    (target / "f3.bin").unlink()


@pytest.mark.parametrize("make", [_log_file_only, _incomplete_save, lambda target: target.write_text("a file")])
def test_recovery_never_deletes_the_old_copy_for_what_is_not_a_whole_save(tmp_path: Path, make) -> None:
    target, old = _killed_between_the_renames(tmp_path)
    make(target)
    before = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*"))
    for _ in range(2):  # a load and a save both recover first, and both refuse
        with pytest.raises(FileExistsError, match=f"{target}.*{old}"):
            recover_interrupted_save(target)
    with pytest.raises(FileExistsError, match=f"{target}.*waits in {old}"):
        atomic_save_dir(target, lambda folder: _write_version(folder, "C"), kind="test")
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*")) == before
    assert _version_of(old) == "A"


def test_recovery_discards_the_old_copy_beside_a_whole_save(tmp_path: Path) -> None:
    target, _ = _killed_between_the_renames(tmp_path)
    _write_version(target, "B")  # killed after the second rename: the new save is whole
    (target / "train.log").write_text("written after the save")  # an extra file does not make it less whole
    assert recover_interrupted_save(target) is False
    assert sorted(os.listdir(tmp_path)) == ["model"] and (target / "f0.bin").read_bytes() == _content("B", 0)


# -- SIGKILL at every step -------------------------------------------------------------------------------------------

# The child traces every file-system call a save or a recovery makes (renames, folder creation, file and folder
# deletion, fsyncs) and, with a kill point k, kills itself with SIGKILL right after the k-th of them.
CHILD = r"""
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("integrity_under_test", sys.argv[1])
integrity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(integrity)
action, target, tag, kill_at = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
FILES = sys.argv[6].split(",")
steps = []

def step(name):
    if len(steps) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    steps.append(name)

def traced(name, function):
    def call(*args, **kwargs):
        result = function(*args, **kwargs)
        paths = [os.path.basename(os.fspath(arg)) for arg in args[:2] if isinstance(arg, (str, os.PathLike))]
        step(" ".join([name, *paths]))
        return result
    return call

def write(folder):
    for index, name in enumerate(FILES):
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = (tag + str(index)).encode() * 700
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            step("half of " + name)
            handle.write(data[len(data) // 2 :])
        step("wrote " + name)
    integrity.write_manifest(folder, FILES)
    step("wrote manifest")

if action == "loop":
    print("ready", flush=True)
    while True:
        for tag in "AB":
            integrity.atomic_save_dir(target, write, kind="test")
for name in ("rename", "mkdir", "unlink", "rmdir"):
    setattr(os, name, traced(name, getattr(os, name)))
integrity._fsync = traced("fsync", integrity._fsync)
if action == "save":
    integrity.atomic_save_dir(target, write, kind="test")
else:
    integrity.recover_interrupted_save(target)
print("\n".join(steps))
"""


def _child(action: str, target: Path, tag: str = "", kill_at: int = -1) -> list[str]:
    """Run the child; return the steps it completed (it prints them when not killed)."""
    command = [sys.executable, "-c", CHILD, str(MODULE_PATH), action, str(target), tag, str(kill_at), ",".join(FILES)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if kill_at >= 0 and done.returncode == -signal.SIGKILL:
        return []
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _state_after_recovery(target: Path) -> str | None:
    recover_interrupted_save(target)
    assert sorted(os.listdir(target.parent)) == ([target.name] if target.exists() else [])  # no leftovers
    return _version_of(target) if target.exists() else None


def _placed(steps: list[str], target: Path) -> int:
    """The index of the step that renamed the new folder into place."""
    return next(i for i, step in enumerate(steps) if step.startswith("rename .") and step.endswith(f" {target.name}"))


@posix_only
def test_sigkill_at_every_step_leaves_a_whole_old_or_new_folder(tmp_path: Path) -> None:
    probe, fresh, target = tmp_path / "probe" / "saved", tmp_path / "fresh" / "saved", tmp_path / "over" / "saved"
    for folder in (probe, fresh):
        folder.parent.mkdir()  # so that no run but the first creates it
    first_save = _child("save", probe, "A")  # the steps of a save, learnt from runs that are not killed
    overwrite = _child("save", probe, "B")
    assert any(step.startswith("rename saved .saved.old-") for step in overwrite)  # the old folder moved aside
    assert not any(step.startswith("rename saved") for step in first_save)  # the first save has none
    assert _state_after_recovery(probe) == "B"
    for k in range(len(first_save)):  # the first save of a folder: nothing, or the whole new folder
        _child("save", fresh, "A", kill_at=k)
        expected = "A" if k >= _placed(first_save, fresh) else None
        assert _state_after_recovery(fresh) == expected, f"killed after {first_save[k]!r}"
        shutil.rmtree(fresh, ignore_errors=True)
    atomic_save_dir(target, lambda folder: _write_version(folder, "A"), kind="test")
    for k in range(len(overwrite)):  # replacing a folder: the old one, or the new one, alternating A and B
        old = _version_of(target)
        new = "A" if old == "B" else "B"
        _child("save", target, new, kill_at=k)
        expected = new if k >= _placed(overwrite, target) else old
        assert _state_after_recovery(target) == expected, f"killed after {overwrite[k]!r}"
    assert len(first_save) + len(overwrite) >= 30


@posix_only
def test_sigkill_during_recovery_is_recovered(tmp_path: Path) -> None:
    target = tmp_path / "over" / "saved"
    atomic_save_dir(target, lambda folder: _write_version(folder, "A"), kind="test")
    _child("save", tmp_path / "probe" / "saved", "A")
    overwrite = _child("save", tmp_path / "probe" / "saved", "B")
    between_renames = next(i for i, step in enumerate(overwrite) if step.startswith("rename saved .saved.old-"))
    recovery_steps: list[str] | None = None
    k = 0
    while recovery_steps is None or k < len(recovery_steps):
        old = _version_of(target)
        _child("save", target, "A" if old == "B" else "B", kill_at=between_renames)
        assert not target.exists()  # killed between the two renames: only hidden folders remain
        if recovery_steps is None:  # learn the recovery's steps from one run that is not killed
            recovery_steps = _child("recover", target)
            assert recovery_steps[0].startswith("rename .saved.old-") and recovery_steps[0].endswith(" saved")
        else:  # then kill the recovery itself after each of them
            _child("recover", target, kill_at=k)
            k += 1
        assert _state_after_recovery(target) == old, f"recovery killed after {recovery_steps[k - 1]!r}"
    assert len(recovery_steps) >= 3


@posix_only
def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    atomic_save_dir(target, lambda folder: _write_version(folder, "A"), kind="test")
    rng = random.Random(0)
    seen, interrupted = set(), 0
    for _ in range(15):
        command = [sys.executable, "-c", CHILD, str(MODULE_PATH), "loop", str(target), "", "-1", ",".join(FILES)]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.0, 0.05))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        interrupted += len(os.listdir(target.parent)) > 1  # killed mid-save: hidden folders beside the target
        seen.add(_state_after_recovery(target))
    assert seen <= {"A", "B"} and None not in seen
    assert interrupted >= 5
