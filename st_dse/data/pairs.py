"""Sentence pairs: the checks shared by labelling, training and scoring, and your own pairs read from a file or a
Hugging Face Hub dataset.

The readers return a :class:`datasets.Dataset` with ``sentence1`` and ``sentence2`` (str) and, when the source has a
label column, ``label``. A row without a gold label has label None (an empty cell, ``-``, null and NaN all count as
missing); ``pack_dse_labels`` turns it into NaN gold, which ``DSELoss`` leaves out, so the row is trained on the
teacher alone. Labels are integers when all are whole numbers, floats otherwise, and strings when any is a class name
(:func:`~st_dse.data.tasks.encode_labels` maps names to the teacher's ids). Columns: ``sentence1``/``sentence2``/
``label``, else the first recognised names (:data:`PAIR_COLUMN_ALIASES`, :data:`LABEL_COLUMN_CANDIDATES`); explicit
names always win.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from st_dse.data.tasks import parse_label

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
_PAIRS = (("sentence1", "sentence2"), *PAIR_COLUMN_ALIASES)
_OPTIONS = ("--sentence1-column", "--sentence2-column", "--label-column")
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
    if len(sentences1) != len(sentences2):
        raise ValueError(
            f"The two {what} lists must have the same length, got {len(sentences1)} and {len(sentences2)}."
        )
    for side, sentences in (("first", sentences1), ("second", sentences2)):
        for offset, sentence in enumerate(sentences):
            if (problem := _sentence_problem(sentence)) is not None:
                raise ValueError(f"Row {first_row + offset}: the {side} {what} {problem}")


def _sentence_problem(sentence: Any) -> str | None:
    if not isinstance(sentence, str):
        kind = type(sentence).__name__
        return f"is {kind} ({sentence!r}), expected a string. Drop or fill missing text before scoring."
    # Stops at the first visible character: one step for almost every real sentence.
    if not any(not char.isspace() and unicodedata.category(char) not in _INVISIBLE_CATEGORIES for char in sentence):
        shown = f" (it holds only whitespace, control or zero-width characters: {sentence!r})" if sentence else ""
        return f"is empty{shown}. Drop or fill empty text before scoring."
    if (surrogate := _LONE_SURROGATE.search(sentence)) is None:
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
            if frame:
                return datasets.Dataset.from_pandas(data, preserve_index=False)
            return datasets.Dataset.from_dict(dict(data))
        except Exception as error:  # noqa: BLE001 - pyarrow's errors on uneven or mixed-type columns have many types
            columns = {name: data[name].tolist() for name in data.columns} if frame else data
            problem = f"; this {'DataFrame' if frame else 'dict of columns'} could not be converted: "
            problem += _explain(error, columns)
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
    """The columns holding the two sentences and the label, ``(sentence1, sentence2, label_or_None, note)``:
    explicit names, else the recognised ones. ``note`` (logged once at INFO) says which recognised names were used
    instead of the defaults, None when none were. A column that cannot be found raises a ValueError (prefixed by
    ``source``) listing the columns found and the option to pass."""
    names, given = list(column_names), (sentence1_column, sentence2_column, label_column)
    first = sentence1_column or _pick_side(names, 0, taken=sentence2_column)
    second = sentence2_column or _pick_side(names, 1, taken=first)
    label = label_column or next((c for c in LABEL_COLUMN_CANDIDATES if c in names and c not in (first, second)), None)
    problems = []
    for side, (column, explicit, option) in enumerate(zip((first, second, label), given, _OPTIONS)):
        role = ("first sentence", "second sentence", "label")[side]
        if explicit is not None and explicit not in names:
            problems.append(f"there is no column {explicit!r} (given with {option})")
        elif column is None and side < 2:
            problems.append(f"no {role} column (looked for {', '.join(p[side] for p in _PAIRS)}; pass {option} NAME)")
    if first is not None and first == second:
        problems.append(f"the two sentence columns must differ, got {first!r} twice")
    if problems:
        raise ValueError(
            f"{source + ': ' if source else ''}{'; '.join(problems)}. Columns found: "
            f"{', '.join(map(repr, names)) or 'none'}. Name the columns with {', '.join(_OPTIONS)}."
        )
    mapped = [
        f"{column!r} as {default}"
        for column, explicit, default in zip((first, second, label), given, (*_PAIRS[0], "label"))
        if column is not None and explicit is None and column != default
    ]
    note = None
    if mapped:
        note = f"Using the recognised column(s) {', '.join(mapped)} (pass {', '.join(_OPTIONS)} to choose others)."
        logger.info(note)
    return first, second, label, note


def _pick_side(names: list[str], side: int, taken: str | None) -> str | None:
    # A pair the data has in full, else this side alone (the other side was named explicitly, or is missing).
    full = (pair[side] for pair in _PAIRS if pair[0] in names and pair[1] in names and pair[side] != taken)
    alone = (pair[side] for pair in _PAIRS if pair[side] in names and pair[side] != taken)
    return next(full, None) or next(alone, None)


def read_pair_file(
    path: str | Path,
    sentence1_column: str | None = None,
    sentence2_column: str | None = None,
    label_column: str | None = None,
) -> datasets.Dataset:
    """Read sentence pairs from a ``.csv``, ``.tsv``, ``.jsonl`` / ``.json`` or ``.parquet`` file, with datasets.

    CSV uses standard quoting; TSV is split on tabs only (quotes are text, as in GLUE); both need a header row and
    UTF-8, and every cell is read as text. A ``.json`` file may hold JSON lines or one array of objects. Columns are
    chosen by :func:`resolve_pair_columns`; other columns are dropped. Raises a FileNotFoundError when there is no
    file, and a ValueError for an unknown extension, an unreadable or malformed file, a missing column, or an empty
    sentence (the message names the file, the data row, counted from 1 after any header, and the column).
    """
    path = Path(path)
    builder, file_format = PAIR_FILE_FORMATS.get(path.suffix.lower()), path.suffix.lower()[1:]
    if builder is None:
        raise ValueError(f"{path}: unknown file type {path.suffix or '(no extension)'!r}; {EXPECTED_FORMATS}.")
    if not path.is_file():
        raise FileNotFoundError(f"No pair file at {path}.")
    try:
        options = _csv_options(path, file_format == "tsv") if builder == "csv" else {}
        table = (
            None if options is None else datasets.load_dataset(builder, data_files=str(path), split="train", **options)
        )
    except Exception as error:  # noqa: BLE001 - pandas' and pyarrow's parse errors have many types
        cause = error.__cause__ or error  # datasets wraps the parser's error
        problem = f"cannot be read as {file_format} ({type(cause).__name__}: {cause})"
        if isinstance(cause, UnicodeDecodeError):
            problem = f"not UTF-8 text ({cause}); re-save it as UTF-8"
    else:
        problem = None if table else "the file has no data rows"  # None, or an empty Dataset
    if problem is not None:
        raise ValueError(f"{path}: {problem}; {EXPECTED_FORMATS}.")
    columns = resolve_pair_columns(table.column_names, sentence1_column, sentence2_column, label_column, str(path))
    return pairs_dataset(str(path), table.to_dict(), *columns[:3])


def _csv_options(path: Path, tsv: bool) -> dict[str, Any] | None:
    """datasets' csv options for the file, every column read as text ("007" and "NA" stay what they are); None when
    the file has no data rows."""
    sep, quoting = ("\t", csv.QUOTE_NONE) if tsv else (",", csv.QUOTE_MINIMAL)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        names = [name.strip() for name in next(csv.reader(handle, delimiter=sep, quoting=quoting), [])]
        if not any(line.strip() for line in handle):  # datasets cannot load a file without data rows
            return None
    features = datasets.Features({name: datasets.Value("string") for name in names})
    return dict(sep=sep, quoting=quoting, column_names=names, skiprows=1, features=features, na_filter=False,
                encoding="utf-8-sig")  # fmt: skip


def load_hub_pairs(
    name: str,
    config: str | None = None,
    split: str = "train",
    sentence1_column: str | None = None,
    sentence2_column: str | None = None,
    label_column: str | None = None,
    *,
    label_names: Sequence[str] | None = None,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """One split of a Hub dataset, with :func:`datasets.load_dataset` and the column mapping of files.

    Class-label columns keep their ids, with -1 (unlabelled, e.g. GLUE test splits) as None. Given the teacher's
    ``label_names``, the dataset's ids are translated by class name into the teacher's (datasets and teachers often
    order the same classes differently). Offline or without network it raises :class:`HubUnreachableError` (a
    ConnectionError with a one-line message); a missing column or an empty sentence a ValueError.
    """
    try:
        dataset = datasets.load_dataset(name, config, split=split, **load_kwargs)
    except network_errors():
        raise HubUnreachableError() from None
    first, second, label, _ = resolve_pair_columns(
        dataset.column_names, sentence1_column, sentence2_column, label_column
    )
    table: dict[str, list] = {first: dataset[first], second: dataset[second]}
    if label is not None:
        table[label] = _hub_labels(dataset, label, label_names)
    return pairs_dataset(f"{name}{f' ({config})' if config else ''} {split}", table, first, second, label)


def _hub_labels(dataset: datasets.Dataset, column: str, label_names: Sequence[str] | None) -> list:
    labels, feature = list(dataset[column]), dataset.features[column]
    if not isinstance(feature, datasets.ClassLabel):
        return labels
    labels = [None if value is None or value < 0 else value for value in labels]
    theirs, ours = [name.lower() for name in feature.names], [name.lower() for name in label_names or ()]
    if ours and set(theirs) <= set(ours) and theirs != ours:
        logger.info("Mapped the dataset's classes %s to the teacher's ids %s by name.", feature.names, label_names)
        return [None if value is None else ours.index(theirs[value]) for value in labels]
    if ours and not set(theirs) <= set(ours):
        message = "The dataset's classes %s are not the teacher's %s; its class ids are used as they are."
        logger.warning(message, feature.names, list(label_names))
    return labels


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


def _parse_labels(source: str, raw_labels: Sequence, column: str) -> tuple[list, str]:
    """Labels as one Arrow type: int64 if all whole numbers, float64 if numbers, else strings; None where missing."""
    labels = []
    for row, raw in enumerate(raw_labels, start=1):
        where = f"{source}: data row {row}, column {column!r}: the label"
        try:
            value = parse_label(raw)
        except TypeError as error:
            raise ValueError(f"{where} is {error}.") from None
        if isinstance(value, (int, float)) and not abs(value) < 2**63:  # infinite, or beyond any label and int64
            raise ValueError(f"{where} {raw!r} is {'not finite' if abs(value) == math.inf else 'too large a number'}.")
        labels.append(value)
    present = [value for value in labels if value is not None]
    if any(isinstance(value, str) for value in present):
        as_text = [v if v is None else str(int(v) if isinstance(v, float) and v.is_integer() else v) for v in labels]
        return as_text, "string"
    if present and all(float(value).is_integer() for value in present):
        return [None if value is None else int(value) for value in labels], "int64"
    return [None if value is None else float(value) for value in labels], "float64"
