"""Your own sentence pairs and your own CrossEncoder teacher.

Read pairs from a file (:func:`read_pair_file`) or from a Hugging Face Hub dataset (:func:`load_hub_pairs`), describe
the task from the teacher's config (:func:`task_from_teacher`), turn class names into ids (:func:`encode_labels`) and,
after training, compare the student with its teacher (:func:`agreement_report`, :func:`format_report`).

Every loader returns a :class:`datasets.Dataset` with the columns ``sentence1`` and ``sentence2`` (str) and, when the
source has a label column, ``label``. **A row without a gold label has label None** (an Arrow null): st_dse's
``pack_dse_labels`` turns None into NaN gold, which ``DSELoss`` leaves out of the gold loss, so such rows are trained
on the teacher's logits alone. An empty cell, ``-`` (SNLI's "no consensus"), null and NaN all count as missing.

The ``label`` column holds integers (class ids) when every label is a whole number, floats (graded scores)
otherwise, and strings when any label is a name (e.g. ``entailment``); :func:`encode_labels` maps names to the
teacher's class ids and checks every label against the task.

Column names: ``sentence1``/``sentence2``/``label`` by default; common other names are recognised (see
:data:`PAIR_COLUMN_ALIASES` and :data:`LABEL_COLUMN_CANDIDATES`), and explicit column names always win.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from st_dse.data.tasks import TaskSpec

logger = logging.getLogger(__name__)

#: Recognised (first sentence, second sentence) column names, tried in this order after ``sentence1``/``sentence2``.
PAIR_COLUMN_ALIASES: tuple[tuple[str, str], ...] = (
    ("premise", "hypothesis"),
    ("question1", "question2"),
    ("query", "document"),
    ("text1", "text2"),
    ("anchor", "positive"),
    ("sentence_A", "sentence_B"),
    ("sentence_a", "sentence_b"),
)
#: Recognised label column names, tried in this order.
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = ("label", "labels", "score", "is_duplicate", "gold_label")
#: File formats by extension (lower case).
PAIR_FILE_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
}
EXPECTED_FORMATS = (
    "expected a .csv or .tsv file with a header row, a .jsonl/.json file of JSON objects (one per line), "
    "or a .parquet file"
)
HUB_UNREACHABLE_MESSAGE = "the Hugging Face Hub is unreachable: pass --data-dir DIR or --train-file FILE"
PROBLEM_TYPES = ("binary", "multiclass", "regression")

DEFAULT_PAIR_COLUMNS = ("sentence1", "sentence2")
_OPTIONS = ("--sentence1-column", "--sentence2-column", "--label-column")
_MISSING_LABEL_STRINGS = frozenset({"", "-"})


class HubUnreachableError(ConnectionError):
    """The Hugging Face Hub could not be reached (offline mode or no network); the message says what to do instead."""

    def __init__(self, message: str = HUB_UNREACHABLE_MESSAGE) -> None:
        super().__init__(message)


# ---------------------------------------------------------------------------------------------------------------
# Column mapping


def resolve_pair_columns(
    column_names: Sequence[str],
    sentence1_column: str | None = None,
    sentence2_column: str | None = None,
    label_column: str | None = None,
) -> tuple[str, str, str | None, str | None]:
    """Decide which columns hold the two sentences and the label.

    Explicit names win. Otherwise ``sentence1``/``sentence2`` are used, else the first pair of
    :data:`PAIR_COLUMN_ALIASES` that the data has (e.g. ``premise``/``hypothesis``), and the label is the first of
    :data:`LABEL_COLUMN_CANDIDATES` present (None when there is none: the data is unlabelled).

    Returns:
        ``(sentence1, sentence2, label_or_None, note)``. ``note`` says which recognised names were used instead of
        the defaults (None when none were); it has already been logged once at INFO level.

    Raises:
        ValueError: a column cannot be found; the message lists the columns found and the option to pass.
    """
    names = list(column_names)
    first = sentence1_column or _pick_side(names, 0, taken=sentence2_column)
    second = sentence2_column or _pick_side(names, 1, taken=first)
    label = label_column or next((c for c in LABEL_COLUMN_CANDIDATES if c in names and c not in (first, second)), None)
    problems = _column_problems(names, (first, second, label), (sentence1_column, sentence2_column, label_column))
    if problems:
        raise ValueError(
            f"{'; '.join(problems)}. Columns found: {', '.join(map(repr, names)) or 'none'}. "
            f"Name the columns with {', '.join(_OPTIONS)}."
        )
    if first == second:
        raise ValueError(f"The two sentence columns must differ, got {first!r} twice.")
    note = _mapping_note((first, second, label), (sentence1_column, sentence2_column, label_column))
    if note:
        logger.info(note)
    return first, second, label, note


def _pick_side(names: list[str], side: int, taken: str | None) -> str | None:
    candidates = (DEFAULT_PAIR_COLUMNS, *PAIR_COLUMN_ALIASES)
    for pair in candidates:  # a pair the data has in full
        if pair[0] in names and pair[1] in names and pair[side] != taken:
            return pair[side]
    for pair in candidates:  # else this side alone (the other side was named explicitly, or is missing)
        if pair[side] in names and pair[side] != taken:
            return pair[side]
    return None


def _column_problems(names: list[str], chosen: Sequence[str | None], given: Sequence[str | None]) -> list[str]:
    problems = []
    for role, column, explicit, option in zip(("first sentence", "second sentence", "label"), chosen, given, _OPTIONS):
        if explicit is not None and explicit not in names:
            problems.append(f"there is no column {explicit!r} (given with {option})")
        elif column is None and role != "label":
            side = 0 if role == "first sentence" else 1
            looked_for = [pair[side] for pair in (DEFAULT_PAIR_COLUMNS, *PAIR_COLUMN_ALIASES)]
            problems.append(f"no {role} column (looked for {', '.join(looked_for)}; pass {option} NAME)")
    return problems


def _mapping_note(chosen: Sequence[str | None], given: Sequence[str | None]) -> str | None:
    defaults = (*DEFAULT_PAIR_COLUMNS, "label")
    mapped = [
        f"{column!r} as {default}"
        for column, explicit, default in zip(chosen, given, defaults)
        if column is not None and explicit is None and column != default
    ]
    if not mapped:
        return None
    return f"Using the recognised column(s) {', '.join(mapped)} (pass {', '.join(_OPTIONS)} to choose others)."


# ---------------------------------------------------------------------------------------------------------------
# Reading files


def read_pair_file(
    path: str | Path,
    sentence1_column: str | None = None,
    sentence2_column: str | None = None,
    label_column: str | None = None,
) -> datasets.Dataset:
    """Read sentence pairs from a ``.csv``, ``.tsv``, ``.jsonl`` / ``.json`` (JSON lines) or ``.parquet`` file.

    CSV files use standard quoting; TSV files are split on tabs only (quotes are part of the text, as in GLUE). Both
    need a header row and are read as UTF-8. A ``.json`` file may also hold one JSON array of objects. Columns are
    chosen by :func:`resolve_pair_columns`; other columns are dropped.

    Returns:
        A Dataset with ``sentence1``, ``sentence2`` and, when the file has a label column, ``label`` (None where a
        row has no label; see the module docstring for the label types).

    Raises:
        FileNotFoundError: there is no file at ``path``.
        ValueError: an unknown extension, an unreadable or malformed file, a missing column, or an empty sentence
            (the message names the file, the data row, counted from 1 after any header, and the column).
    """
    path = Path(path)
    file_format = PAIR_FILE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise ValueError(f"{path}: unknown file type {path.suffix or '(no extension)'!r}; {EXPECTED_FORMATS}.")
    if not path.is_file():
        raise FileNotFoundError(f"No pair file at {path}.")
    table = _read_table(path, file_format)
    if not table or not len(next(iter(table.values()))):
        raise ValueError(f"{path}: the file has no data rows.")
    columns = resolve_pair_columns(list(table), sentence1_column, sentence2_column, label_column)
    return pairs_dataset(str(path), table, *columns[:3])


def _read_table(path: Path, file_format: str) -> dict[str, list]:
    readers = {"csv": _read_delimited, "tsv": _read_delimited, "jsonl": _read_json, "json": _read_json}
    readers["parquet"] = _read_parquet
    try:
        return readers[file_format](path, file_format)
    except _PairFileError:
        raise
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error}); re-save it as UTF-8. {EXPECTED_FORMATS}.") from None
    except Exception as error:  # a garbled file: csv.Error, pyarrow errors, ...
        raise ValueError(
            f"{path}: cannot be read as {file_format} ({type(error).__name__}: {error}); {EXPECTED_FORMATS}."
        ) from None


class _PairFileError(ValueError):
    """A malformed file, with a message that already names the file and the line."""


def _read_delimited(path: Path, file_format: str) -> dict[str, list]:
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # long documents are fine
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if file_format == "tsv" else {}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, strict=True, **options)
        header = next(reader, None)
        if header is None:
            raise _PairFileError(f"{path}: the file is empty; {EXPECTED_FORMATS}.")
        header = [name.strip() for name in header]
        table: dict[str, list] = {name: [] for name in header}
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise _PairFileError(
                    f"{path}, line {reader.line_num}: {len(row)} {file_format.upper()} fields, but the header has "
                    f"{len(header)} ({', '.join(header)})."
                )
            for name, value in zip(header, row):
                table[name].append(value)
    return table


def _read_json(path: Path, file_format: str) -> dict[str, list]:
    text = path.read_text(encoding="utf-8-sig")
    if file_format == "json" and text.lstrip().startswith("["):  # one JSON array of objects
        records = [(f"item {index + 1}", record) for index, record in enumerate(json.loads(text))]
    else:
        records = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((f"line {line_number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise _PairFileError(f"{path}, line {line_number}: not valid JSON ({error.msg}).") from None
    columns = list(dict.fromkeys(key for _, record in records if isinstance(record, dict) for key in record))
    table: dict[str, list] = {name: [] for name in columns}
    for where, record in records:
        if not isinstance(record, dict):
            raise _PairFileError(f"{path}, {where}: expected a JSON object, got {type(record).__name__}.")
        for name in columns:
            table[name].append(record.get(name))
    return table


def _read_parquet(path: Path, file_format: str) -> dict[str, list]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


def pairs_dataset(
    source: str, table: Mapping[str, Sequence], first: str, second: str, label: str | None
) -> datasets.Dataset:
    columns = {"sentence1": list(table[first]), "sentence2": list(table[second])}
    for name, original in (("sentence1", first), ("sentence2", second)):
        _check_sentences(source, columns[name], original)
    features = {"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string")}
    if label is not None:
        columns["label"], dtype = _parse_labels(source, table[label], label)
        features["label"] = datasets.Value(dtype)
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _check_sentences(source: str, sentences: Sequence, column: str) -> None:
    for row, sentence in enumerate(sentences, start=1):
        if not isinstance(sentence, str) or not sentence.strip():
            what = "empty" if isinstance(sentence, str) or sentence is None else f"{type(sentence).__name__}, not text"
            raise ValueError(
                f"{source}: data row {row}, column {column!r}: the sentence is {what} ({sentence!r}). "
                "Drop or fill that row."
            )


# ---------------------------------------------------------------------------------------------------------------
# Labels


def parse_label(value: Any) -> int | float | str | None:
    """One raw label as None (missing), an int, a float or a stripped string (a class name)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if not isinstance(value, str):
        raise TypeError(f"a {type(value).__name__}, expected a number or a class name")
    text = value.strip()
    if text in _MISSING_LABEL_STRINGS:
        return None
    for number_type in (int, float):
        try:
            return parse_label(number_type(text))
        except ValueError:
            pass
    return text


def _parse_labels(source: str, raw_labels: Sequence, column: str) -> tuple[list, str]:
    """Labels as one Arrow type: int64 if all whole numbers, float64 if numbers, else strings; None where missing."""
    labels = []
    for row, raw in enumerate(raw_labels, start=1):
        try:
            value = parse_label(raw)
        except TypeError as error:
            raise ValueError(f"{source}: data row {row}, column {column!r}: the label is {error}.") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{source}: data row {row}, column {column!r}: the label {raw!r} is not finite.")
        labels.append(value)
    present = [value for value in labels if value is not None]
    if any(isinstance(value, str) for value in present):
        return [None if value is None else _label_text(value) for value in labels], "string"
    if present and all(float(value).is_integer() for value in present):
        return [None if value is None else int(value) for value in labels], "int64"
    return [None if value is None else float(value) for value in labels], "float64"


def _label_text(value: int | float | str) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def encode_labels(dataset: datasets.Dataset, task: TaskSpec, label_column: str = "label") -> datasets.Dataset:
    """Check every gold label against ``task`` and store it as the task needs it; None (no gold) stays None.

    Classification: class names become ids through ``task.label_names`` (case-insensitive); numbers must be class ids
    (0 or 1 for a binary task, 0 to k-1 for a k-way task) and are stored as int64. Regression: numbers, stored as
    float64. A dataset without ``label_column`` is returned unchanged.

    Raises:
        ValueError: an unknown class name or an out-of-range label; the message names the (1-based) row.
    """
    if label_column not in dataset.column_names:
        return dataset
    encoded = [_encode_label(value, task, row) for row, value in enumerate(dataset[label_column], start=1)]
    dtype = "float64" if task.is_regression else "int64"
    dataset = dataset.remove_columns(label_column)
    return dataset.add_column(label_column, encoded, feature=datasets.Value(dtype))


def _encode_label(raw: Any, task: TaskSpec, row: int) -> int | float | None:
    value = parse_label(raw)
    if value is None:
        return None
    if task.is_regression:
        if isinstance(value, str):
            raise ValueError(f"Row {row}: the label {value!r} is not a number; task {task.name!r} is a regression.")
        return float(value)
    if isinstance(value, str):
        names = [name.lower() for name in task.label_names]
        if value.lower() not in names:
            known = f"one of {', '.join(task.label_names)}" if names else "a class id (the teacher has no label names)"
            raise ValueError(f"Row {row}: unknown label {value!r}; expected {known}.")
        return names.index(value.lower())
    num_classes = 2 if task.problem_type == "binary" else task.num_labels
    if not float(value).is_integer() or not 0 <= value < num_classes:
        raise ValueError(
            f"Row {row}: the label {value!r} is not a class id of task {task.name!r} (0 to {num_classes - 1}). "
            "Graded scores need a regression task (problem_type='regression')."
        )
    return int(value)


def network_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "the Hub cannot be reached" (offline mode, DNS failure, refused connection, timeout)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError

        errors.append(LocalEntryNotFoundError)
    except ImportError:
        pass
    for module_name in ("httpx", "httpx2", "requests.exceptions"):
        try:
            module = __import__(module_name, fromlist=["_"])
        except ImportError:
            continue
        errors.extend(getattr(module, name) for name in ("TransportError", "ConnectionError") if hasattr(module, name))
    return tuple(errors)
