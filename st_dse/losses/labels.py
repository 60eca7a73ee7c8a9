"""Packing gold labels and teacher logits into the one label column DSELoss reads."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import datasets
import numpy as np

from st_dse.data import check_pairs
from st_dse.losses.dse_loss import MAX_LABEL_MAGNITUDE, is_number


def pack_dse_labels(
    dataset: datasets.Dataset,
    gold_column: str | None = "label",
    teacher_column: str = "teacher_logits",
    text_columns: Sequence[str] = ("sentence1", "sentence2"),
) -> datasets.Dataset:
    """Keep the two text columns and add a ``label`` column ``[gold, *teacher_logits]``: what DSELoss takes.

    Rows whose gold label is missing (None, or ``gold_column=None`` for purely teacher-labelled data) get ``NaN``
    gold, which DSELoss leaves out of the gold loss.

    Raises:
        ValueError: a missing column, no rows, a bad sentence, teacher logits that are missing, not finite or of
            another length than the first row's, or a gold label that is not a finite number, naming the row.
    """
    kept = [*text_columns, teacher_column, *([gold_column] if gold_column is not None else [])]
    if missing := [column for column in kept if column not in dataset.column_names]:
        raise ValueError(
            f"The dataset lacks the column(s) {missing}; it has {dataset.column_names}. "
            f"Add teacher logits with st_dse.label_with_teacher(...), or name the columns with gold_column=/"
            "teacher_column=/text_columns=."
        )
    if len(dataset) == 0:
        raise ValueError(
            "The dataset has no rows: there is nothing to train on. Check the data files and any filtering or "
            "sampling that came before (e.g. a max-samples option of 0)."
        )
    widths: set[int] = set()  # the number of teacher logits per row, taken from the first row

    def pack(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        check_pairs(batch[text_columns[0]], batch[text_columns[1]], first_row=indices[0])
        golds = batch[gold_column] if gold_column is not None else [None] * len(indices)
        packed = []
        for row, gold, logits in zip(indices, golds, batch[teacher_column]):
            packed.append([_gold_value(row, gold, gold_column), *_teacher_values(row, logits, teacher_column, widths)])
        return {"label": packed}

    packed = dataset.select_columns(kept).map(
        pack, batched=True, with_indices=True, remove_columns=kept[len(text_columns) :], desc="Packing DSE labels"
    )
    return packed.select_columns([*text_columns, "label"])


def check_gold_labels(gold: Sequence, problem_type: str, num_labels: int) -> None:
    """Refuse gold labels that do not fit the task, naming the first bad row; None or NaN (no gold label) passes.

    Binary labels must be 0 or 1, multiclass labels class ids in ``[0, num_labels - 1]``, regression scores finite.
    """
    values = np.array([math.nan if value is None else value for value in gold], dtype=np.float64)
    classes = {"binary": 2, "multiclass": num_labels}.get(problem_type)
    if classes is None:
        bad = ~np.isnan(values) & ~(np.abs(values) <= MAX_LABEL_MAGNITUDE)
    else:
        bad = ~np.isnan(values) & ~np.isin(values, np.arange(classes))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        expected = {"binary": "0 or 1", "multiclass": f"class ids in [0, {num_labels - 1}]"}.get(
            problem_type, f"finite numbers, not infinite, within +-{MAX_LABEL_MAGNITUDE:g}"
        )
        raise ValueError(
            f"Row {row}: gold label {values[row]}. {problem_type.capitalize()} gold labels must be {expected} (None "
            "or NaN for a pair without one)."
        )


def _gold_value(row: int, gold: object, gold_column: str | None) -> float:
    if gold is None:
        return math.nan
    if isinstance(gold, numbers.Real) and not math.isinf(gold):
        return float(gold)
    raise ValueError(
        f"Row {row}: the gold label ({gold_column!r}) is {type(gold).__name__} ({gold!r}), expected a number (a "
        "class id, 0/1 or a finite score) or None for a pair without one. Map label names to class ids first."
    )


def _teacher_values(row: int, logits: object, teacher_column: str, widths: set[int]) -> list[float]:
    problem = None
    if not isinstance(logits, (list, tuple)) or not logits:
        problem = f"are {logits!r}, expected a non-empty list of numbers. Label every pair with"
    else:
        bad = [x for x in logits if not (is_number(x) and abs(x) <= MAX_LABEL_MAGNITUDE)]
        if bad:
            problem = f"{logits!r} hold {bad[0]!r}, expected finite numbers within +-{MAX_LABEL_MAGNITUDE:g}. "
            problem += "Label the pair again with"
    if problem:
        raise ValueError(
            f"Row {row}: the teacher logits ({teacher_column!r}) {problem} st_dse.label_with_teacher(...)."
        )
    values = [float(logit) for logit in logits]
    widths.add(len(values))
    if len(widths) > 1:
        raise ValueError(
            f"Row {row}: {len(values)} teacher logits, but other rows have {sorted(widths - {len(values)})}: every "
            "row needs the teacher's num_labels logits. Label all pairs with the same teacher."
        )
    return values
