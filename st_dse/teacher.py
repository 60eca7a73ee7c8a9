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
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from sentence_transformers import CrossEncoder
from tqdm.auto import tqdm

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


def teacher_fingerprint(cross_encoder: CrossEncoder) -> str:
    """A hex digest that changes whenever the teacher's outputs could: its weights, label count and max length.

    Hashing the weights (not the model name) means a further fine-tuned teacher saved under the same path never
    reuses the logits of the earlier one.
    """
    digest = hashlib.sha256()
    settings = {
        "class": type(cross_encoder).__name__,
        "num_labels": cross_encoder.num_labels,
        "max_length": getattr(cross_encoder, "max_length", None),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in cross_encoder.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


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
            _fsync_directory(self.directory)
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


def _fsync_directory(directory: Path) -> None:
    # Makes a rename durable on POSIX file systems; not possible (nor needed) on Windows.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def raw_logits(cross_encoder: CrossEncoder, pairs: list[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
    """The teacher's raw logits ``(n, k)``: no sigmoid or softmax. A 2-logit teacher gives ``l1 - l0`` as one logit.

    The 2-to-1 reduction matches the original DSE code: for a binary softmax teacher, ``l1 - l0`` is the logit of the
    positive class, which a one-output student head with BCE can reproduce exactly.
    """
    if not pairs:
        return np.zeros((0, 1 if cross_encoder.num_labels <= 2 else cross_encoder.num_labels), dtype=np.float32)
    logits = cross_encoder.predict(
        pairs,
        batch_size=batch_size,
        activation_fn=torch.nn.Identity(),
        apply_softmax=False,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    logits = np.asarray(logits, dtype=np.float32).reshape(len(pairs), -1)
    if logits.shape[1] == 2:
        logits = logits[:, 1:2] - logits[:, 0:1]
    return logits


def check_pairs(sentences1: Sequence, sentences2: Sequence, what: str = "sentence") -> None:
    """Raise a ValueError naming the first row whose sentence is None, not a string, or empty."""
    if len(sentences1) != len(sentences2):
        raise ValueError(
            f"The two {what} lists must have the same length, got {len(sentences1)} and {len(sentences2)}."
        )
    for side, sentences in (("first", sentences1), ("second", sentences2)):
        for row, sentence in enumerate(sentences):
            if not isinstance(sentence, str):
                raise ValueError(
                    f"Row {row}: the {side} {what} is {type(sentence).__name__} ({sentence!r}), expected a string. "
                    "Drop or fill missing text before scoring."
                )
            if not sentence.strip():
                raise ValueError(f"Row {row}: the {side} {what} is empty. Drop or fill empty text before scoring.")


def label_with_teacher(
    cross_encoder: CrossEncoder,
    dataset: datasets.Dataset,
    sentence1_column: str = "sentence1",
    sentence2_column: str = "sentence2",
    output_column: str = "teacher_logits",
    batch_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    chunk_size: int | None = None,
    show_progress_bar: bool | None = None,
    shard_index: int | None = None,
    num_shards: int | None = None,
    require_cached: bool = False,
) -> datasets.Dataset:
    """Add a column with the teacher's raw logits (a list of floats per row) to ``dataset``.

    Logits are cached on disk (see :class:`TeacherLogitCache`), so an interrupted call, rerun with the same teacher
    and cache folder, labels only the pairs that are missing, and gives exactly the logits of an uninterrupted run.

    To split a large dataset across processes or machines, run one call per shard with ``shard_index=i`` and
    ``num_shards=n`` (``recipes/label_teacher.py`` does this from the command line). Pairs are assigned to shards by a
    hash of their text, so every process agrees on the split. With one shared cache folder (or the shards' cache
    folders copied into one), a final call without shard arguments finds everything cached and labels nothing.

    Args:
        cross_encoder: The teacher, a fine-tuned :class:`~sentence_transformers.CrossEncoder`.
        dataset: Pairs in ``sentence1_column`` and ``sentence2_column``; other columns are kept.
        output_column: Name of the new column. Each row holds ``num_labels`` floats: one for a binary teacher (2-logit
            teachers are reduced to ``l1 - l0``) or a regression teacher, k for a k-way teacher.
        batch_size: Teacher batch size.
        cache_dir: Where logits are cached; defaults to :func:`default_cache_dir`.
        use_cache: Set False to neither read nor write the cache.
        chunk_size: Pairs labelled between two cache writes; an interruption loses at most the chunk in flight.
            Defaults to ``batch_size``: one teacher batch.
        show_progress_bar: Defaults to showing one when logging is at INFO or below.
        shard_index, num_shards: Label only shard ``shard_index`` of ``num_shards``; the returned dataset then holds
            only that shard's rows, in their original order.
        require_cached: Label nothing; raise a ValueError if any pair has no cached logits (e.g. a shard that has not
            finished). Use it to check that sharded labelling is complete.

    Raises:
        ValueError: a missing column, a sentence that is empty, None or not a string, bad shard arguments, a teacher
            that produced NaN or infinite logits (that batch is not cached), or missing logits with
            ``require_cached``.
    """
    chunk_size = batch_size if chunk_size is None else chunk_size
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    _check_shard_arguments(shard_index, num_shards)
    if require_cached and not use_cache:
        raise ValueError("require_cached=True reads the cache; it cannot be combined with use_cache=False.")
    missing = [c for c in (sentence1_column, sentence2_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset has no column(s) {missing}; its columns are {dataset.column_names}.")
    sentences1, sentences2 = list(dataset[sentence1_column]), list(dataset[sentence2_column])
    check_pairs(sentences1, sentences2)
    keys = [pair_key(a, b) for a, b in zip(sentences1, sentences2)]
    if num_shards is not None:
        rows = [row for row, key in enumerate(keys) if shard_of(key, num_shards) == shard_index]
        dataset = dataset.select(rows)
        sentences1, sentences2, keys = ([values[row] for row in rows] for values in (sentences1, sentences2, keys))

    fingerprint = teacher_fingerprint(cross_encoder)
    cache = TeacherLogitCache(cache_dir or default_cache_dir(), fingerprint) if use_cache else None
    known: dict[bytes, np.ndarray] = {}
    # Distinct uncached pairs, labelled longest first (characters, as CrossEncoder.predict sorts) with the pair key
    # breaking ties. Sorting across the whole to-do list, not only inside each chunk, keeps one-batch chunks about as
    # little padded as one big predict call. The order is total and cached chunks are a prefix of it, so a rerun after
    # an interruption forms exactly the chunks the uninterrupted run would have formed for the rest: identical logits.
    todo: dict[bytes, tuple[str, str]] = {}
    for key, a, b in zip(keys, sentences1, sentences2):
        if cache is not None and key in cache:
            known[key] = cache.get(key)
        else:
            todo[key] = (a, b)
    shard = f" (shard {shard_index} of {num_shards})" if num_shards is not None else ""
    logger.info(
        "Teacher labelling%s: %d pairs, %d cached, %d to label", shard, len(keys), len(keys) - len(todo), len(todo)
    )
    if require_cached and todo:
        raise ValueError(
            f"{len(todo)} of {len(keys)} pairs{shard} have no cached logits for this teacher in {cache.directory}. "
            "Label them first (e.g. finish the missing shards with recipes/label_teacher.py --shard-index i "
            "--num-shards n), or copy the shards' cache folders into this one."
        )

    if show_progress_bar is None:
        show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
    todo_keys = sorted(todo, key=lambda key: (-(len(todo[key][0]) + len(todo[key][1])), key))
    with tqdm(total=len(todo_keys), desc="Teacher labelling", unit="pair", disable=not show_progress_bar) as bar:
        for start in range(0, len(todo_keys), chunk_size):
            chunk_keys = todo_keys[start : start + chunk_size]
            logits = raw_logits(cross_encoder, [todo[key] for key in chunk_keys], batch_size=batch_size)
            if not np.isfinite(logits).all():
                raise ValueError(
                    "The teacher produced NaN or infinite logits; check the teacher's weights (a diverged fine-tune?) "
                    f"and its dtype. Nothing from this chunk was cached ({start} pairs labelled before it are)."
                )
            if cache is not None:
                cache.add(chunk_keys, logits)
            known.update(zip(chunk_keys, logits))
            bar.update(len(chunk_keys))
    if cache is not None:
        # A complete run: fold the per-batch files (and earlier merged files) into one, so loading stays fast.
        try:
            cache.merge()
        except OSError as error:  # e.g. a read-only shared cache that already held everything
            logger.warning("Could not merge the teacher-logit cache files in %s: %s", cache.directory, error)

    column = [known[key].tolist() for key in keys]
    if output_column in dataset.column_names:
        dataset = dataset.remove_columns(output_column)
    return dataset.add_column(output_column, column)


def _check_shard_arguments(shard_index: int | None, num_shards: int | None) -> None:
    if (shard_index is None) != (num_shards is None):
        raise ValueError("Pass shard_index and num_shards together (or neither, to label every pair).")
    if num_shards is None:
        return
    for name, value in (("shard_index", shard_index), ("num_shards", num_shards)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}.")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(
            f"shard_index must be in [0, num_shards - 1] with num_shards >= 1, got shard_index={shard_index}, "
            f"num_shards={num_shards}."
        )
