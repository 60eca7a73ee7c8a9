"""Packing gold labels and teacher logits into the one label column DSELoss reads."""

from __future__ import annotations

import math
from collections.abc import Sequence

import datasets


def pack_dse_labels(
    dataset: datasets.Dataset,
    gold_column: str | None = "label",
    teacher_column: str = "teacher_logits",
    text_columns: Sequence[str] = ("sentence1", "sentence2"),
) -> datasets.Dataset:
    """Keep the two text columns and add a ``label`` column ``[gold, *teacher_logits]``: what DSELoss takes.

    Rows whose gold label is missing (None, or ``gold_column=None`` for purely teacher-labelled data) get ``NaN``
    gold, which DSELoss leaves out of the gold loss.
    """
    missing = [column for column in [*text_columns, teacher_column] if column not in dataset.column_names]
    if gold_column is not None and gold_column not in dataset.column_names:
        missing.append(gold_column)
    if missing:
        raise ValueError(
            f"The dataset lacks the column(s) {missing}; it has {dataset.column_names}. "
            f"Add teacher logits with st_dse.label_with_teacher(...), or name the columns with gold_column=/"
            "teacher_column=/text_columns=."
        )

    def pack(batch: dict[str, list]) -> dict[str, list]:
        size = len(batch[teacher_column])
        golds = batch[gold_column] if gold_column is not None else [None] * size
        packed = []
        for gold, logits in zip(golds, batch[teacher_column]):
            gold_value = math.nan if gold is None else float(gold)
            packed.append([gold_value, *map(float, logits)])
        return {"label": packed}

    kept = [*text_columns, teacher_column, *([gold_column] if gold_column is not None else [])]
    consumed = [column for column in kept if column not in text_columns]
    packed = dataset.select_columns(kept).map(pack, batched=True, remove_columns=consumed, desc="Packing DSE labels")
    return packed.select_columns([*text_columns, "label"])
