"""Integrity of saved folders: checksummed manifests (:func:`write_manifest`, :func:`verify_manifest`), and folder
replacement that is all-or-nothing (:func:`atomic_save_dir`, :func:`recover_interrupted_save`).

Standard library only, so this module imports (and is tested in child processes) without torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any, Literal

logger = logging.getLogger(__name__)

MANIFEST_NAME = "checksums.json"
MANIFEST_FORMAT_VERSION = 1
VerifyMode = Literal["full", "size", "none"]
VERIFY_MODES = ("full", "size", "none")
HASH_CHUNK_BYTES = 1 << 20  # large enough for full disk and hash speed, small enough to stay in cache
DEFAULT_REMEDY = "Save or build it again (and copy whole folders, not single files, when moving it)."
StepHook = Callable[[str], None]
PathLike = str | os.PathLike


class CorruptFileError(ValueError):
    """A file of a saved folder is missing or does not match its manifest: ``path``, and the ``expected`` (recorded)
    and ``found`` ``{"size", "sha256"}`` where known."""

    def __init__(self, message: str, path: Path, expected: dict | None = None, found: dict | None = None) -> None:
        super().__init__(message)
        self.path, self.expected, self.found = path, expected, found


def file_sha256(path: PathLike) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB chunks (a multi-GB file is never held in memory)."""
    digest, buffer = hashlib.sha256(), bytearray(HASH_CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def write_manifest(
    directory: PathLike, files: Iterable[PathLike] | None = None, name: str = MANIFEST_NAME, *, durable: bool = True
) -> Path:
    """Record the size and SHA-256 of ``files`` (relative to ``directory``; None: every file) in ``directory/name``,
    written whole (and fsynced with ``durable``). Call it once every other file of the folder is complete."""
    directory = Path(directory)
    if files is None:  # every file but the manifest and its temporary copies
        files = [path.relative_to(directory) for path in directory.rglob("*") if path.is_file()]
        files = [file for file in files if file.as_posix() != name and not file.name.startswith(f".{name}.")]
    entries = {}
    for relative in sorted({_relative_name(directory, file) for file in files}):
        path = directory / relative
        if relative == name:
            raise ValueError(f"The manifest {name!r} cannot list itself; leave it out of files.")
        if not path.is_file():
            raise FileNotFoundError(f"Cannot record {path} in the manifest: it is not a file (was it written?).")
        entries[relative] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    text = json.dumps({"format_version": MANIFEST_FORMAT_VERSION, "algorithm": "sha256", "files": entries}, indent=2)
    temporary_path = directory / f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        temporary_path.write_text(text, encoding="utf-8")
        if durable:
            _fsync_file(str(temporary_path))
        os.replace(temporary_path, directory / name)
    finally:
        temporary_path.unlink(missing_ok=True)
    if durable:
        fsync_directory(directory)
    return directory / name


def read_manifest(directory: PathLike, name: str = MANIFEST_NAME) -> dict[str, dict[str, Any]] | None:
    """The manifest's ``{relative path: {"size", "sha256"}}``, or None when there is none. Raises a
    :class:`CorruptFileError` for a damaged manifest, ValueError for one written by a newer st_dse."""
    path = Path(directory) / name
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _damaged_manifest(path, f"it cannot be read ({error})") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise _damaged_manifest(path, "it holds no 'files' table")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or version > MANIFEST_FORMAT_VERSION or manifest.get("algorithm") != "sha256":
        found = f"format {version!r} ({manifest.get('algorithm')!r})"
        raise ValueError(f"{path} was written in manifest {found}, newer than this st_dse reads. Upgrade st_dse.")
    for relative, entry in manifest["files"].items():
        if not _is_safe_relative(relative):
            raise _damaged_manifest(path, f"it lists {relative!r}, a path outside the folder")
        size, digest = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
        if not (type(size) is int and size >= 0 and isinstance(digest, str) and len(digest) == 64):
            raise _damaged_manifest(path, f"its entry for {relative!r} is malformed ({entry!r})")
    return manifest["files"]


def verify_manifest(
    directory: PathLike,
    name: str = MANIFEST_NAME,
    files: Iterable[PathLike] | None = None,
    verify: VerifyMode = "full",
    remedy: str = DEFAULT_REMEDY,
) -> bool:
    """Check ``files`` (default: all listed) against the manifest; raise a :class:`CorruptFileError` on a mismatch.

    ``verify="full"``: existence, size and SHA-256 (reads every byte, about 1-2 GB/s); ``"size"``: existence and size,
    instant, blind to bytes changed in place; ``"none"``: nothing. Sizes are checked before any hashing. ``remedy``
    ends error messages. True when all matched; False when nothing was checked (no manifest, or ``"none"``).
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}.")
    directory = Path(directory)
    entries = read_manifest(directory, name) if verify != "none" else None
    if entries is None:
        return False
    selected = list(entries) if files is None else [_relative_name(directory, file) for file in files]
    for relative in selected:
        path, entry = directory / relative, entries.get(relative)
        if entry is None:
            message = f"{path} is not listed in {directory / name}: the folder mixes files from different saves."
            raise CorruptFileError(f"{message} {remedy}", path)
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            message = f"{path} is missing, but {name} lists it ({entry['size']} bytes): the folder is incomplete."
            raise CorruptFileError(f"{message} {remedy}", path, entry)
        if size != entry["size"]:
            message = f"{path} has {size} bytes, but {name} recorded {entry['size']}: the file is damaged (truncated?)"
            raise CorruptFileError(f"{message} or comes from another save. {remedy}", path, entry, {"size": size})
    for relative in selected if verify == "full" else ():
        path, entry = directory / relative, entries[relative]
        if (digest := file_sha256(path)) != entry["sha256"]:
            message = f"{path} has SHA-256 {digest[:16]}..., but {name} recorded {entry['sha256'][:16]}... (both "
            message += f"{entry['size']} bytes): the file is damaged or comes from another save. {remedy}"
            raise CorruptFileError(message, path, entry, {"size": entry["size"], "sha256": digest})
    return True


def _damaged_manifest(path: Path, problem: str) -> CorruptFileError:
    message = f"The manifest {path} is damaged: {problem}. The folder cannot be verified; save or build it again."
    return CorruptFileError(message, path)


def _is_safe_relative(relative: Any) -> bool:
    safe = isinstance(relative, str) and relative and "\\" not in relative and ":" not in relative
    return bool(safe) and not PurePosixPath(relative).is_absolute() and not {".", ".."} & set(relative.split("/"))


def _relative_name(directory: Path, file: PathLike) -> str:
    path = Path(file)
    if path.is_absolute() and path.is_relative_to(directory):
        path = path.relative_to(directory)
    if not _is_safe_relative(path.as_posix()):
        raise ValueError(f"{file!s} is not a path inside {directory}; list files relative to the folder.")
    return path.as_posix()


def atomic_save_dir(
    target: PathLike,
    write: Callable[[Path], Any],
    *,
    manifest: bool | str = False,
    durable: bool = True,
    _step_hook: StepHook | None = None,
) -> Path:
    """Replace the folder ``target`` with what ``write(folder)`` writes into an empty hidden sibling, all or nothing.

    ``manifest`` (True or a file name) records every written file; ``durable`` fsyncs them. Then the old ``target`` is
    renamed aside, the new folder renamed in, and the old one deleted: a kill at any point leaves the whole old or the
    whole new folder (see :func:`recover_interrupted_save`). If ``write`` raises, ``target`` is untouched. Anything
    that must survive a save must live outside ``target``; one process at a time may save to it. Open memory maps of
    old files stay valid on POSIX (files are unlinked, never truncated).
    """
    target, step = _target_path(target), _step_hook or (lambda name: None)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_save(target, durable=durable, _step_hook=_step_hook)
    step("recovered")
    temporary, old = _sibling(target, "tmp"), None
    temporary.mkdir()
    step("created temporary folder")
    try:
        write(temporary)
        step("wrote content")
        if manifest:
            write_manifest(temporary, None, MANIFEST_NAME if manifest is True else manifest, durable=False)
            step("wrote manifest")
        if durable:
            for root, _, files in os.walk(temporary, topdown=False):
                for file in files:
                    if not os.path.islink(os.path.join(root, file)):
                        _fsync_file(os.path.join(root, file))
                fsync_directory(root)
            step("synced content")
        if os.path.lexists(target):
            old = _sibling(target, "old")
            os.rename(target, old)
            step("moved old folder aside")
        try:
            os.rename(temporary, target)
        except BaseException:
            if old is not None:
                os.rename(old, target)  # put the old folder back; the temporary one is deleted below
            raise
        step("moved new folder into place")
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if durable:
        fsync_directory(target.parent)
        step("synced parent folder")
    if old is not None:
        _remove_leftover(target, "old", old, step, stale=False)
    return target


def recover_interrupted_save(target: PathLike, *, durable: bool = True, _step_hook: StepHook | None = None) -> bool:
    """Repair what a killed :func:`atomic_save_dir` left beside ``target``; True when an old folder was put back.

    A save killed between its two renames leaves no ``target``: the whole old folder is renamed back. Hidden folders
    of dead processes are deleted. Process ids come from folder names: do not run it where the saving process is
    invisible (two hosts sharing a network folder). Safe to call at any time, and again after being killed itself.
    """
    target, step = _target_path(target), _step_hook or (lambda name: None)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old|del)-(\d+)-[0-9a-f]+")
    try:
        matches = [(pattern.fullmatch(entry.name), entry) for entry in os.scandir(target.parent)]
    except FileNotFoundError:
        return False
    leftovers = [
        (match.group(1), Path(entry.path))
        for match, entry in matches
        if match and entry.is_dir(follow_symlinks=False) and not _process_alive(int(match.group(2)))
    ]
    olds = [path for kind, path in leftovers if kind == "old"]
    restored = False
    if olds and not os.path.lexists(target):
        try:
            os.rename(max(olds, key=lambda path: path.stat().st_ctime), target)
            restored = True
        except OSError:
            if not os.path.lexists(target):
                raise  # else another process put a folder there meanwhile
    if restored:
        logger.warning("%s was missing: a save into it was interrupted. Restored its previous version.", target)
        step("restored old folder")
        if durable:
            fsync_directory(target.parent)
            step("synced parent folder after restoring")
    for kind, path in leftovers:
        if path.exists() and (kind != "old" or os.path.lexists(target)):
            _remove_leftover(target, kind, path, step, stale=True)
    return restored


def fsync_directory(directory: PathLike) -> None:
    """Make renames and new entries in ``directory`` durable (POSIX); a no-op where folders cannot be fsynced."""
    with contextlib.suppress(OSError):  # Windows, and some network file systems, cannot fsync a folder
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _target_path(target: PathLike) -> Path:
    path = Path(os.path.abspath(target))
    if not path.name:
        raise ValueError(f"Cannot save over {target!s}: it names no folder.")
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; save to the folder it points to, {os.path.realpath(path)}.")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a folder; choose another path or remove the file first.")
    return path


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _remove_leftover(target: Path, kind: str, path: Path, step: StepHook, stale: bool) -> None:
    try:
        if kind == "old":  # renamed first, so that a folder named "old" is always whole and safe to restore
            doomed = _sibling(target, "del")
            os.rename(path, doomed)
            step("renamed stale old folder for deletion" if stale else "renamed old folder for deletion")
            path = doomed
        shutil.rmtree(path)
    except FileNotFoundError:
        return  # removed by another process meanwhile
    except OSError as error:  # the new folder is in place: report, and leave the rest to the next recovery
        logger.warning("Could not remove %s, left beside %s: %s", path, target, error)
        return
    step(f"removed stale {kind} folder" if stale else "deleted old folder")


def _fsync_file(path: str) -> None:
    # Windows flushes only handles opened for writing; elsewhere a read-only handle works, on read-only files too.
    with open(path, "r+b" if os.name == "nt" else "rb") as handle:
        os.fsync(handle.fileno())


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (True when unsure, so that its folders are left alone)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # pragma: no cover - os.kill(pid, 0) would end the process on Windows
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000 | 0x00100000, False, pid)  # QUERY_LIMITED_INFORMATION | SYNCHRONIZE
        if not handle:
            return ctypes.GetLastError() == 5  # access denied: it exists
        alive = kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: still running
        return bool(kernel32.CloseHandle(handle)) and alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # e.g. PermissionError: it runs, under another user
    return True
