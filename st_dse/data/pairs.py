"""Checks on sentence pairs shared by labelling, training and scoring."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

# Half of a UTF-16 surrogate pair on its own is not a character and cannot be encoded as UTF-8 (which tokenizers and
# the teacher cache need); it comes from bytes decoded with errors="surrogateescape" or a broken JSON "\ud83d".
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters that show nothing: controls (NUL, ...) and format characters (zero-width space and joiners, BOM, ...).
_INVISIBLE_CATEGORIES = ("Cc", "Cf")


def check_pairs(sentences1: Sequence, sentences2: Sequence, what: str = "sentence", first_row: int = 0) -> None:
    """Raise a ValueError naming the first row whose sentence is None, not a string, empty, or not valid Unicode.

    A sentence is empty when nothing in it is visible (only whitespace, control or zero-width characters).
    ``first_row`` is the row number of the first pair, for checks made batch by batch.
    """
    problem = None
    if len(sentences1) != len(sentences2):
        problem = f"The two {what} lists must have the same length, got {len(sentences1)} and {len(sentences2)}."
    for side, sentences in (("first", sentences1), ("second", sentences2)):
        for offset, sentence in enumerate(sentences):
            if problem is not None:
                break
            problem = _sentence_problem(sentence)
            if problem is not None:
                problem = f"Row {first_row + offset}: the {side} {what} {problem}"
    if problem is not None:
        raise ValueError(problem)


def _sentence_problem(sentence: Any) -> str | None:
    if not isinstance(sentence, str):
        kind = type(sentence).__name__
        return f"is {kind} ({sentence!r}), expected a string. Drop or fill missing text before scoring."
    # Stops at the first visible character: one step for almost every real sentence.
    if not any(not char.isspace() and unicodedata.category(char) not in _INVISIBLE_CATEGORIES for char in sentence):
        shown = f" (it holds only whitespace, control or zero-width characters: {sentence!r})" if sentence else ""
        return f"is empty{shown}. Drop or fill empty text before scoring."
    surrogate = _LONE_SURROGATE.search(sentence)
    if surrogate is None:
        return None
    start = surrogate.start()
    return (
        f"holds a lone surrogate {surrogate.group()!r} at character {start} "
        f"({sentence[max(0, start - 20) : start + 20]!r}), which is not valid Unicode text and cannot be encoded as "
        "UTF-8. It usually comes from bytes decoded with errors='surrogateescape' or a broken '\\ud8..' escape; fix "
        "the text (e.g. text.encode('utf-8', 'replace').decode('utf-8')) or drop the row."
    )


def as_dataset(data: Any, function: str) -> datasets.Dataset:
    """``data`` as a :class:`datasets.Dataset`: a Dataset as is, a dict of columns or a pandas DataFrame converted.

    Raises a ValueError saying what to pass for anything else (a DatasetDict, a list of pairs, ...).
    """
    if isinstance(data, datasets.Dataset):
        return data
    import pandas  # a dependency of datasets

    expected = (
        f"{function} takes a datasets.Dataset (or a dict of columns, or a pandas DataFrame) with one row per pair"
    )
    if isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        problem = f", got a {type(data).__name__} of splits {list(data)}: pass one split, e.g. "
        problem += f"dataset[{next(iter(data), 'train')!r}]."
    elif isinstance(data, (pandas.DataFrame, Mapping)):
        frame = isinstance(data, pandas.DataFrame)
        try:
            return (
                datasets.Dataset.from_pandas(data, preserve_index=False)
                if frame
                else datasets.Dataset.from_dict(dict(data))
            )
        except Exception as error:  # noqa: BLE001 - pyarrow's errors on uneven or mixed-type columns have many types
            columns = {name: data[name].tolist() for name in data.columns} if frame else data
            what = "DataFrame" if frame else "dict of columns"
            problem = f"; this {what} could not be converted: {_explain(error, columns)}"
    else:
        problem = f", got {type(data).__name__}. Build one with datasets.Dataset.from_dict({{'sentence1': [...], "
        problem += "'sentence2': [...]})."
    raise ValueError(expected + problem)


def _explain(error: Exception, columns: Mapping[str, Any]) -> str:
    """The conversion error, with the column and row of the first lone surrogate (which Arrow cannot store)."""
    for name, values in columns.items():
        for row, value in enumerate(values if isinstance(values, Sequence) and not isinstance(values, str) else []):
            if isinstance(value, str) and _LONE_SURROGATE.search(value):
                return f"column {name!r}, row {row}: {value!r} holds a lone surrogate, not valid Unicode ({error})"
    return str(error)
