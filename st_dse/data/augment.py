"""Teacher-labelled augmentation: new sentence pairs built from a task's own training sentences.

A teacher can score pairs nobody labelled. :func:`augment_pairs` builds such pairs (after Barkan et al. 2020 and
AugSBERT); :func:`st_dse.label_with_teacher` gives them teacher logits, and the student learns from the teacher alone
on them (their gold is missing, so DSELoss leaves them out of the gold loss). Strategies:

* ``swap``: each pair in the other order (no gold: entailment is not symmetric).
* ``shuffle``: random re-pairings, mostly unrelated pairs that show the teacher's scale far from the boundary.
* ``neighbours``: each first sentence with the nearest second sentence of *another* pair under an embedding model
  (cosine): hard pairs, where the teacher's judgement carries the most information.

Pairs already in the dataset (in either order for ``shuffle`` and ``neighbours``) and repeats are dropped, so a gold
pair is never relabelled.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import datasets
import numpy as np
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import semantic_search

from st_dse.data.pairs import check_pairs

logger = logging.getLogger(__name__)

STRATEGIES = ("swap", "shuffle", "neighbours")


def augment_pairs(
    dataset: datasets.Dataset,
    factor: float = 1.0,
    strategies: Sequence[str] = STRATEGIES,
    model: SentenceTransformer | None = None,
    sentence1_column: str = "sentence1",
    sentence2_column: str = "sentence2",
    seed: int = 42,
    batch_size: int = 64,
) -> datasets.Dataset:
    """About ``factor * len(dataset)`` new pairs made of ``dataset``'s sentences, shared between the ``strategies``
    (``swap`` yields at most one per pair; the others make up the difference).

    ``model`` (e.g. the student's base model, encoding in batches of ``batch_size``) is needed for ``neighbours``;
    ``seed`` seeds ``shuffle`` and which pairs each strategy uses. Only the two text columns are read.

    Returns:
        A dataset with columns ``sentence1``, ``sentence2`` and ``augmentation`` (the strategy that made each pair),
        without gold labels. Label it with :func:`st_dse.label_with_teacher`.

    Raises:
        ValueError: an unknown strategy, ``neighbours`` without a model, a negative or non-finite factor, or bad
            sentences.
    """
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"Unknown augmentation strategies {unknown or strategies}; choose from {list(STRATEGIES)}.")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 0:
        raise ValueError(f"factor must be a finite number >= 0 (new pairs per original pair), got {factor!r}.")
    if "neighbours" in strategies and model is None:
        raise ValueError(
            "The 'neighbours' strategy needs an embedding model (model=SentenceTransformer(...)), e.g. the student's "
            "base model; or leave 'neighbours' out of strategies."
        )
    firsts, seconds = list(dataset[sentence1_column]), list(dataset[sentence2_column])
    check_pairs(firsts, seconds)
    target = round(factor * len(firsts))
    rows = _augment(firsts, seconds, target, strategies, model, np.random.default_rng(seed), batch_size)
    made = len(rows["sentence1"])
    counts = {s: rows["augmentation"].count(s) for s in strategies}
    logger.info("Augmentation: %d new pairs from %d (%s)", made, len(firsts), counts)
    if made < target:
        message = (
            "Augmentation made %d of the %d pairs asked for: the dataset has too few distinct sentences for more."
        )
        logger.warning(message, made, target)
    return datasets.Dataset.from_dict(rows)


def _augment(firsts, seconds, target, strategies, model, rng, batch_size) -> dict[str, list[str]]:
    size, existing, seen = len(firsts), set(zip(firsts, seconds)), set()
    rows: dict[str, list[str]] = {"sentence1": [], "sentence2": [], "augmentation": []}

    def add(first: str, second: str, strategy: str) -> bool:
        # New pairs only: never a gold pair (in either order, except for swaps, which are that order reversed).
        pair = (first, second)
        if first == second or pair in existing or pair in seen or (strategy != "swap" and pair[::-1] in existing):
            return False
        seen.add(pair)
        for column, value in zip(rows, (first, second, strategy)):
            rows[column].append(value)
        return True

    # Share the target between strategies; swap cannot give more than one pair per original pair.
    others = [s for s in strategies if s != "swap"]
    quotas = {"swap": min(size, round(target / len(strategies)) if others else target)} if "swap" in strategies else {}
    left = target - quotas.get("swap", 0)
    quotas.update({s: left // len(others) + (k < left % len(others)) for k, s in enumerate(others)})
    for row in rng.permutation(size)[: quotas["swap"]] if quotas.get("swap") else ():
        add(seconds[row], firsts[row], "swap")
    made, attempts = 0, 0
    while made < quotas.get("shuffle", 0) and attempts < 20 * quotas["shuffle"] + 100:
        i, j = rng.integers(size, size=2)
        attempts += 1
        made += add(firsts[i], seconds[j], "shuffle") if i != j else 0
    if quotas.get("neighbours"):
        made = 0
        for first, second in _nearest_pairs(model, firsts, seconds, rng, batch_size):
            if made >= quotas["neighbours"]:
                break
            made += add(first, second, "neighbours")
    return rows


def _nearest_pairs(model, firsts, seconds, rng, batch_size):
    """(first, nearest second of another pair) for each distinct first sentence, in random order, best ranks first."""
    distinct_firsts, distinct_seconds = list(dict.fromkeys(firsts)), list(dict.fromkeys(seconds))
    u, v = (
        model.encode(sentences, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
        for sentences in (distinct_firsts, distinct_seconds)
    )
    order = rng.permutation(len(distinct_firsts))
    hits = semantic_search(u[order], v, query_chunk_size=1024, top_k=4)
    # Rank 0 for every first sentence before rank 1 for any: spreads the pairs over as many sentences as possible.
    for rank in range(min(4, len(distinct_seconds))):
        for row, candidates in zip(order, hits):
            yield distinct_firsts[row], distinct_seconds[candidates[rank]["corpus_id"]]


def with_augmented(
    train: datasets.Dataset,
    augmented: datasets.Dataset,
    label_column: str = "label",
    teacher_column: str = "teacher_logits",
) -> datasets.Dataset:
    """``train`` (gold and teacher logits) followed by ``augmented`` (teacher logits only), ready for
    :func:`st_dse.pack_dse_labels`: the text columns, the teacher logits and a float ``label`` column, ``NaN`` where
    no gold exists (the augmented pairs, and training pairs without a label column), which DSELoss leaves out."""
    columns = ["sentence1", "sentence2", label_column, teacher_column]
    if label_column not in train.column_names:  # pairs without gold labels: the teacher alone, as for the new ones
        train = train.add_column(label_column, [math.nan] * len(train))
    for name, dataset, needed in (("train", train, columns), ("augmented", augmented, columns[:2] + columns[3:])):
        if missing := [c for c in needed if c not in dataset.column_names]:
            raise ValueError(
                f"The {name} dataset lacks the column(s) {missing}; it has {dataset.column_names}. Label both with "
                "st_dse.label_with_teacher first."
            )
    gold = train.select_columns(columns).cast_column(label_column, datasets.Value("float64"))
    extra = augmented.select_columns(columns[:2] + columns[3:])
    extra = extra.add_column(label_column, [math.nan] * len(extra)).cast(gold.features)
    return datasets.concatenate_datasets([gold, extra.select_columns(columns)])
