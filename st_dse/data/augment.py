"""Teacher-labelled augmentation: new sentence pairs built from a task's own training sentences.

A teacher's value to DSE is that it can score pairs nobody labelled. :func:`augment_pairs` builds such pairs from the
sentences of a training set; :func:`st_dse.label_with_teacher` then gives them teacher logits, and the student learns
from gold plus teacher on the original pairs and from the teacher alone on the new ones (their gold label is missing,
so DSELoss leaves them out of the gold loss). Three strategies, after Barkan et al. (2020) and AugSBERT:

* ``swap``: each pair in the other order, ``(b, a)``. It carries no gold label (entailment is not symmetric); the
  teacher says what the swapped pair is worth.
* ``shuffle``: random re-pairings, a first sentence from one pair with a second sentence from another: mostly
  unrelated pairs, which show the student the teacher's scale far from the decision boundary.
* ``neighbours``: each first sentence with its nearest second sentence of *another* pair under an embedding model
  (cosine): hard pairs, close in meaning or wording, where the teacher's judgement carries the most information.

Pairs that already exist in the dataset (in either column order for ``shuffle`` and ``neighbours``), and duplicates
among the new pairs, are dropped, so the result never relabels a gold pair.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import datasets
import numpy as np
from sentence_transformers import SentenceTransformer

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
    """New pairs made of ``dataset``'s sentences: about ``factor * len(dataset)``, shared between the strategies.

    Args:
        dataset: The training pairs. Only the two text columns are read.
        factor: How many new pairs per original pair, in total over all strategies (``swap`` yields at most one per
            pair; the other strategies make up the difference).
        strategies: Any of ``swap``, ``shuffle``, ``neighbours``.
        model: The embedding model for ``neighbours`` (e.g. the student's base model). Required for that strategy.
        seed: Seeds ``shuffle`` and the sampling of which pairs each strategy uses.
        batch_size: Encoding batch size for ``neighbours``.

    Returns:
        A dataset with columns ``sentence1``, ``sentence2`` and ``augmentation`` (the strategy that made each pair),
        without gold labels. Label it with :func:`st_dse.label_with_teacher`.

    Raises:
        ValueError: an unknown strategy, ``neighbours`` without a model, a negative or non-finite factor, missing text
            columns or bad sentences.
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
    missing = [c for c in (sentence1_column, sentence2_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset has no column(s) {missing}; its columns are {dataset.column_names}.")
    firsts, seconds = list(dataset[sentence1_column]), list(dataset[sentence2_column])
    check_pairs(firsts, seconds)

    target = round(factor * len(firsts))
    rows = _augment(firsts, seconds, target, strategies, model, np.random.default_rng(seed), batch_size)
    counts = {s: rows["augmentation"].count(s) for s in strategies}
    made = len(rows["sentence1"])
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
    distinct_firsts = list(dict.fromkeys(firsts))
    distinct_seconds = list(dict.fromkeys(seconds))
    u = model.encode(distinct_firsts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True)
    v = model.encode(distinct_seconds, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True)
    order = rng.permutation(len(distinct_firsts))
    ranked = []
    for start in range(0, len(order), 1024):
        rows = order[start : start + 1024]
        similarity = u[rows] @ v.T
        top = np.argsort(-similarity, axis=1)[:, : min(4, len(distinct_seconds))]
        ranked.append((rows, top))
    # Rank 0 for every first sentence before rank 1 for any: spreads the pairs over as many sentences as possible.
    for rank in range(min(4, len(distinct_seconds))):
        for rows, top in ranked:
            for row, candidates in zip(rows, top):
                yield distinct_firsts[row], distinct_seconds[candidates[rank]]


def with_augmented(
    train: datasets.Dataset,
    augmented: datasets.Dataset,
    label_column: str = "label",
    teacher_column: str = "teacher_logits",
) -> datasets.Dataset:
    """``train`` (gold and teacher logits) followed by ``augmented`` (teacher logits only, gold ``NaN``).

    The result has the text columns, a float ``label`` column (``NaN`` where no gold exists, which DSELoss leaves out
    of the gold loss) and the teacher logits: ready for :func:`st_dse.pack_dse_labels`. Training
    pairs without a label column get ``NaN`` gold as well.
    """
    columns = ["sentence1", "sentence2", label_column, teacher_column]
    if label_column not in train.column_names:  # pairs without gold labels: the teacher alone, as for the new ones
        train = train.add_column(label_column, [math.nan] * len(train))
    for name, dataset, needed in (
        ("train", train, columns),
        ("augmented", augmented, ["sentence1", "sentence2", teacher_column]),
    ):
        missing = [c for c in needed if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"The {name} dataset lacks the column(s) {missing}; it has {dataset.column_names}. Label both with "
                "st_dse.label_with_teacher first."
            )
    gold = train.select_columns(columns)
    gold = gold.cast_column(label_column, datasets.Value("float64"))
    extra = augmented.select_columns(["sentence1", "sentence2", teacher_column])
    extra = extra.add_column(label_column, [math.nan] * len(extra))
    extra = extra.cast(gold.features)
    return datasets.concatenate_datasets([gold, extra.select_columns(columns)])
