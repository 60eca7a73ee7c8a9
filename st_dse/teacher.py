"""Teacher labelling: a cross-encoder's raw logits for every pair of a dataset, cached on disk by content.

The cache is keyed by the teacher's identity (a hash of its weights and settings) and by each pair's own text, so a
rerun reuses finished work, and a reordered, filtered or extended dataset can never receive another pair's logits
(the original DSE code aligned logits to examples by row order alone).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
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
_SHARD_PREFIX = "logits-"


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
    return hashlib.blake2b(text.encode("utf-8"), digest_size=KEY_BYTES).digest()


class TeacherLogitCache:
    """Logits of one teacher, stored as checksummed shards in ``cache_dir/<fingerprint>/``.

    Each shard is written to a temporary file and moved into place with an atomic rename, so an interrupted run
    leaves only whole shards behind. A shard that fails to load or whose checksum does not match is set aside (renamed
    ``*.corrupt``) and its pairs are labelled again.
    """

    def __init__(self, cache_dir: str | os.PathLike, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.directory = Path(cache_dir) / fingerprint[:32]
        self.directory.mkdir(parents=True, exist_ok=True)
        self._logits: dict[bytes, np.ndarray] = {}
        self._load()

    def __len__(self) -> int:
        return len(self._logits)

    def __contains__(self, key: bytes) -> bool:
        return key in self._logits

    def get(self, key: bytes) -> np.ndarray:
        return self._logits[key]

    @staticmethod
    def _checksum(keys: np.ndarray, logits: np.ndarray) -> str:
        return hashlib.sha256(keys.tobytes() + logits.tobytes()).hexdigest()

    def _load(self) -> None:
        for path in sorted(self.directory.glob(f"{_SHARD_PREFIX}*.npz")):
            try:
                with np.load(path, allow_pickle=False) as shard:
                    keys, logits = shard["keys"], shard["logits"]
                    checksum, fingerprint = str(shard["checksum"]), str(shard["fingerprint"])
                if fingerprint != self.fingerprint:
                    raise ValueError("written by another teacher")
                if self._checksum(keys, logits) != checksum:
                    raise ValueError("checksum mismatch")
                if keys.ndim != 2 or keys.shape[1] != KEY_BYTES or len(keys) != len(logits):
                    raise ValueError("malformed arrays")
            except Exception as error:
                logger.warning(
                    "Ignoring damaged teacher-logit cache file %s (%s); its pairs will be relabelled.", path, error
                )
                os.replace(path, path.with_suffix(".corrupt"))
                continue
            for key, row in zip(keys, logits):
                self._logits[key.tobytes()] = row

    def add(self, keys: Sequence[bytes], logits: np.ndarray) -> None:
        """Store a batch of logits durably, then make it visible to :meth:`get`."""
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES)
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                np.savez(
                    handle,
                    keys=key_array,
                    logits=logits,
                    checksum=np.array(self._checksum(key_array, logits)),
                    fingerprint=np.array(self.fingerprint),
                )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.directory / f"{_SHARD_PREFIX}{uuid.uuid4().hex}.npz")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        for key, row in zip(keys, logits):
            self._logits[key] = row


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
    chunk_size: int = 512,
    show_progress_bar: bool | None = None,
) -> datasets.Dataset:
    """Add a column with the teacher's raw logits (a list of floats per row) to ``dataset``.

    Args:
        cross_encoder: The teacher, a fine-tuned :class:`~sentence_transformers.CrossEncoder`.
        dataset: Pairs in ``sentence1_column`` and ``sentence2_column``; other columns are kept.
        output_column: Name of the new column. Each row holds ``num_labels`` floats: one for a binary teacher (2-logit
            teachers are reduced to ``l1 - l0``) or a regression teacher, k for a k-way teacher.
        batch_size: Teacher batch size.
        cache_dir: Where logits are cached; defaults to :func:`default_cache_dir`.
        use_cache: Set False to neither read nor write the cache.
        chunk_size: Pairs labelled between two cache writes; an interruption loses at most one chunk.
        show_progress_bar: Defaults to showing one when logging is at INFO or below.
    """
    missing = [c for c in (sentence1_column, sentence2_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset has no column(s) {missing}; its columns are {dataset.column_names}.")
    sentences1, sentences2 = list(dataset[sentence1_column]), list(dataset[sentence2_column])
    check_pairs(sentences1, sentences2)
    keys = [pair_key(a, b) for a, b in zip(sentences1, sentences2)]

    fingerprint = teacher_fingerprint(cross_encoder)
    cache = TeacherLogitCache(cache_dir or default_cache_dir(), fingerprint) if use_cache else None
    known: dict[bytes, np.ndarray] = {}
    todo: dict[bytes, tuple[str, str]] = {}
    for key, a, b in zip(keys, sentences1, sentences2):
        if cache is not None and key in cache:
            known[key] = cache.get(key)
        else:
            todo[key] = (a, b)
    logger.info("Teacher labelling: %d pairs, %d cached, %d to label", len(keys), len(keys) - len(todo), len(todo))

    if show_progress_bar is None:
        show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
    todo_keys = list(todo)
    with tqdm(total=len(todo_keys), desc="Teacher labelling", unit="pair", disable=not show_progress_bar) as bar:
        for start in range(0, len(todo_keys), chunk_size):
            chunk_keys = todo_keys[start : start + chunk_size]
            logits = raw_logits(cross_encoder, [todo[key] for key in chunk_keys], batch_size=batch_size)
            if not np.isfinite(logits).all():
                raise ValueError(
                    "The teacher produced NaN or infinite logits; check the teacher's weights (a diverged fine-tune?) "
                    "and its dtype. Nothing from this chunk was cached."
                )
            if cache is not None:
                cache.add(chunk_keys, logits)
            known.update(zip(chunk_keys, logits))
            bar.update(len(chunk_keys))

    column = [known[key].tolist() for key in keys]
    if output_column in dataset.column_names:
        dataset = dataset.remove_columns(output_column)
    return dataset.add_column(output_column, column)
