"""Your own sentence pairs: read a file, map its columns, parse its labels, and describe the task from the teacher.

Every reader returns a :class:`datasets.Dataset` with ``sentence1`` and ``sentence2`` (str) and, when the source has
a label column, ``label``. A row without a gold label has label None (an empty cell, ``-``, null and NaN all count as
missing); ``pack_dse_labels`` turns it into NaN gold, which ``DSELoss`` leaves out, so the row is trained on the
teacher alone. Labels are integers when all are whole numbers, floats otherwise, and strings when any is a class name
(:func:`encode_labels` maps names to the teacher's ids). Columns: ``sentence1``/``sentence2``/``label``, else the
first recognised names (:data:`PAIR_COLUMN_ALIASES`, :data:`LABEL_COLUMN_CANDIDATES`); explicit names always win.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from st_dse.checks import one_of
from st_dse.data.tasks import PROBLEM_TYPES, TaskSpec, custom_task

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
#: File formats by extension, and the datasets builder that reads each.
PAIR_FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
EXPECTED_FORMATS = (
    "expected a .csv or .tsv file with a header row, a .jsonl/.json file of JSON objects (one per line), "
    "or a .parquet file"
)
HUB_UNREACHABLE_MESSAGE = "the Hugging Face Hub is unreachable: pass --data-dir DIR or --train-file FILE"
DEFAULT_PAIR_COLUMNS = ("sentence1", "sentence2")
_OPTIONS = ("--sentence1-column", "--sentence2-column", "--label-column")
_GENERIC_LABEL_NAME = re.compile(r"label_?\d+", re.IGNORECASE)


class HubUnreachableError(ConnectionError):
    """The Hugging Face Hub could not be reached (offline mode or no network); the message says what to do instead."""

    def __init__(self, message: str = HUB_UNREACHABLE_MESSAGE) -> None:
        super().__init__(message)


def network_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "the Hub cannot be reached" (offline mode, DNS failure, refused connection, timeout)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, LocalEntryNotFoundError]
    for module_name in ("httpx", "requests.exceptions"):
        try:
            module = __import__(module_name, fromlist=["_"])
        except ImportError:
            continue
        errors.extend(getattr(module, name) for name in ("TransportError", "ConnectionError") if hasattr(module, name))
    return tuple(errors)


def resolve_pair_columns(
    column_names: Sequence[str],
    sentence1_column: str | None = None,
    sentence2_column: str | None = None,
    label_column: str | None = None,
    source: str | None = None,
) -> tuple[str, str, str | None, str | None]:
    """The columns holding the two sentences and the label: explicit names, else the recognised ones.

    Returns:
        ``(sentence1, sentence2, label_or_None, note)``; ``note`` (logged once at INFO) says which recognised names
        were used instead of the defaults, None when none were.

    Raises:
        ValueError: a column cannot be found; the message (prefixed by ``source``) lists the columns found and the
            option to pass.
    """
    names, given = list(column_names), (sentence1_column, sentence2_column, label_column)
    first = sentence1_column or _pick_side(names, 0, taken=sentence2_column)
    second = sentence2_column or _pick_side(names, 1, taken=first)
    label = label_column or next((c for c in LABEL_COLUMN_CANDIDATES if c in names and c not in (first, second)), None)
    problems = []
    for role, column, explicit, option in zip(
        ("first sentence", "second sentence", "label"), (first, second, label), given, _OPTIONS
    ):
        if explicit is not None and explicit not in names:
            problems.append(f"there is no column {explicit!r} (given with {option})")
        elif column is None and role != "label":
            looked_for = [pair[role == "second sentence"] for pair in (DEFAULT_PAIR_COLUMNS, *PAIR_COLUMN_ALIASES)]
            problems.append(f"no {role} column (looked for {', '.join(looked_for)}; pass {option} NAME)")
    if first is not None and first == second:
        problems.append(f"the two sentence columns must differ, got {first!r} twice")
    if problems:
        raise ValueError(
            f"{source + ': ' if source else ''}{'; '.join(problems)}. Columns found: "
            f"{', '.join(map(repr, names)) or 'none'}. Name the columns with {', '.join(_OPTIONS)}."
        )
    defaults = (*DEFAULT_PAIR_COLUMNS, "label")
    mapped = [
        f"{column!r} as {default}"
        for column, explicit, default in zip((first, second, label), given, defaults)
        if column is not None and explicit is None and column != default
    ]
    note = f"Using the recognised column(s) {', '.join(mapped)} (pass {', '.join(_OPTIONS)} to choose others)."
    note = note if mapped else None
    if note:
        logger.info(note)
    return first, second, label, note


def _pick_side(names: list[str], side: int, taken: str | None) -> str | None:
    candidates = (DEFAULT_PAIR_COLUMNS, *PAIR_COLUMN_ALIASES)
    for pair in candidates:  # a pair the data has in full
        if pair[0] in names and pair[1] in names and pair[side] != taken:
            return pair[side]
    # else this side alone (the other side was named explicitly, or is missing)
    return next((pair[side] for pair in candidates if pair[side] in names and pair[side] != taken), None)


def read_pair_file(
    path: str | Path,
    sentence1_column: str | None = None,
    sentence2_column: str | None = None,
    label_column: str | None = None,
) -> datasets.Dataset:
    """Read sentence pairs from a ``.csv``, ``.tsv``, ``.jsonl`` / ``.json`` or ``.parquet`` file, with datasets.

    CSV uses standard quoting; TSV is split on tabs only (quotes are text, as in GLUE); both need a header row and
    UTF-8, and every cell is read as text. A ``.json`` file may hold JSON lines or one array of objects. Columns are
    chosen by :func:`resolve_pair_columns`; other columns are dropped.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        ValueError: an unknown extension, an unreadable or malformed file, a missing column, or an empty sentence
            (the message names the file, the data row, counted from 1 after any header, and the column).
    """
    path = Path(path)
    builder = PAIR_FILE_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"{path}: unknown file type {path.suffix or '(no extension)'!r}; {EXPECTED_FORMATS}.")
    if not path.is_file():
        raise FileNotFoundError(f"No pair file at {path}.")
    file_format = path.suffix.lower()[1:]
    try:
        options = _csv_options(path, file_format) if builder == "csv" else {}
        table = (
            None if options is None else datasets.load_dataset(builder, data_files=str(path), split="train", **options)
        )
    except Exception as error:  # noqa: BLE001 - pandas' and pyarrow's parse errors have many types
        cause = error.__cause__ or error  # datasets wraps the parser's error
        problem = f"cannot be read as {file_format} ({type(cause).__name__}: {cause})"
        problem = (
            f"not UTF-8 text ({cause}); re-save it as UTF-8" if isinstance(cause, UnicodeDecodeError) else problem
        )
    else:
        problem = None if table is not None and len(table) else "the file has no data rows"
    if problem is not None:
        raise ValueError(f"{path}: {problem}; {EXPECTED_FORMATS}.")
    columns = resolve_pair_columns(table.column_names, sentence1_column, sentence2_column, label_column, str(path))
    return pairs_dataset(str(path), table.to_dict(), *columns[:3])


def _csv_options(path: Path, file_format: str) -> dict[str, Any] | None:
    """datasets' csv options for the file, every column read as text ("007" and "NA" stay what they are); None when
    the file has no data rows."""
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if file_format == "tsv" else {}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle, **dialect), None)
        if header is None or not any(line.strip() for line in handle):
            return None
    names = [name.strip() for name in header]
    features = datasets.Features({name: datasets.Value("string") for name in names})
    sep, quoting = dialect.get("delimiter", ","), dialect.get("quoting", csv.QUOTE_MINIMAL)
    return dict(sep=sep, quoting=quoting, column_names=names, skiprows=1, features=features, na_filter=False,
                encoding="utf-8-sig")  # fmt: skip


def pairs_dataset(
    source: str, table: Mapping[str, Sequence], first: str, second: str, label: str | None
) -> datasets.Dataset:
    """The columns ``first``/``second`` (and ``label``) of ``table`` as ``sentence1``/``sentence2``/``label``."""
    columns = {"sentence1": list(table[first]), "sentence2": list(table[second])}
    for name, original in (("sentence1", first), ("sentence2", second)):
        for row, sentence in enumerate(columns[name], start=1):
            if not isinstance(sentence, str) or not sentence.strip():
                what = (
                    "empty"
                    if isinstance(sentence, str) or sentence is None
                    else f"{type(sentence).__name__}, not text"
                )
                raise ValueError(
                    f"{source}: data row {row}, column {original!r}: the sentence is {what} ({sentence!r}). "
                    "Drop or fill that row."
                )
    features = {"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string")}
    if label is not None:
        columns["label"], dtype = _parse_labels(source, table[label], label)
        features["label"] = datasets.Value(dtype)
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def parse_label(value: Any) -> int | float | str | None:
    """One raw label as None (missing), an int, a float or a stripped string (a class name)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if not isinstance(value, str):
        raise TypeError(f"a {type(value).__name__}, expected a number or a class name")
    text = value.strip()
    if text in ("", "-"):  # "-": SNLI's "no consensus"
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
        if isinstance(value, (int, float)) and abs(value) >= 2**63:  # beyond any label, and beyond int64
            raise ValueError(f"{source}: data row {row}, column {column!r}: the label {raw!r} is too large a number.")
        labels.append(value)
    present = [value for value in labels if value is not None]
    if any(isinstance(value, str) for value in present):
        as_text = [v if v is None else str(int(v) if isinstance(v, float) and v.is_integer() else v) for v in labels]
        return as_text, "string"
    if present and all(float(value).is_integer() for value in present):
        return [None if value is None else int(value) for value in labels], "int64"
    return [None if value is None else float(value) for value in labels], "float64"


def encode_labels(dataset: datasets.Dataset, task: TaskSpec, label_column: str = "label") -> datasets.Dataset:
    """Check every gold label against ``task`` and store it as the task needs it; None (no gold) stays None.

    Class names become ids through ``task.label_names`` (case-insensitive); numbers must be class ids (int64);
    regression labels must be numbers (float64). A dataset without ``label_column`` is returned unchanged.

    Raises:
        ValueError: an unknown class name or an out-of-range label; the message names the (1-based) row.
    """
    if label_column not in dataset.column_names:
        return dataset
    encoded = [_encode_label(value, task, row) for row, value in enumerate(dataset[label_column], start=1)]
    dtype = "float64" if task.is_regression else "int64"
    return dataset.remove_columns(label_column).add_column(label_column, encoded, feature=datasets.Value(dtype))


def _encode_label(raw: Any, task: TaskSpec, row: int) -> int | float | None:
    value = parse_label(raw)
    names = [name.lower() for name in task.label_names]
    num_classes = 2 if task.problem_type == "binary" else task.num_labels
    if value is None or (task.is_regression and not isinstance(value, str)):
        return None if value is None else float(value)
    if isinstance(value, str) and value.lower() in names and not task.is_regression:
        return names.index(value.lower())
    if not isinstance(value, str) and float(value).is_integer() and 0 <= value < num_classes:
        return int(value)
    if task.is_regression:
        problem = f"the label {value!r} is not a number; task {task.name!r} is a regression."
    elif isinstance(value, str):
        known = f"one of {', '.join(task.label_names)}" if names else "a class id (the teacher has no label names)"
        problem = f"unknown label {value!r}; expected {known}."
    else:
        problem = (
            f"the label {value!r} is not a class id of task {task.name!r} (0 to {num_classes - 1}). "
            "Graded scores need a regression task (problem_type='regression')."
        )
    raise ValueError(f"Row {row}: {problem}")


def task_from_teacher(
    cross_encoder: Any, labels: Sequence | None = None, problem_type: str | None = None, name: str = "custom"
) -> TaskSpec:
    """The pair task ``cross_encoder`` was trained for, from its number of logits (``config.num_labels``).

    * 1 logit: ``binary`` (class 1 when the logit is > 0), unless the gold ``labels`` are graded (fractions), the
      config says ``problem_type="regression"`` or ``problem_type="regression"`` is passed. Whole-number labels other
      than 0 and 1 (0/1/2, -1) are refused: pass ``problem_type`` to say whether they are scores.
    * 2 logits: ``binary`` with one output (``label_with_teacher`` reduces them to ``l1 - l0``);
      ``problem_type="multiclass"`` keeps both.
    * k >= 3 logits: ``multiclass`` with k outputs.

    Label names come from the config's ``id2label`` (generic names such as ``LABEL_0`` count as none).

    Raises:
        ValueError: an unknown ``problem_type``, or one the teacher's number of logits cannot give.
    """
    config = cross_encoder.config
    num_logits = int(config.num_labels)
    if problem_type is not None:
        one_of("problem_type", problem_type, PROBLEM_TYPES)
        allowed = {"regression": num_logits == 1, "binary": num_logits in (1, 2), "multiclass": num_logits >= 2}
        if not allowed[problem_type]:
            raise ValueError(f"A teacher with {num_logits} logit(s) cannot be used for a {problem_type} task.")
        kind = problem_type
    elif num_logits == 1:
        says_regression = getattr(config, "problem_type", None) == "regression"
        kind = "regression" if says_regression or _graded(labels) else "binary"
        if not says_regression and _whole_numbers_beyond_binary(labels):  # 0/1/2: classes or integer scores?
            raise ValueError(
                "The gold labels are whole numbers other than 0 and 1, and the teacher has one logit: pass "
                "--problem-type regression if they are graded scores, or a teacher with one logit per class."
            )
    else:
        kind = "binary" if num_logits == 2 else "multiclass"
    if num_logits == 2 and kind == "multiclass":
        logger.warning(
            "A 2-way multiclass task keeps both teacher logits; label_with_teacher reduces a 2-logit teacher to one."
        )
    id2label = getattr(config, "id2label", None) or {}
    names = [id2label.get(index, id2label.get(str(index))) for index in range(num_logits)]
    if kind == "regression" or any(not isinstance(n, str) or _GENERIC_LABEL_NAME.fullmatch(n) for n in names):
        names = []
    teacher = getattr(config, "name_or_path", "") or "a CrossEncoder"
    return custom_task(kind, num_logits, names, f"your own pairs, {kind}, labelled by the teacher {teacher}", name)


def _graded(labels: Sequence | None) -> bool:
    """True when a numeric label is neither 0 nor 1 (names and missing labels are ignored)."""
    for raw in labels if labels is not None else ():
        try:
            value = parse_label(raw)
        except TypeError:
            continue
        if isinstance(value, (int, float)) and value not in (0, 1):
            return True
    return False


def _whole_numbers_beyond_binary(labels: Sequence | None) -> bool:
    """True when every numeric label is whole and some are neither 0 nor 1 (classes, or integer scores?)."""
    values = [value for value in map(parse_label, labels or ()) if isinstance(value, (int, float))]
    return bool(values) and all(float(value).is_integer() for value in values) and _graded(values)


def task_from_labels(labels: Sequence, problem_type: str | None = None, name: str = "custom") -> TaskSpec:
    """The task of your own gold labels when there is no teacher yet (to fine-tune one on them).

    Whole numbers 0/1 give a binary task, 0 to k-1 (k >= 3) a k-way task, fractions a regression; ``problem_type``
    overrides (integer scores such as 0-5 need ``"regression"``). Class names need a teacher to order them.
    """
    present = [value for value in map(parse_label, labels) if value is not None]
    if not present:
        raise ValueError(
            "The training pairs have no gold labels and no teacher was given: pass --teacher (a fine-tuned "
            "CrossEncoder) to distil unlabelled pairs, or add a label column to fine-tune a teacher first."
        )
    if any(isinstance(value, str) for value in present):
        raise ValueError(
            "The gold labels are class names, but without --teacher there is no class order to map them to: "
            "pass --teacher, or write the labels as class ids 0..k-1."
        )
    kind = problem_type
    if kind is None:
        whole = all(float(value).is_integer() and value >= 0 for value in present)
        kind = "regression" if not whole else ("binary" if max(present) <= 1 else "multiclass")
    num_labels = int(max(present)) + 1 if kind == "multiclass" else 1
    return custom_task(kind, num_labels, (), f"your own pairs, {kind}", name)
