"""The registered benchmark tasks and their data: local GLUE / SentEval / STS Benchmark files or the Hugging Face Hub.

Each split is loaded as a :class:`datasets.Dataset` with the columns ``sentence1``, ``sentence2`` and ``label`` (class
id or score), in file order. Labels follow the Hugging Face GLUE convention (RTE/QNLI ``entailment`` = 0). Tasks:
GLUE's ``mrpc``, ``qqp``, ``stsb``, ``mnli``, ``qnli``, ``rte``; SentEval's SICK as ``sick-e`` and ``sick-r``; and
``qqp-subset``, a seeded held-out split of a 23,497-row sample of GLUE QQP *train* (its numbers are never GLUE dev).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from st_dse.data.pairs import HubUnreachableError, network_errors
from st_dse.data.tasks import TaskSpec

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "ST_DSE_DATA_DIR"
# qqp-subset: row i is held out when sha256("<seed>:<i>") is among the smallest 10%, the same on every platform.
QQP_SUBSET_VALIDATION_FRACTION = 0.1
QQP_SUBSET_SEED = 42
_DATA_DIR_HINT = f"pass the data root with --data-dir / data_dir= (or set {DATA_DIR_ENV})"
GLUE_SOURCE = (
    "the GLUE data (https://gluebenchmark.com/tasks, e.g. via download_glue_data.py), laid out as "
    f"<data-dir>/glue/<TASK>/<file> or <data-dir>/<TASK>/<file>; {_DATA_DIR_HINT}, or leave it unset to download "
    "from the Hugging Face hub"
)
SENTEVAL_SOURCE = (
    "SentEval's data (SentEval/data/downstream/get_transfer_data.bash), laid out as "
    f"<data-dir>/senteval/data/downstream/SICK/<file>; {_DATA_DIR_HINT}"
)
STSBENCHMARK_SOURCE = (
    "the STS Benchmark release (https://ixa2.si.ehu.eus/stswiki, stsbenchmark.tar.gz; GLUE's STS-B test.tsv has no "
    f"gold scores), laid out as <data-dir>/stsbenchmark/sts-test.csv; {_DATA_DIR_HINT}"
)


@dataclass(frozen=True)
class LocalFile:
    """One split on disk: its path under the data root and the columns of the pair and the label.

    Columns are header names, or 0-based indices for files without a header. ``column_counts``: the allowed number
    of columns per row (empty: as many as the header). ``heldout_part`` picks one side of the seeded qqp-subset
    split; ``repair_space_separated_label`` repairs a row whose last tab became a space (the subset's first line).
    """

    relative_path: str
    sentence1: str | int
    sentence2: str | int
    label: str | int
    column_counts: tuple[int, ...] = ()
    heldout_part: str | None = None
    repair_space_separated_label: bool = False
    source: str | None = None


@dataclass(frozen=True)
class Benchmark:
    """Where a registered task's data lives: its labelled splits, their local files and the hub dataset, if any.
    The dev split is the first validation split (MNLI's matched one)."""

    local_files: dict[str, LocalFile]
    hub_dataset: str | None = None
    hub_config: str | None = None
    hub_text_columns: tuple[str, str] = ("sentence1", "sentence2")
    hub_splits: tuple[str, ...] = ()
    data_source: str = GLUE_SOURCE

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.local_files)

    @property
    def dev_split(self) -> str:
        return next(split for split in self.splits if split.startswith("validation"))


def _glue(folder: str, *columns: str, hub_columns: tuple[str, str] | None = None, **options) -> Benchmark:
    """GLUE files with these header columns (the hub's text columns: the first two unless named)."""
    files = options.pop("files", {"train": "train.tsv", "validation": "dev.tsv"})
    local = {split: LocalFile(f"glue/{folder}/{name}", *columns) for split, name in files.items()}
    hub = ("nyu-mll/glue", folder.lower().replace("-", ""), hub_columns or columns[:2], tuple(files))
    return Benchmark({**local, **options.pop("extra", {})}, *hub, **options)


def _sick(label_column: str) -> Benchmark:
    names = {"train": "SICK_train.txt", "validation": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
    folder = "senteval/data/downstream/SICK"
    files = {
        split: LocalFile(f"{folder}/{name}", "sentence_A", "sentence_B", label_column) for split, name in names.items()
    }
    return Benchmark(files, data_source=SENTEVAL_SOURCE)


_SUBSET_FILE = "glue/QQP/train_subset/new_dev.tsv"
_SUBSET_PARTS = {  # no header; columns id, qid1, qid2, question1, question2, is_duplicate
    part: LocalFile(_SUBSET_FILE, 3, 4, 5, (6,), heldout_part=part, repair_space_separated_label=True)
    for part in ("train", "validation")
}
_SUBSET_SOURCE = (
    f"a third-party 23,497-row sample of GLUE QQP train.tsv, at <data-dir>/{_SUBSET_FILE}; {_DATA_DIR_HINT}"
)
_STS_TEST = LocalFile("stsbenchmark/sts-test.csv", 5, 6, 4, (7, 9), source=STSBENCHMARK_SOURCE)
_MNLI_FILES = {"train": "train.tsv", **{f"validation_{part}": f"dev_{part}.tsv" for part in ("matched", "mismatched")}}
_QQP_SOURCE = GLUE_SOURCE + f". If you only have {_SUBSET_FILE}, use the task 'qqp-subset'"
_BENCHMARKS = {
    "mrpc": _glue("MRPC", "#1 String", "#2 String", "Quality", hub_columns=("sentence1", "sentence2")),
    "qqp": _glue("QQP", "question1", "question2", "is_duplicate", data_source=_QQP_SOURCE),
    "qqp-subset": Benchmark(_SUBSET_PARTS, data_source=_SUBSET_SOURCE),
    "stsb": _glue("STS-B", "sentence1", "sentence2", "score", extra={"test": _STS_TEST}),
    # MNLI reports accuracy per dev split: matched and mismatched.
    "mnli": _glue(
        "MNLI", "sentence1", "sentence2", "gold_label", hub_columns=("premise", "hypothesis"), files=_MNLI_FILES
    ),
    "qnli": _glue("QNLI", "question", "sentence", "label"),
    "rte": _glue("RTE", "sentence1", "sentence2", "label"),
    "sick-e": _sick("entailment_judgment"),
    "sick-r": _sick("relatedness_score"),
}
_DESCRIPTIONS = {
    "mrpc": "GLUE MRPC: is sentence2 a paraphrase of sentence1 (Microsoft Research Paraphrase Corpus)",
    "qqp": "GLUE QQP: are two Quora questions duplicates (full GLUE train/dev)",
    "qqp-subset": f"QQP subset, NOT GLUE dev: a 23,497-row random sample of GLUE QQP train ({_SUBSET_FILE}) split "
    f"into train and a seeded {QQP_SUBSET_VALIDATION_FRACTION:.0%} held-out validation part (seed {QQP_SUBSET_SEED})",
    "stsb": "GLUE STS-B: semantic similarity 0-5 (test = STS Benchmark gold sts-test.csv)",
    "mnli": "GLUE MNLI: premise (sentence1) entails / is neutral to / contradicts hypothesis (sentence2)",
    "qnli": "GLUE QNLI: does the sentence (sentence2) answer the question (sentence1)",
    "rte": "GLUE RTE: does sentence1 entail sentence2",
    "sick-e": "SICK entailment (SentEval copy): entailment / neutral / contradiction; validation = trial",
    "sick-r": "SICK relatedness (SentEval copy): relatedness score 1-5; validation = trial",
}
_NLI, _ENTAILMENT = ("entailment", "neutral", "contradiction"), ("entailment", "not_entailment")
_TASK_SHAPES = {  # problem type, label names, whether F1 is reported
    "mrpc": ("binary", ("not_equivalent", "equivalent"), True),
    "qqp": ("binary", ("not_duplicate", "duplicate"), True),
    "qqp-subset": ("binary", ("not_duplicate", "duplicate"), True),
    "stsb": ("regression", (), False),
    "mnli": ("multiclass", _NLI, False),
    "qnli": ("binary", _ENTAILMENT, False),
    "rte": ("binary", _ENTAILMENT, False),
    "sick-e": ("multiclass", _NLI, False),
    "sick-r": ("regression", (), False),
}


def _task(name: str, kind: str, labels: tuple[str, ...], f1: bool) -> TaskSpec:
    metrics = ("pearson", "spearman") if kind == "regression" else ("accuracy", "f1") if f1 else ("accuracy",)
    num_labels = len(labels) if kind == "multiclass" else 1
    main = "spearman" if kind == "regression" else "accuracy"
    return TaskSpec(name, _DESCRIPTIONS[name], kind, num_labels, labels, metrics, main, _BENCHMARKS[name])


TASKS: dict[str, TaskSpec] = {name: _task(name, *shape) for name, shape in _TASK_SHAPES.items()}


def _normalize_name(name: str) -> str:
    return "".join(character for character in name.lower() if character.isalnum())


def get_task(name: str | TaskSpec) -> TaskSpec:
    """A registered task by name, ignoring case and punctuation ("STS-B", "sts_b" and "stsb" all work).

    This is where a task's name is resolved; everything downstream takes the :class:`TaskSpec` it returns.
    """
    if isinstance(name, TaskSpec):
        return name
    spec = {_normalize_name(task_name): spec for task_name, spec in TASKS.items()}.get(_normalize_name(name))
    if spec is None:
        raise ValueError(
            f"Unknown task {name!r}. Known tasks: {', '.join(TASKS)}. For your own pairs, pass --train-file FILE "
            "(CSV, TSV, JSONL or Parquet) instead of --task."
        )
    return spec


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` as a Path, else the ``ST_DSE_DATA_DIR`` environment variable, else None (= use the hub)."""
    data_dir = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    return None if data_dir is None else Path(data_dir)


def load_task(
    task: TaskSpec,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    path: str | os.PathLike | None = None,
    max_samples: int | None = None,
) -> datasets.Dataset:
    """One split of a registered task as a Dataset with columns ``sentence1``, ``sentence2``, ``label``, in file order.

    ``split``: "train", "validation" ("dev" also works), "test" where the task has labelled test data, and for MNLI
    "validation_matched" / "validation_mismatched". ``data_dir``: the data root (``glue/``, ``stsbenchmark/``,
    ``senteval/``), the GLUE folder itself, or a folder holding the split's file; None: ``$ST_DSE_DATA_DIR`` if set,
    else the Hugging Face hub. ``path``: read exactly this file, with the column layout of ``split`` (e.g. an LM-BFF
    k-shot GLUE TSV). ``max_samples``: keep only the first rows (of the part, for qqp-subset).

    A missing file raises a FileNotFoundError naming the file and where it comes from; an unknown split or a
    malformed row a ValueError (naming the file and line).
    """
    benchmark = task.benchmark
    split = "validation" + split[3:] if split.startswith("dev") else split  # GLUE file names say "dev"
    if split not in benchmark.splits:
        raise ValueError(
            f"Task {task.name!r} has no split {split!r}. Available splits: {', '.join(benchmark.splits)}."
        )
    local_file = benchmark.local_files[split]
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{task.name} {split}: no file at {path} (given as path=).")
        file_path = Path(path)
    elif (root := resolve_data_dir(data_dir)) is not None:
        file_path = _find_local_file(task, split, root)
    else:
        return _load_from_hub(task, split, max_samples)
    part = local_file.heldout_part
    rows = _read_rows(file_path, task, local_file, limit=None if part else max_samples)
    rows = (_heldout_part(rows, part) if part else rows)[:max_samples]
    features = datasets.Features(
        sentence1=datasets.Value("string"),
        sentence2=datasets.Value("string"),
        label=datasets.Value("float64" if task.is_regression else "int64"),
    )
    columns = zip(*rows) if rows else ((), (), ())
    return datasets.Dataset.from_dict(dict(zip(features, map(list, columns))), features=features)


def _find_local_file(task: TaskSpec, split: str, data_dir: Path) -> Path:
    local_file = task.benchmark.local_files[split]
    relative = Path(local_file.relative_path)
    candidates = [data_dir / relative]
    if relative.parts[0] == "glue":
        candidates.append(data_dir / Path(*relative.parts[1:]))  # data_dir is the GLUE folder itself
    candidates += [data_dir.parent / relative, data_dir / relative.name]  # the GLUE folder's sibling; a k-shot folder
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        tried = "\n  ".join(map(str, candidates))
        raise FileNotFoundError(
            f"{task.name} {split}: expected the file {local_file.relative_path} under the data folder {data_dir}, "
            f"but none of these exist:\n  {tried}\nThis file comes from "
            f"{local_file.source or task.benchmark.data_source}."
        )
    return found


def _load_from_hub(task: TaskSpec, split: str, max_samples: int | None) -> datasets.Dataset:
    benchmark = task.benchmark
    if split not in benchmark.hub_splits:
        source = benchmark.local_files[split].source or benchmark.data_source
        raise ValueError(f"{task.name} {split} cannot be downloaded from the hub; it is read from {source}.")
    try:
        dataset = datasets.load_dataset(benchmark.hub_dataset, benchmark.hub_config, split=split)
    except network_errors():
        raise HubUnreachableError() from None
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return standardize_hub_dataset(dataset, task)


def standardize_hub_dataset(dataset: datasets.Dataset, task: TaskSpec) -> datasets.Dataset:
    """A hub split with its text columns renamed to ``sentence1``/``sentence2``, and only them and ``label``."""
    text1, text2 = task.benchmark.hub_text_columns
    dataset = dataset.select_columns([text1, text2, "label"])
    dataset = dataset.rename_columns(
        {old: new for old, new in [(text1, "sentence1"), (text2, "sentence2")] if old != new}
    )
    dataset = dataset.cast_column("label", datasets.Value("float64" if task.is_regression else "int64"))
    if not task.is_regression and len(dataset) and min(dataset["label"]) < 0:
        # GLUE's hub test splits carry label -1: there is nothing to train or evaluate on.
        raise ValueError(f"{task.name}: the hub data has unlabelled rows (label -1); use a labelled split.")
    return dataset


def _read_rows(file_path: Path, task: TaskSpec, local_file: LocalFile, limit: int | None) -> list[tuple]:
    # Benchmark files are read row by row, not with datasets' csv loader (pandas): rows of the wrong width must be
    # refused by line number (pandas pads short rows), and the qqp-subset line needs its repair.
    try:
        return _read_rows_as(file_path, task, local_file, limit, "utf-8-sig")
    except UnicodeDecodeError as error:
        # Some research files are latin-1; every byte sequence is valid latin-1, so this second read cannot fail.
        logger.warning("%s is not valid UTF-8 (%s); reading it as latin-1 instead.", file_path, error)
        return _read_rows_as(file_path, task, local_file, limit, "latin-1")


def _read_rows_as(file_path: Path, task: TaskSpec, local_file: LocalFile, limit: int | None, encoding: str) -> list:
    rows, repaired = [], []
    with open(file_path, encoding=encoding, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)  # GLUE's bare quotes are text
        columns, counts = [local_file.sentence1, local_file.sentence2, local_file.label], local_file.column_counts
        if isinstance(local_file.label, str):  # columns named by a header
            header = [name.strip().lstrip("\ufeff") for name in next(reader, [])]
            if missing := [name for name in columns if name not in header]:
                raise ValueError(f"{file_path}: the header has no column {missing[0]!r} (found: {', '.join(header)}).")
            columns, counts = [header.index(name) for name in columns], counts or (len(header),)
        for row in reader:
            if limit is not None and len(rows) >= limit:
                break
            if not row:
                continue  # a blank line
            where = f"{file_path}, line {reader.line_num}"
            if len(row) not in counts and local_file.repair_space_separated_label and _repair(row, counts):
                repaired.append(reader.line_num)
            if len(row) not in counts:
                expected = " or ".join(map(str, counts))
                raise ValueError(f"{where}: {len(row)} tab-separated columns, expected {expected} ({task.name}).")
            rows.append((row[columns[0]], row[columns[1]], _parse_label(row[columns[2]], task, where)))
    if repaired:
        message = "%s: repaired %d row(s) whose label was separated by a space instead of a tab (lines %s)."
        logger.warning(message, file_path, len(repaired), ", ".join(map(str, repaired[:10])))
    return rows


def _repair(row: list[str], counts: tuple[int, ...]) -> bool:
    # The QQP subset's first line is "id qid1 qid2 question1 question2<space>0" (GLUE QQP train id 133273, label 0):
    # only this shape (one column short, the last field ending in " 0" or " 1") is repaired.
    head, _, last = row[-1].rpartition(" ")
    if len(row) + 1 in counts and head and last in {"0", "1"}:
        row[-1:] = [head, last]
        return True
    return False


def _parse_label(raw_label: str, task: TaskSpec, where: str) -> int | float:
    value = raw_label.strip()
    names = [name.lower() for name in task.label_names]  # SICK writes ENTAILMENT; MRPC and QQP hold the ids
    if task.is_regression:
        with contextlib.suppress(ValueError):
            if math.isfinite(score := float(value)):
                return score
        problem = f"score {raw_label!r} is not a number ({task.name})"
    elif value.lower() in names or (value.isdigit() and int(value) < len(names)):
        return names.index(value.lower()) if value.lower() in names else int(value)
    else:
        problem = (
            f"label {raw_label!r} is not one of {', '.join(task.label_names)} (or their ids 0-{len(names) - 1}) for "
            f"task {task.name}"
        )
    raise ValueError(f"{where}: {problem}.")


def _heldout_part(rows: list, part: str) -> list:
    order = sorted(range(len(rows)), key=lambda index: hashlib.sha256(f"{QQP_SUBSET_SEED}:{index}".encode()).digest())
    heldout = set(order[: round(len(rows) * QQP_SUBSET_VALIDATION_FRACTION)])
    return [row for index, row in enumerate(rows) if (index in heldout) == (part == "validation")]
