"""Teacher labelling: a cross-encoder's raw logits for every pair of a dataset, cached on disk by content.

The cache is keyed by the teacher's identity (a hash of its weights and settings) and by each pair's own text, so a
rerun reuses finished work, and a reordered, filtered or extended dataset can never receive another pair's logits
(the original DSE code aligned logits to examples by row order alone).

What survives an interruption: every teacher batch is written to its own file as soon as it is scored, by writing a
temporary file and renaming it into place, so killing the process at any moment (SIGKILL included) loses at most the
batch in flight. Rerunning the same call labels only what is missing. Files that fail to load or whose checksum does
not match are set aside and their pairs labelled again. After a complete run the per-batch files are merged into one
file, so that a large dataset does not leave thousands of small files to read on the next load.
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
# Files of the cache: one per labelled batch, and merged files holding many batches. Both have the same layout.
_BATCH_PREFIX = "logits-"
_MERGED_PREFIX = "merged-"
_TEMPORARY_SUFFIX = ".tmp"
# A temporary file older than this was left by a killed process (writing one takes well under a second); younger
# ones may belong to a process writing into the same cache right now, so they are left alone.
STALE_TEMPORARY_SECONDS = 3600
# While a run goes on, every this many batch files written are merged into one, so a rerun after an interruption of
# a long run reads a few hundred files, not tens of thousands.
MERGE_EVERY_BATCHES = 512


def default_cache_dir() -> Path:
    """``$ST_DSE_CACHE`` if set, else ``~/.cache/st_dse``; teacher logits go in its ``teacher_logits`` folder."""
    return Path(os.environ.get("ST_DSE_CACHE", Path.home() / ".cache" / "st_dse")) / "teacher_logits"


def pair_key(sentence1: str, sentence2: str) -> bytes:
    """A 16-byte digest of one ordered pair; the length prefix keeps ("ab", "c") apart from ("a", "bc")."""
    text = f"{len(sentence1)}:{sentence1}\x1f{sentence2}"
    # surrogatepass: text decoded with errors="surrogateescape" still gets a key instead of an encoding error.
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=KEY_BYTES).digest()


def shard_of(key: bytes, num_shards: int) -> int:
    """The shard (0 to ``num_shards - 1``) a pair belongs to, from its content key alone.

    Every process and machine computes the same assignment, whatever the dataset's row order or filtering.
    """
    return int.from_bytes(key[:8], "big") % num_shards


class TeacherLogitCache:
    """Logits of one teacher, stored as checksummed files in ``cache_dir/<fingerprint[:32]>/``.

    Each file is written to a temporary file and moved into place with an atomic rename, so an interrupted run leaves
    only whole files behind (and perhaps a ``*.tmp`` file, which is never read and is deleted once stale). A file that
    fails to load, whose checksum does not match, or that another teacher wrote is set aside (renamed ``*.corrupt``)
    and its pairs are labelled again. Several processes may label into the same folder at once: file names are
    unique, files are never modified, and :meth:`merge` deletes a file only after its contents are safely in the
    merged file.
    """

    def __init__(self, cache_dir: str | os.PathLike, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.directory = Path(cache_dir) / fingerprint[:32]
        self.directory.mkdir(parents=True, exist_ok=True)
        self._logits: dict[bytes, np.ndarray] = {}
        # The keys each file known to this object holds, so that merging can tell what a file's deletion would lose.
        self._files: dict[Path, list[bytes]] = {}
        self._batches_since_merge: list[Path] = []
        self._remove_stale_temporaries()
        self._load()

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

    @staticmethod
    def _checksum(keys: np.ndarray, logits: np.ndarray) -> str:
        return hashlib.sha256(keys.tobytes() + logits.tobytes()).hexdigest()

    def _remove_stale_temporaries(self) -> None:
        now = time.time()
        for path in self.directory.glob(f"*{_TEMPORARY_SUFFIX}"):
            try:
                if now - path.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                    path.unlink()
                    logger.info("Removed %s, left by an interrupted teacher-labelling run.", path)
            except FileNotFoundError:
                pass  # another process removed it or renamed it into place
            except OSError as error:
                logger.debug("Could not remove stale temporary file %s: %s", path, error)

    def _load(self) -> None:
        paths = sorted(self.directory.glob(f"{_MERGED_PREFIX}*.npz")) + sorted(
            self.directory.glob(f"{_BATCH_PREFIX}*.npz")
        )
        for path in paths:
            try:
                keys, logits = self._read(path)
            except FileNotFoundError:
                # Merged into another file by a process sharing this cache after we listed the folder.
                logger.debug("Cache file %s vanished while loading (merged by another process).", path)
                continue
            except Exception as error:
                logger.warning(
                    "Ignoring damaged teacher-logit cache file %s (%s); its pairs will be relabelled.", path, error
                )
                try:
                    os.replace(path, path.with_suffix(".corrupt"))
                except OSError:
                    pass  # already set aside by another process
                continue
            key_list = [key.tobytes() for key in keys]
            self._logits.update(zip(key_list, logits))
            self._files[path] = key_list

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        with np.load(path, allow_pickle=False) as stored:
            keys, logits = stored["keys"], stored["logits"]
            checksum, fingerprint = str(stored["checksum"]), str(stored["fingerprint"])
        if fingerprint != self.fingerprint:
            raise ValueError("written by another teacher")
        if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != KEY_BYTES or logits.ndim != 2:
            raise ValueError("malformed arrays")
        if len(keys) != len(logits) or logits.dtype != np.float32:
            raise ValueError("malformed arrays")
        if self._checksum(keys, logits) != checksum:
            raise ValueError("checksum mismatch")
        if not np.isfinite(logits).all():
            raise ValueError("non-finite logits")
        width = self._width()
        if width is not None and logits.shape[1] != width:
            raise ValueError(f"{logits.shape[1]} logits per pair, other files have {width}")
        return keys, logits

    def _width(self) -> int | None:
        return len(next(iter(self._logits.values()))) if self._logits else None

    def _write(self, prefix: str, keys: Sequence[bytes], logits: np.ndarray, durable: bool) -> Path:
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES)
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, prefix=prefix, suffix=_TEMPORARY_SUFFIX)
        path = self.directory / f"{prefix}{uuid.uuid4().hex}.npz"
        try:
            with os.fdopen(descriptor, "wb") as handle:
                np.savez(
                    handle,
                    keys=key_array,
                    logits=logits,
                    checksum=np.array(self._checksum(key_array, logits)),
                    fingerprint=np.array(self.fingerprint),
                )
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            # The rename is atomic: readers see the whole file or none of it, even if this process is killed now.
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        if durable:
            fsync_directory(self.directory)
        return path

    def add(self, keys: Sequence[bytes], logits: np.ndarray) -> None:
        """Store one batch of logits in its own file, then make it visible to :meth:`get`.

        The file is renamed into place but not fsynced: a killed process loses nothing written, and after a power
        failure a damaged file fails its checksum and is relabelled. Every ``MERGE_EVERY_BATCHES`` batch files are
        merged into one.
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

        The merged file is written atomically and fsynced before any source file is deleted, so a crash at any
        point leaves every logit in at least one whole file (duplicates are harmless). Returns the merged file, or
        None when there was nothing to merge.
        """
        files = [path for path in (self.files if files is None else files) if path in self._files]
        if len(files) < 2:
            self._batches_since_merge = [path for path in self._batches_since_merge if path not in files]
            return None
        keys = list(dict.fromkeys(key for path in files for key in self._files[path]))
        logits = np.stack([self._logits[key] for key in keys]).astype(np.float32, copy=False)
        merged = self._write(_MERGED_PREFIX, keys, logits, durable=True)
        for path in files:
            path.unlink(missing_ok=True)  # another process sharing the cache may have merged it already
            del self._files[path]
        self._files[merged] = keys
        self._batches_since_merge = [path for path in self._batches_since_merge if path not in files]
        logger.debug("Merged %d teacher-logit cache files into %s", len(files), merged)
        return merged
