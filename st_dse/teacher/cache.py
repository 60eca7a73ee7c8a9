"""Teacher logits cached on disk, keyed by the teacher's fingerprint and each pair's text: a reordered, filtered or
extended dataset never gets another pair's logits, and a killed run loses at most the batch in flight."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from st_dse.integrity import fsync_directory

logger = logging.getLogger(__name__)

KEY_BYTES = 16
STALE_TEMPORARY_SECONDS = 3600  # an older temporary file was left by a killed process, a younger one may be in use
MERGE_EVERY_BATCHES = 512  # batch files of one run merged every this many, so that a rerun reads few files


def default_cache_dir() -> Path:
    """``$ST_DSE_CACHE`` (default ``~/.cache/st_dse``) / ``teacher_logits``."""
    return Path(os.environ.get("ST_DSE_CACHE", Path.home() / ".cache" / "st_dse")) / "teacher_logits"


def pair_key(sentence1: str, sentence2: str) -> bytes:
    """A 16-byte digest of one ordered pair; the length prefix keeps ("ab", "c") apart from ("a", "bc")."""
    text = f"{len(sentence1)}:{sentence1}\x1f{sentence2}".encode("utf-8", "surrogatepass")  # surrogateescape'd too
    return hashlib.blake2b(text, digest_size=KEY_BYTES).digest()


def shard_of(key: bytes, num_shards: int) -> int:
    """The shard (0 to ``num_shards - 1``) of a pair, from its key alone: the same on every process and machine."""
    return int.from_bytes(key[:8], "big") % num_shards


def _checksum(keys: np.ndarray, logits: np.ndarray) -> str:
    return hashlib.sha256(keys.tobytes() + logits.tobytes()).hexdigest()


class TeacherLogitCache:
    """Logits of one teacher, in checksummed ``.npz`` files in ``cache_dir/<fingerprint[:32]>/``; a damaged file is
    renamed ``*.corrupt`` and its pairs labelled again. Processes may share a folder: files are never modified.

    Args:
        cache_dir: The cache root, e.g. :func:`default_cache_dir`.
        fingerprint: The teacher's :func:`~st_dse.teacher.teacher_fingerprint`.
    """

    def __init__(self, cache_dir: str | os.PathLike, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.directory = Path(cache_dir) / fingerprint[:32]
        self.directory.mkdir(parents=True, exist_ok=True)
        self._logits: dict[bytes, np.ndarray] = {}
        self._files: dict[Path, list[bytes]] = {}  # what each file holds, so a merge knows what a deletion loses
        self._batches_since_merge: list[Path] = []
        for path in self.directory.glob("*.tmp"):
            with contextlib.suppress(OSError):  # gone already (another process), or not ours to remove
                if time.time() - path.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                    path.unlink()
        for path in sorted(self.directory.glob("merged-*.npz")) + sorted(self.directory.glob("logits-*.npz")):
            self._load(path)

    def __len__(self) -> int:
        return len(self._logits)

    def __contains__(self, key: bytes) -> bool:
        return key in self._logits

    def get(self, key: bytes) -> np.ndarray:
        return self._logits[key]

    @property
    def files(self) -> list[Path]:
        """The cache files this object has read or written, in that order."""
        return list(self._files)

    def _load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as stored:
                keys, logits = stored["keys"], stored["logits"]
                checksum, fingerprint = str(stored["checksum"]), str(stored["fingerprint"])
            width = self._width()
            problems = {
                "written by another teacher": fingerprint != self.fingerprint,
                "malformed arrays": (keys.dtype, keys.shape[1:], logits.dtype, logits.ndim, len(logits))
                != (np.uint8, (KEY_BYTES,), np.float32, 2, len(keys)),
                "checksum mismatch": _checksum(keys, logits) != checksum,
                "non-finite logits": not np.isfinite(logits).all(),
                f"not {width} logits per pair as in other files": width is not None and logits.shape[1:] != (width,),
            }
            if any(problems.values()):
                raise ValueError(", ".join(name for name, failed in problems.items() if failed))
        except FileNotFoundError:
            return  # merged by another process meanwhile
        except Exception as error:
            logger.warning(
                "Ignoring damaged teacher-logit cache file %s (%s); its pairs will be relabelled.", path, error
            )
            with contextlib.suppress(OSError):  # already set aside by another process
                os.replace(path, path.with_suffix(".corrupt"))
            return
        self._files[path] = [key.tobytes() for key in keys]
        self._logits.update(zip(self._files[path], logits))

    def _width(self) -> int | None:
        return len(next(iter(self._logits.values()))) if self._logits else None

    def _write(self, prefix: str, keys: Sequence[bytes], logits: np.ndarray, durable: bool) -> Path:
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES)
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, prefix=prefix, suffix=".tmp")
        path = self.directory / f"{prefix}{uuid.uuid4().hex}.npz"
        try:
            with os.fdopen(descriptor, "wb") as handle:
                checksum, fingerprint = np.array(_checksum(key_array, logits)), np.array(self.fingerprint)
                np.savez(handle, keys=key_array, logits=logits, checksum=checksum, fingerprint=fingerprint)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temporary, path)  # atomic: readers see the whole file or none of it
        finally:
            Path(temporary).unlink(missing_ok=True)  # left only when writing failed
        if durable:
            fsync_directory(self.directory)
        return path

    def add(self, keys: Sequence[bytes], logits: np.ndarray) -> None:
        """Store one batch of logits in its own file (renamed into place, not fsynced: after a power failure a damaged
        file fails its checksum), then serve it from :meth:`get`."""
        keys = list(keys)
        logits = np.ascontiguousarray(logits, dtype=np.float32).reshape(len(keys), -1)
        width = self._width()
        if width is not None and logits.shape[1] != width:
            raise ValueError(f"Got {logits.shape[1]} logits per pair, but this cache holds {width} per pair.")
        path = self._write("logits-", keys, logits, durable=False)
        self._logits.update(zip(keys, logits))
        self._files[path] = keys
        self._batches_since_merge.append(path)
        if len(self._batches_since_merge) >= MERGE_EVERY_BATCHES:
            self.merge(self._batches_since_merge)

    def merge(self, files: Sequence[Path] | None = None) -> Path | None:
        """Rewrite ``files`` (default: every file this object knows) as one fsynced merged file, then delete them;
        return it, or None for fewer than two files."""
        files = [path for path in (self.files if files is None else files) if path in self._files]
        self._batches_since_merge = [path for path in self._batches_since_merge if path not in files]
        if len(files) < 2:
            return None
        keys = list(dict.fromkeys(key for path in files for key in self._files[path]))
        merged = self._write("merged-", keys, np.stack([self._logits[key] for key in keys]), durable=True)
        for path in files:
            path.unlink(missing_ok=True)  # another process sharing the cache may have merged it already
            del self._files[path]
        self._files[merged] = keys
        logger.debug("Merged %d teacher-logit cache files into %s", len(files), merged)
        return merged
