"""Teacher labelling: a cross-encoder's raw logits for every pair of a dataset, cached by content (see cache.py)."""

from __future__ import annotations

import logging
import os

import datasets
import numpy as np
import pandas
import torch
from sentence_transformers import CrossEncoder
from tqdm.auto import tqdm

from st_dse.checks import int_at_least
from st_dse.data.pairs import as_dataset, check_pairs
from st_dse.fingerprint import model_fingerprint
from st_dse.teacher.cache import TeacherLogitCache, default_cache_dir, pair_key, shard_of

logger = logging.getLogger(__name__)
PROGRESS_BAR_MIN_PAIRS = 1000


def teacher_fingerprint(cross_encoder: CrossEncoder) -> str:
    """A hex digest of everything that decides the teacher's logits (:func:`st_dse.fingerprint.model_fingerprint`): a
    re-fine-tuned or reconfigured teacher gets a new one; the same teacher loaded again keeps it."""
    return model_fingerprint(cross_encoder)


def raw_logits(cross_encoder: CrossEncoder, pairs: list[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
    """The teacher's raw logits ``(n, k)``, no activation; a 2-logit (softmax) teacher gives ``l1 - l0``, the positive
    class's logit, which a one-output head can reproduce."""
    if not pairs:
        return np.zeros((0, 1 if cross_encoder.num_labels <= 2 else cross_encoder.num_labels), dtype=np.float32)
    logits = cross_encoder.predict(
        pairs, batch_size=batch_size, activation_fn=torch.nn.Identity(), apply_softmax=False, show_progress_bar=False
    )
    logits = np.asarray(logits, dtype=np.float32).reshape(len(pairs), -1)
    return logits[:, 1:2] - logits[:, 0:1] if logits.shape[1] == 2 else logits


def label_with_teacher(
    cross_encoder: CrossEncoder,
    dataset: datasets.Dataset | dict[str, list] | pandas.DataFrame,
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
    merge: bool = True,
) -> datasets.Dataset:
    """Add a column with the teacher's raw logits (a list of floats per row) to ``dataset``.

    Logits are cached by teacher and pair content (:class:`TeacherLogitCache`): a rerun labels only the missing pairs,
    to exactly the logits of an uninterrupted run. Shards split pairs by a hash of their text.

    Args:
        cross_encoder: The teacher, a fine-tuned :class:`~sentence_transformers.CrossEncoder`.
        dataset: Pairs in ``sentence1_column`` and ``sentence2_column`` (a Dataset, dict of columns or DataFrame);
            other columns are kept.
        output_column: The new column: one float per row for a binary (``l1 - l0``) or regression teacher, k for a
            k-way teacher.
        batch_size: Teacher batch size.
        cache_dir: Where logits are cached; defaults to :func:`default_cache_dir`.
        use_cache: Set False to neither read nor write the cache.
        chunk_size: Pairs labelled between two cache writes (default ``batch_size``).
        show_progress_bar: Defaults to showing one when logging is at INFO or below and there are at least
            :data:`PROGRESS_BAR_MIN_PAIRS` pairs to label (fewer take a second or two).
        shard_index, num_shards: Label only shard ``shard_index`` of ``num_shards``; only its rows are returned, in
            their original order.
        require_cached: Label nothing; raise a ValueError if any pair has no cached logits.
        merge: After a complete run, fold the cache's files into one (leave it False while other processes read it).
    """
    int_at_least("batch_size", batch_size)
    chunk_size = batch_size if chunk_size is None else int_at_least("chunk_size", chunk_size)
    if problem := _argument_problem(shard_index, num_shards, require_cached, use_cache):
        raise ValueError(problem)
    dataset = as_dataset(dataset, "label_with_teacher")
    if missing := [c for c in (sentence1_column, sentence2_column) if c not in dataset.column_names]:
        raise ValueError(f"The dataset has no column(s) {missing}; its columns are {dataset.column_names}.")
    sentences1, sentences2 = list(dataset[sentence1_column]), list(dataset[sentence2_column])
    check_pairs(sentences1, sentences2)
    if not sentences1:
        logger.warning("label_with_teacher got a dataset without rows: there is nothing to label.")
    keys = [pair_key(a, b) for a, b in zip(sentences1, sentences2)]
    if num_shards is not None:
        rows = [row for row, key in enumerate(keys) if shard_of(key, num_shards) == shard_index]
        dataset = dataset.select(rows)
        sentences1, sentences2, keys = ([values[row] for row in rows] for values in (sentences1, sentences2, keys))

    cache = (
        TeacherLogitCache(cache_dir or default_cache_dir(), teacher_fingerprint(cross_encoder)) if use_cache else None
    )
    known = {key: cache.get(key) for key in keys if key in cache} if cache is not None else {}
    todo = {key: (a, b) for key, a, b in zip(keys, sentences1, sentences2) if key not in known}
    shard = f" (shard {shard_index} of {num_shards})" if num_shards is not None else ""
    logger.info("Teacher labelling%s: %d pairs, %d to label", shard, len(keys), len(todo))
    if require_cached and todo:
        raise ValueError(
            f"{len(todo)} of {len(keys)} pairs{shard} have no cached logits for this teacher in {cache.directory}. "
            "Label them first (e.g. finish the missing shards with recipes/label_teacher.py --shard-index i "
            "--num-shards n), or copy the shards' cache folders into this one."
        )
    if show_progress_bar is None:
        show_progress_bar = logger.getEffectiveLevel() <= logging.INFO and len(todo) >= PROGRESS_BAR_MIN_PAIRS
    known.update(_label_missing(cross_encoder, todo, cache, batch_size, chunk_size, show_progress_bar))
    if cache is not None and merge:
        try:
            cache.merge()
        except OSError as error:  # e.g. a read-only shared cache that already held everything
            logger.warning("Could not merge the teacher-logit cache files in %s: %s", cache.directory, error)

    column = [known[key].tolist() for key in keys]
    if output_column in dataset.column_names:
        dataset = dataset.remove_columns(output_column)
    feature = None if column else datasets.Sequence(datasets.Value("float64"))  # an empty column has no type to infer
    return dataset.add_column(output_column, column, feature=feature)


def _label_missing(
    cross_encoder: CrossEncoder,
    todo: dict[bytes, tuple[str, str]],
    cache: TeacherLogitCache | None,
    batch_size: int,
    chunk_size: int,
    show_progress_bar: bool,
) -> dict[bytes, np.ndarray]:
    """The logits of ``todo``'s pairs, each chunk cached once scored. Pairs go longest first (as CrossEncoder.predict
    sorts), ties broken by key: a rerun forms the same remaining chunks as an uninterrupted run: identical logits."""
    known: dict[bytes, np.ndarray] = {}
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
    return known


def _argument_problem(shard_index, num_shards, require_cached: bool, use_cache: bool) -> str | None:
    if (shard_index is None) != (num_shards is None):
        return "Pass shard_index and num_shards together (or neither, to label every pair)."
    if num_shards is not None and (
        int_at_least("num_shards", num_shards, 0) < 1 or int_at_least("shard_index", shard_index, 0) >= num_shards
    ):
        return (
            f"shard_index must be in [0, num_shards - 1] with num_shards >= 1, got shard_index={shard_index}, "
            f"num_shards={num_shards}."
        )
    if require_cached and not use_cache:
        return "require_cached=True reads the cache; it cannot be combined with use_cache=False."
    return None
