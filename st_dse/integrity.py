"""Checksummed manifests, and folder replacement that is all or nothing. Standard library only (no torch import)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args

logger = logging.getLogger(__name__)

MANIFEST_NAME = "checksums.json"
FORMAT_VERSION = 1  # readers refuse newer manifests
VerifyMode = Literal["full", "size", "none"]
DEFAULT_REMEDY = "Save or build it again (and copy whole folders, not single files, when moving it)."
PathLike = str | os.PathLike


class CorruptFileError(ValueError):
    """A file is missing or does not match its manifest: ``path``, ``expected``, ``found`` ``{"size", "sha256"}``."""

    def __init__(self, message: str, path: Path, expected: dict | None = None, found: dict | None = None) -> None:
        super().__init__(message)
        self.path, self.expected, self.found = path, expected, found


def file_sha256(path: PathLike) -> str:
    """The SHA-256 hex digest of a file, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(
    directory: PathLike, files: Iterable[PathLike] | None = None, name: str = MANIFEST_NAME, kind: str | None = None
) -> Path:
    """Record the size and SHA-256 of ``files`` (relative to ``directory``; None: every file but the manifest) in
    ``directory/name``."""
    directory = Path(directory)
    files = [path for path in directory.rglob("*") if path.is_file()] if files is None else files
    entries = {
        file: {"size": (directory / file).stat().st_size, "sha256": file_sha256(directory / file)}
        for file in sorted({_relative(directory, file, must_exist=True) for file in files} - {name})
    }
    manifest = {"format_version": FORMAT_VERSION, "algorithm": "sha256", "kind": kind, "files": entries}
    (directory / name).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return directory / name


def read_manifest(directory: PathLike, name: str = MANIFEST_NAME) -> dict[str, dict[str, Any]] | None:
    """The manifest's ``{relative path: {"size", "sha256"}}``, or None when there is none; a damaged or newer one is a
    :class:`CorruptFileError`."""
    path = Path(directory) / name
    try:
        problem = _manifest_problem(manifest := json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # ValueError: not UTF-8, or not JSON
        problem = f"it cannot be read ({error})"
    if problem:
        message = f"The manifest {path} is damaged: {problem}. The folder cannot be verified; save or build it again."
        raise CorruptFileError(message, path)
    return manifest["files"]


def _manifest_problem(manifest: Any) -> str | None:
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return "it holds no 'files' table"
    version, algorithm = manifest.get("format_version"), manifest.get("algorithm")
    if not isinstance(version, int) or version > FORMAT_VERSION or algorithm != "sha256":
        return f"it is in format {version!r} ({algorithm!r}), not one this st_dse reads (upgrade st_dse if newer)"
    for relative, entry in files.items():
        size, digest = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
        if not _is_safe(relative):
            return f"it lists {relative!r}, a path outside the folder"
        if not (type(size) is int and size >= 0 and isinstance(digest, str) and len(digest) == 64):
            return f"its entry for {relative!r} is malformed ({entry!r})"
    return None


def verify_manifest(
    directory: PathLike,
    name: str = MANIFEST_NAME,
    files: Iterable[PathLike] | None = None,
    verify: VerifyMode = "full",
    remedy: str = DEFAULT_REMEDY,
) -> bool:
    """Check ``files`` (default: all listed) against the manifest; a mismatch is a :class:`CorruptFileError`.

    ``verify``: ``"full"`` (sizes, then SHA-256 of every byte), ``"size"`` (existence and size) or ``"none"``;
    ``remedy`` ends error messages. Returns True when all matched, False when nothing was checked (no manifest, or
    ``"none"``).
    """
    if verify not in get_args(VerifyMode):
        raise ValueError(f"verify must be one of {get_args(VerifyMode)}, got {verify!r}.")
    directory = Path(directory)
    if verify == "none" or (entries := read_manifest(directory, name)) is None:
        return False
    selected = list(entries) if files is None else [_relative(directory, file) for file in files]
    for relative in selected:  # every size before any hash: a truncated file is named without reading the others
        path, entry = directory / relative, entries.get(relative)
        size = path.stat().st_size if entry and path.is_file() else None
        if entry is None:
            problem = f"is not listed in {directory / name}: the folder mixes files from different saves"
        elif size is None:
            problem = f"is missing, but {name} lists it ({entry['size']} bytes): the folder is incomplete"
        elif size != entry["size"]:
            problem = f"has {size} bytes, but {name} recorded {entry['size']}: the file is damaged (truncated?) or "
            problem += "comes from another save"
        else:
            continue
        raise CorruptFileError(f"{path} {problem}. {remedy}", path, entry, None if size is None else {"size": size})
    for relative in selected if verify == "full" else ():
        path, entry = directory / relative, entries[relative]
        if (digest := file_sha256(path)) != entry["sha256"]:
            message = f"{path} has SHA-256 {digest[:16]}..., but {name} recorded {entry['sha256'][:16]}... (both "
            message += f"{entry['size']} bytes): the file is damaged or comes from another save. {remedy}"
            raise CorruptFileError(message, path, entry, {"size": entry["size"], "sha256": digest})
    return True


def _is_safe(relative: Any) -> bool:
    if not isinstance(relative, str) or not relative or "\\" in relative or ":" in relative:
        return False
    return not PurePosixPath(relative).is_absolute() and not {".", ".."} & set(relative.split("/"))


def _relative(directory: Path, file: PathLike, must_exist: bool = False) -> str:
    path = Path(file)
    relative = path.relative_to(directory) if path.is_absolute() and path.is_relative_to(directory) else path
    if not _is_safe(relative := relative.as_posix()):
        raise ValueError(f"{file!s} is not a path inside {directory}; list files relative to the folder.")
    if must_exist and not (directory / relative).is_file():
        raise FileNotFoundError(f"Cannot record {directory / relative} in the manifest: it is not a file.")
    return relative


def atomic_save_dir(target: PathLike, write: Callable[[Path], Any], *, kind: str) -> Path:
    """Replace the folder ``target`` with what ``write(folder)`` writes into a new hidden sibling, all or nothing.

    Only a folder that st_dse saved as the same ``kind`` is replaced: a ``target`` holding any file its manifest does
    not list (a file of yours, another kind of save) is refused before anything is written (:func:`foreign_files`).
    The new folder is written beside ``target`` and fsynced, the old ``target`` renamed aside, the new one renamed in,
    the old one deleted: a kill at any moment leaves the whole old or new folder, and the next save or load
    (:func:`recover_interrupted_save`) clears what it left. One process at a time may save to ``target``, and none
    load it meanwhile. ``write`` failing leaves ``target`` untouched; ``kind`` ("student", "index", ...) is recorded
    with every written file in the folder's manifest.
    """
    target = Path(os.path.abspath(target))
    recover_interrupted_save(target)  # first: an old folder waiting beside target is named in any refusal
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        what = "a symbolic link" if target.is_symlink() else "a file"
        raise ValueError(f"Cannot save over {target}: it is {what}, not a folder; save to a real folder instead.")
    if foreign := foreign_files(target, kind):
        listed = f"{', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}"
        raise FileExistsError(
            f"Cannot save over {target}: it holds files that are not part of an st_dse {kind} save ({listed}); move "
            "them away or save to another folder."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    new, old = _sibling(target, "tmp"), _sibling(target, "old")
    new.mkdir()
    moved = False
    try:
        write(new)
        write_manifest(new, kind=kind)
        for root, _, files in os.walk(new, topdown=False):
            for file in files:
                _fsync(os.path.join(root, file))
            fsync_directory(root)
        if moved := os.path.lexists(target):
            os.rename(target, old)
        os.rename(new, target)
    except BaseException:
        if moved and not os.path.lexists(target):
            os.rename(old, target)
        shutil.rmtree(new, ignore_errors=True)
        raise
    fsync_directory(target.parent)
    if moved:
        _discard(target, old)
    return target


def foreign_files(folder: PathLike, kind: str) -> list[str]:
    """The files in ``folder`` that a save of ``kind`` may not replace: every file its manifest does not list, and all
    of them when there is no readable manifest or it records another kind. Empty for a missing or empty folder."""
    folder = Path(folder)
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if not path.is_dir())
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        listed = {*manifest["files"], MANIFEST_NAME} if manifest["kind"] == kind else set()
    except (OSError, ValueError, KeyError, TypeError):  # no manifest, or not one st_dse wrote
        listed = set()
    return [file for file in files if file not in listed]


def recover_interrupted_save(target: PathLike) -> bool:
    """Repair what an interrupted :func:`atomic_save_dir` left beside ``target``: put the old folder back when the
    save was killed between its two renames (then return True), and delete the rest. Run it while no save runs.

    The old folder is deleted only when ``target`` holds a whole save (every file its manifest lists, at its recorded
    size). An empty folder made at ``target`` meanwhile is replaced by the old one; any other content is refused with
    a :class:`FileExistsError` naming both folders, and nothing is moved or deleted."""
    target = Path(os.path.abspath(target))
    prefixes = tuple(f".{target.name}.{kind}-" for kind in ("old", "tmp", "del"))
    try:
        leftovers = [Path(entry.path) for entry in os.scandir(target.parent) if entry.name.startswith(prefixes)]
    except (FileNotFoundError, NotADirectoryError):
        return False
    olds = [path for path in leftovers if path.name.startswith(prefixes[0]) and path.is_dir()]
    if restored := bool(olds) and not _is_whole_save(target):
        old = max(olds, key=lambda path: path.stat().st_ctime)  # the newest, should several saves have been killed
        with contextlib.suppress(OSError):  # succeeds only for an empty folder: nothing of anyone's is lost
            os.rmdir(target)
        if os.path.lexists(target):
            raise FileExistsError(
                f"A save into {target} was interrupted, and its previous version waits in {old}, but {target} now "
                "holds files that are not a whole st_dse save: move them away and load again to restore the previous "
                f"version (or, to keep {target} as it is, delete {old} yourself)."
            )
        os.rename(old, target)
        leftovers.remove(old)
        logger.warning("%s was missing: a save into it was interrupted. Restored its previous version.", target)
        fsync_directory(target.parent)
    for path in leftovers:
        _discard(target, path)
    return restored


def _is_whole_save(folder: Path) -> bool:
    try:
        return verify_manifest(folder, verify="size")
    except (CorruptFileError, OSError):
        return False


def fsync_directory(directory: PathLike) -> None:
    """Make renames and new entries in ``directory`` durable; a no-op where folders cannot be fsynced."""
    with contextlib.suppress(OSError):  # Windows, and some network file systems, cannot fsync a folder
        _fsync(directory)


def _fsync(path: PathLike) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{secrets.token_hex(4)}"


def _discard(target: Path, path: Path) -> None:
    # Renamed first, so that a deletion cut short never leaves a folder that could pass for a whole old one.
    try:
        os.rename(path, doomed := _sibling(target, "del"))
        shutil.rmtree(doomed)
    except FileNotFoundError:
        pass  # removed by another process meanwhile
    except OSError as error:  # the right folder is in place: report, and leave the rest to the next recovery
        logger.warning("Could not remove %s, left beside %s: %s", path, target, error)
