"""Checks on sentence pairs shared by labelling, training and scoring."""

from __future__ import annotations

from collections.abc import Sequence


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
