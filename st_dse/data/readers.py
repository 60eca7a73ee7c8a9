"""Reading a registered task's splits: local GLUE/SentEval files or the Hugging Face Hub.

Where the data comes from (``load_task(task, split, data_dir=None, path=None)``):

* ``path`` given: that one file, read with the column layout of ``split``.
* ``data_dir`` given (or, when it is None, the environment variable ``ST_DSE_DATA_DIR``): local files. ``data_dir`` may
  be the data root (holding ``glue/``, ``stsbenchmark/``, ``senteval/``), the GLUE folder itself, or a folder holding
  the split's file directly (``train.tsv``, ``dev.tsv``).
* neither: the Hugging Face Hub, ``datasets.load_dataset("nyu-mll/glue", config)``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
from pathlib import Path

import datasets

from st_dse.data.pair_files import HubUnreachableError, network_errors
from st_dse.data.tasks import (
    DATA_DIR_ENV,
    QQP_SUBSET_SEED,
    QQP_SUBSET_VALIDATION_FRACTION,
    LocalFile,
    TaskSpec,
    require_task_spec,
)

logger = logging.getLogger(__name__)


def _resolve_split(spec: TaskSpec, split: str) -> str:
    # "dev", "dev_matched", ... are the GLUE file names for what the hub calls "validation", "validation_matched", ...
    canonical = "validation" + split[3:] if split.startswith("dev") else split
    if canonical not in spec.splits:
        raise ValueError(f"Task {spec.name!r} has no split {split!r}. Available splits: {', '.join(spec.splits)}.")
    return canonical


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` as a Path, else the ``ST_DSE_DATA_DIR`` environment variable, else None (= use the hub)."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    return None if data_dir is None else Path(data_dir)


def load_task(
    task: TaskSpec,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    path: str | os.PathLike | None = None,
    max_samples: int | None = None,
) -> datasets.Dataset:
    """Load one split of a task as a Dataset with columns ``sentence1``, ``sentence2``, ``label``, in file order.

    Args:
        task: the task, as :func:`st_dse.data.get_task` returns it for a name.
        split: "train", "validation" ("dev" also works), "test" where the task has labelled test data, and for MNLI
            "validation_matched" / "validation_mismatched".
        data_dir: the folder holding the local data: the data root (``glue/``, ``stsbenchmark/``, ``senteval/``), the
            GLUE folder itself, or a folder holding the split's file directly. None: ``$ST_DSE_DATA_DIR`` if set,
            else the Hugging Face hub.
        path: read exactly this file, with the column layout of ``split`` (e.g. an LM-BFF k-shot GLUE TSV).
        max_samples: keep only the first ``max_samples`` rows (of the split, for qqp-subset).

    Raises:
        FileNotFoundError: the split's file is not under ``data_dir``; the message names the file and its source.
        ValueError: unknown task or split, or a malformed row (the message names the file and line).
    """
    spec = require_task_spec(task)
    split = _resolve_split(spec, split)
    local_file = spec.local_files[split]
    if path is not None:
        file_path = Path(path)
        if not file_path.is_file():
            raise FileNotFoundError(f"{spec.name} {split}: no file at {file_path} (given as path=).")
    else:
        root = resolve_data_dir(data_dir)
        if root is None:
            return _load_from_hub(spec, split, max_samples)
        file_path = _find_local_file(spec, split, local_file, root)

    rows = _read_pairs(file_path, spec, local_file, max_samples=None if local_file.heldout_part else max_samples)
    if local_file.heldout_part is not None:
        rows = _heldout_part(rows, local_file.heldout_part)
        rows = rows if max_samples is None else rows[:max_samples]
    sentences1, sentences2, labels = zip(*rows) if rows else ((), (), ())
    features = datasets.Features(
        {
            "sentence1": datasets.Value("string"),
            "sentence2": datasets.Value("string"),
            "label": datasets.Value("float64" if spec.is_regression else "int64"),
        }
    )
    return datasets.Dataset.from_dict(
        {"sentence1": list(sentences1), "sentence2": list(sentences2), "label": list(labels)}, features=features
    )


def _find_local_file(spec: TaskSpec, split: str, local_file: LocalFile, data_dir: Path) -> Path:
    relative = Path(local_file.relative_path)
    candidates = [data_dir / relative]
    if relative.parts[0] == "glue":
        candidates.append(data_dir / Path(*relative.parts[1:]))  # data_dir is the GLUE folder itself
    candidates.append(data_dir.parent / relative)  # data_dir is the GLUE folder, the file is beside it
    candidates.append(data_dir / relative.name)  # data_dir holds the split's file directly (a k-shot folder)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = "\n  ".join(str(candidate) for candidate in candidates)
    raise FileNotFoundError(
        f"{spec.name} {split}: expected the file {local_file.relative_path} under the data folder {data_dir}, "
        f"but none of these exist:\n  {tried}\nThis file comes from {local_file.source or spec.data_source}."
    )


def _load_from_hub(spec: TaskSpec, split: str, max_samples: int | None) -> datasets.Dataset:
    if split not in spec.hub_splits:
        source = spec.local_files[split].source or spec.data_source
        raise ValueError(f"{spec.name} {split} cannot be downloaded from the hub; it is read from {source}.")
    # Real users run this; it needs network access to the Hugging Face hub.
    try:
        dataset = datasets.load_dataset(spec.hub_dataset, spec.hub_config, split=split)
    except network_errors():
        raise HubUnreachableError() from None
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return standardize_hub_dataset(dataset, spec)


def standardize_hub_dataset(dataset: datasets.Dataset, task: TaskSpec) -> datasets.Dataset:
    """Rename a hub dataset's text columns to ``sentence1``/``sentence2`` and keep only them and ``label``."""
    spec = require_task_spec(task)
    text1, text2 = spec.hub_text_columns
    dataset = dataset.select_columns([text1, text2, "label"])
    renames = {old: new for old, new in [(text1, "sentence1"), (text2, "sentence2")] if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    dataset = dataset.cast_column("label", datasets.Value("float64" if spec.is_regression else "int64"))
    if not spec.is_regression and len(dataset) and min(dataset["label"]) < 0:
        # GLUE's hub test splits carry label -1: there is nothing to train or evaluate on.
        raise ValueError(f"{spec.name}: the hub data has unlabelled rows (label -1); use a labelled split.")
    return dataset


def _read_pairs(
    file_path: Path, spec: TaskSpec, local_file: LocalFile, max_samples: int | None
) -> list[tuple[str, str, int | float]]:
    try:
        return _read_pairs_with_encoding(file_path, spec, local_file, max_samples, encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        # Some research files are latin-1; every byte sequence is valid latin-1, so this second read cannot fail.
        logger.warning("%s is not valid UTF-8 (%s); reading it as latin-1 instead.", file_path, error)
        return _read_pairs_with_encoding(file_path, spec, local_file, max_samples, encoding="latin-1")


def _read_pairs_with_encoding(
    file_path: Path, spec: TaskSpec, local_file: LocalFile, max_samples: int | None, encoding: str
) -> list[tuple[str, str, int | float]]:
    pairs: list[tuple[str, str, int | float]] = []
    repaired_lines: list[int] = []
    with open(file_path, encoding=encoding, newline="") as handle:
        # QUOTE_NONE: GLUE text contains bare quote characters that are part of the sentence.
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if local_file.has_header:
            header = [name.strip().lstrip("\ufeff") for name in next(reader, [])]
            columns = [_header_index(header, name, file_path) for name in (local_file.sentence1, local_file.sentence2)]
            columns.append(_header_index(header, local_file.label, file_path))
            column_counts = local_file.column_counts or (len(header),)
        else:
            columns = [local_file.sentence1, local_file.sentence2, local_file.label]
            column_counts = local_file.column_counts
        for row in reader:
            if max_samples is not None and len(pairs) >= max_samples:
                break
            if not row:
                continue  # blank line (e.g. at the end of a file)
            if (
                len(row) not in column_counts
                and local_file.repair_space_separated_label
                and _repair_space_separated_label(row, column_counts)
            ):
                repaired_lines.append(reader.line_num)
            if len(row) not in column_counts:
                raise ValueError(
                    f"{file_path}, line {reader.line_num}: {len(row)} tab-separated columns, expected "
                    f"{' or '.join(map(str, column_counts))} ({spec.name})."
                )
            sentence1, sentence2, raw_label = (row[column] for column in columns)
            label = _parse_label(raw_label, spec, file_path, reader.line_num)
            pairs.append((sentence1, sentence2, label))
    if repaired_lines:
        logger.warning(
            "%s: repaired %d row(s) whose label was separated by a space instead of a tab (lines %s).",
            file_path,
            len(repaired_lines),
            ", ".join(map(str, repaired_lines[:10])),
        )
    return pairs


def _header_index(header: list[str], column: str | int, file_path: Path) -> int:
    if isinstance(column, int):
        return column
    if column not in header:
        raise ValueError(f"{file_path}: the header has no column {column!r} (found: {', '.join(header)}).")
    return header.index(column)


def _repair_space_separated_label(row: list[str], column_counts: tuple[int, ...]) -> bool:
    # The QQP subset's first line is "id qid1 qid2 question1 question2<space>0": the label lost its tab. We repair it
    # (rather than skip it) because the row is otherwise fine: id 133273 of GLUE QQP train, label 0. Only this exact
    # shape (one column short, last field ending in " 0" or " 1") is repaired, and only in files flagged for it.
    head, _, last = row[-1].rpartition(" ") if row else ("", "", "")
    if len(row) + 1 in column_counts and head and last in {"0", "1"}:
        row[-1:] = [head, last]
        return True
    return False


def _parse_label(raw_label: str, spec: TaskSpec, file_path: Path, line_number: int) -> int | float:
    value = raw_label.strip()
    if spec.is_regression:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise ValueError(f"{file_path}, line {line_number}: score {raw_label!r} is not a number ({spec.name}).")
        return score
    # Label names are matched case-insensitively (SICK writes ENTAILMENT); GLUE's MRPC/QQP files hold the class ids.
    names = [label_name.lower() for label_name in spec.label_names]
    if value.lower() in names:
        return names.index(value.lower())
    if value.isdigit() and int(value) < len(names):
        return int(value)
    raise ValueError(
        f"{file_path}, line {line_number}: label {raw_label!r} is not one of {', '.join(spec.label_names)} "
        f"(or their ids 0-{len(names) - 1}) for task {spec.name}."
    )


def _heldout_part(rows: list, part: str) -> list:
    """The seeded qqp-subset split: row i goes to validation when sha256("<seed>:<i>") is among the smallest 10%."""
    num_heldout = round(len(rows) * QQP_SUBSET_VALIDATION_FRACTION)
    hash_order = sorted(
        range(len(rows)), key=lambda index: hashlib.sha256(f"{QQP_SUBSET_SEED}:{index}".encode()).hexdigest()
    )
    heldout = set(hash_order[:num_heldout])
    keep_heldout = part == "validation"
    return [row for index, row in enumerate(rows) if (index in heldout) == keep_heldout]
