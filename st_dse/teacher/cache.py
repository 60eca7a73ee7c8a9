"""Teacher logits cached on disk, keyed by the teacher's fingerprint and each pair's own text.

Keying by content means a reordered, filtered or extended dataset can never receive another pair's logits. Every
teacher batch is written to its own file (temporary file, then atomic rename) as soon as it is scored, so killing
the process loses at most the batch in flight; a rerun labels only what is missing. After a complete run the batch
files are merged into one.
"""

from __future__ import annotations

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
_BATCH_PREFIX = "logits-"
_MERGED_PREFIX = "merged-"
# Writing a temporary file takes well under a second: an older one was left by a killed process, a younger one may
# belong to a process writing into the same cache right now.
STALE_TEMPORARY_SECONDS = 3600
# Batch files written in one run are merged every this many, so a rerun after a long run reads few files.
MERGE_EVERY_BATCHES = 512


def default_cache_dir() -> Path:
    """``$ST_DSE_CACHE`` (default ``~/.cache/st_dse``) / ``teacher_logits``."""
    return Path(os.environ.get("ST_DSE_CACHE", Path.home() / ".cache" / "st_dse")) / "teacher_logits"


def pair_key(sentence1: str, sentence2: str) -> bytes:
    """A 16-byte digest of one ordered pair; the length prefix keeps ("ab", "c") apart from ("a", "bc")."""
    text = f"{len(sentence1)}:{sentence1}\x1f{sentence2}"
    # surrogatepass: text decoded with errors="surrogateescape" still gets a key.
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=KEY_BYTES).digest()


def shard_of(key: bytes, num_shards: int) -> int:
    """The shard (0 to ``num_shards - 1``) of a pair, from its key alone: the same on every process and machine."""
    return int.from_bytes(key[:8], "big") % num_shards


def _checksum(keys: np.ndarray, logits: np.ndarray) -> str:
    return hashlib.sha256(keys.tobytes() + logits.tobytes()).hexdigest()


class TeacherLogitCache:
    """Logits of one teacher, stored as checksummed ``.npz`` files in ``cache_dir/<fingerprint[:32]>/``.

    A file that fails to load, fails its checksum or was written by another teacher is renamed ``*.corrupt`` and its
    pairs are labelled again. Several processes may share a folder: file names are unique, files are never modified,
    and :meth:`merge` deletes a file only once its contents are safely in the merged file.

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
        self._remove_stale_temporaries()
        for path in sorted(self.directory.glob(f"{_MERGED_PREFIX}*.npz")) + sorted(
            self.directory.glob(f"{_BATCH_PREFIX}*.npz")
        ):
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

    def _remove_stale_temporaries(self) -> None:
        for path in self.directory.glob("*.tmp"):
            try:
                if time.time() - path.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                    path.unlink()
                    logger.info("Removed %s, left by an interrupted teacher-labelling run.", path)
            except OSError as error:  # gone already (another process), or not ours to remove
                logger.debug("Could not remove stale temporary file %s: %s", path, error)

    def _load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as stored:
                keys, logits = stored["keys"], stored["logits"]
                checksum, fingerprint = str(stored["checksum"]), str(stored["fingerprint"])
            width = self._width()
            problems = {
                "written by another teacher": fingerprint != self.fingerprint,
                "malformed arrays": keys.dtype != np.uint8
                or keys.shape[1:] != (KEY_BYTES,)
                or logits.ndim != 2
                or len(keys) != len(logits)
                or logits.dtype != np.float32,
                "checksum mismatch": _checksum(keys, logits) != checksum,
                "non-finite logits": not np.isfinite(logits).all(),
                f"not {width} logits per pair as in other files": width is not None and logits.shape[1:] != (width,),
            }
            if any(problems.values()):
                raise ValueError(", ".join(name for name, failed in problems.items() if failed))
        except FileNotFoundError:
            logger.debug("Cache file %s vanished while loading (merged by another process).", path)
            return
        except Exception as error:
            logger.warning(
                "Ignoring damaged teacher-logit cache file %s (%s); its pairs will be relabelled.", path, error
            )
            try:
                os.replace(path, path.with_suffix(".corrupt"))
            except OSError:
                pass  # already set aside by another process
            return
        key_list = [key.tobytes() for key in keys]
        self._logits.update(zip(key_list, logits))
        self._files[path] = key_list

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
        """Store one batch of logits in its own file (renamed into place, not fsynced), then serve it from :meth:`get`.

        After a power failure a damaged file fails its checksum and is relabelled. Every ``MERGE_EVERY_BATCHES``
        batch files are merged into one.
        """
        keys = list(keys)
        logits = np.ascontiguousarray(logits, dtype=np.float32).reshape(len(keys), -1)
        width = self._width()
        if width is not None and logits.shape[1] != width:
            raise ValueError(f"Got {logits.shape[1]} logits per pair, but this cache holds {width} per pair.")
        path = self._write(_BATCH_PREFIX, keys, logits, durable=False)
        self._logits.update(zip(keys, logits))
        self._files[path] = keys
        self._batches_since_merge.append(path)
        if len(self._batches_since_merge) >= MERGE_EVERY_BATCHES:
            self.merge(self._batches_since_merge)

    def merge(self, files: Sequence[Path] | None = None) -> Path | None:
        """Rewrite ``files`` (default: every file this object knows) as one merged file, then delete them.

        The merged file is fsynced before any source file is deleted, so a crash leaves every logit in at least one
        whole file. Returns the merged file, or None when there were fewer than two files.
        """
        files = [path for path in (self.files if files is None else files) if path in self._files]
        self._batches_since_merge = [path for path in self._batches_since_merge if path not in files]
        if len(files) < 2:
            return None
        keys = list(dict.fromkeys(key for path in files for key in self._files[path]))
        merged = self._write(_MERGED_PREFIX, keys, np.stack([self._logits[key] for key in keys]), durable=True)
        for path in files:
            path.unlink(missing_ok=True)  # another process sharing the cache may have merged it already
            del self._files[path]
        self._files[merged] = keys
        logger.debug("Merged %d teacher-logit cache files into %s", len(files), merged)
        return merged
