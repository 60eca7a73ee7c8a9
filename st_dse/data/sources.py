"""Where a run's pairs come from: a registered task, your own files, or a Hub dataset; and the task they form.

:func:`load_pairs` turns a :class:`DataConfig` (what the recipes parse from ``--task``, ``--train-file``,
``--dataset`` ...) into the task and its train and dev splits. For your own pairs the task's shape comes from the
teacher (:func:`task_from_teacher`: its number of logits and label names) or, without one, from the gold labels
(:func:`task_from_labels`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import datasets

from st_dse.data.pair_files import (
    DEFAULT_PAIR_COLUMNS,
    PROBLEM_TYPES,
    HubUnreachableError,
    encode_labels,
    network_errors,
    pairs_dataset,
    parse_label,
    read_pair_file,
    resolve_pair_columns,
)
from st_dse.data.readers import load_task
from st_dse.data.tasks import TaskSpec, get_task

logger = logging.getLogger(__name__)

_GENERIC_LABEL_NAME = re.compile(r"label_?\d+", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face Hub


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
    """Load one split of a Hub dataset with :func:`datasets.load_dataset` and the column mapping of files.

    Class-label columns (``ClassLabel``) keep their ids, with -1 (unlabelled, e.g. GLUE test splits) as None. Pass
    the teacher's ``label_names`` (e.g. ``task.label_names``) to translate the dataset's ids by class name into the
    teacher's ids: datasets and teachers often order the same classes differently (MNLI vs. NLI cross-encoders).

    Raises:
        HubUnreachableError: offline mode or no network (a ConnectionError with a one-line message).
        ValueError: a missing column or an empty sentence, as for :func:`read_pair_file`.
    """
    try:
        dataset = datasets.load_dataset(name, config, split=split, **load_kwargs)
    except network_errors():
        raise HubUnreachableError() from None
    source = f"{name}{f' ({config})' if config else ''} {split}"
    first, second, label, _ = resolve_pair_columns(
        dataset.column_names, sentence1_column, sentence2_column, label_column
    )
    table: dict[str, list] = {first: dataset[first], second: dataset[second]}
    if label is not None:
        table[label] = _hub_labels(dataset, label, label_names)
    return pairs_dataset(source, table, first, second, label)


def _hub_labels(dataset: datasets.Dataset, column: str, label_names: Sequence[str] | None) -> list:
    labels = list(dataset[column])
    feature = dataset.features[column]
    if not isinstance(feature, datasets.ClassLabel):
        return labels
    labels = [None if value is None or value < 0 else value for value in labels]
    theirs = [name.lower() for name in feature.names]
    ours = [name.lower() for name in label_names or ()]
    if ours and set(theirs) <= set(ours) and theirs != ours:
        logger.info("Mapped the dataset's classes %s to the teacher's ids %s by name.", feature.names, label_names)
        return [None if value is None else ours.index(theirs[value]) for value in labels]
    if ours and not set(theirs) <= set(ours):
        logger.warning(
            "The dataset's classes %s are not the teacher's %s; its class ids are used as they are.",
            feature.names,
            list(label_names),
        )
    return labels


# ---------------------------------------------------------------------------------------------------------------
# The task, from the teacher


def task_from_teacher(
    cross_encoder: Any,
    labels: Sequence | None = None,
    problem_type: str | None = None,
    name: str = "custom",
) -> TaskSpec:
    """Describe the pair task that ``cross_encoder`` was trained for, as a :class:`~st_dse.tasks.TaskSpec`.

    The number of teacher logits (``config.num_labels``) decides:

    * 1 logit: ``binary`` (one student output, class 1 when the logit is > 0), unless the gold ``labels`` are graded
      (any value other than 0 and 1), the teacher's config says ``problem_type="regression"``, or
      ``problem_type="regression"`` is passed: then ``regression`` (the logit is the score).
    * 2 logits: ``binary`` with one student output. ``label_with_teacher`` reduces a 2-logit teacher to the single
      logit ``l1 - l0``, so class 1 is the teacher's second class. ``problem_type="multiclass"`` keeps two outputs
      instead (the teacher logits must then be kept 2-wide, which ``label_with_teacher`` does not do).
    * k >= 3 logits: ``multiclass`` with k outputs.

    Label names come from the config's ``id2label`` (generic names such as ``LABEL_0`` count as none). Metrics
    (0-100, as :func:`~st_dse.tasks.compute_metrics` reports them): accuracy and F1 for binary (main: accuracy),
    accuracy for multiclass, Spearman and Pearson for regression (main: Spearman).

    Raises:
        ValueError: an unknown ``problem_type``, or one the teacher's number of logits cannot give.
    """
    config = cross_encoder.config
    num_logits = int(config.num_labels)
    kind = _problem_type(num_logits, labels, problem_type, getattr(config, "problem_type", None))
    if num_logits == 2 and kind == "multiclass":
        logger.warning(
            "A 2-way multiclass task keeps both teacher logits; label_with_teacher reduces a 2-logit teacher to one."
        )
    names = _teacher_label_names(config, num_logits) if kind != "regression" else ()
    teacher = getattr(config, "_name_or_path", "") or "a CrossEncoder"
    return custom_task(kind, num_logits, names, f"your own pairs, {kind}, labelled by the teacher {teacher}", name)


def task_from_labels(labels: Sequence, problem_type: str | None = None, name: str = "custom") -> TaskSpec:
    """Describe the task of your own gold labels when there is no teacher yet (to fine-tune one on them).

    Whole numbers 0/1 give a binary task, whole numbers up to k-1 (k >= 3) a k-way task, scores with fractions a
    regression; ``problem_type`` overrides (integer scores such as 0-5 similarity need ``"regression"``). Class
    names are not allowed here: without a teacher there is no order to give them; use ids.
    """
    values = [parse_label(value) for value in labels]
    present = [value for value in values if value is not None]
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


def custom_task(kind: str, num_logits: int, label_names: Sequence[str], description: str, name: str) -> TaskSpec:
    """A :class:`TaskSpec` for pairs of your own: its shape, label names and the metrics that fit it."""
    if kind not in PROBLEM_TYPES:
        raise ValueError(f"Unknown problem_type {kind!r}; expected one of {', '.join(PROBLEM_TYPES)}.")
    names = tuple(label_names) if kind != "regression" else ()
    if kind == "binary" and len(names) != 2:
        names = ()
    metrics = {"binary": ("accuracy", "f1"), "multiclass": ("accuracy",), "regression": ("spearman", "pearson")}[kind]
    return TaskSpec(
        name=name,
        description=description,
        hub_dataset=None,
        hub_config=None,
        hub_text_columns=DEFAULT_PAIR_COLUMNS,
        label_names=names,
        num_labels=num_logits if kind == "multiclass" else 1,
        problem_type=kind,
        metrics=metrics,
        main_metric=metrics[0],
        splits=("train", "validation", "test"),
        hub_splits=(),
        local_files={},
        data_source="your own pair files (--train-file) or Hub dataset (--dataset)",
    )


def _problem_type(num_logits: int, labels: Sequence | None, requested: str | None, configured: str | None) -> str:
    if requested is not None:
        if requested not in PROBLEM_TYPES:
            raise ValueError(f"Unknown problem_type {requested!r}; expected one of {', '.join(PROBLEM_TYPES)}.")
        allowed = {"regression": num_logits == 1, "binary": num_logits in (1, 2), "multiclass": num_logits >= 2}
        if not allowed[requested]:
            raise ValueError(f"A teacher with {num_logits} logit(s) cannot be used for a {requested} task.")
        return requested
    if num_logits == 1:
        return "regression" if configured == "regression" or _graded(labels) else "binary"
    return "binary" if num_logits == 2 else "multiclass"


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


def _teacher_label_names(config: Any, num_logits: int) -> tuple[str, ...]:
    id2label = getattr(config, "id2label", None) or {}
    names = [id2label.get(index, id2label.get(str(index))) for index in range(num_logits)]
    if any(not isinstance(label, str) or _GENERIC_LABEL_NAME.fullmatch(label) for label in names):
        return ()
    return tuple(names)


@dataclass
class DataConfig:
    """Where a run's pairs come from: a registered task (``--task``), your own files, or a Hub dataset."""

    task: str | None = field(
        default=None,
        metadata={"help": "a registered benchmark task (mrpc, qqp, stsb, ...); for your own pairs use --train-file"},
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "local benchmark data for --task (default: $ST_DSE_DATA_DIR, else the Hub)"}
    )
    train_file: str | None = field(
        default=None, metadata={"help": "your training pairs: a .csv, .tsv, .jsonl/.json or .parquet file"}
    )
    dev_file: str | None = field(default=None, metadata={"help": "your dev pairs, same formats (labels optional)"})
    dataset: str | None = field(default=None, metadata={"help": "a Hub dataset of pairs, instead of files"})
    dataset_config: str | None = field(default=None, metadata={"help": "the Hub dataset's configuration"})
    train_split: str = field(default="train", metadata={"help": "the Hub dataset's training split"})
    dev_split: str | None = field(default=None, metadata={"help": "the Hub dataset's dev split (none by default)"})
    sentence1_column: str | None = field(default=None, metadata={"help": "column of the first sentences"})
    sentence2_column: str | None = field(default=None, metadata={"help": "column of the second sentences"})
    label_column: str | None = field(default=None, metadata={"help": "column of the gold labels (optional)"})
    problem_type: Literal["binary", "multiclass", "regression"] | None = field(
        default=None,
        metadata={"help": "for your own pairs: the task's kind (default: from the teacher and the labels)"},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training pairs"})

    def __post_init__(self) -> None:
        sources = [name for name in ("task", "train_file", "dataset") if getattr(self, name)]
        if len(sources) > 1:
            options = ", ".join("--" + name.replace("_", "-") for name in sources)
            raise ValueError(f"Give one source of pairs, not {options}.")
        if not sources:
            raise ValueError("No pairs given: pass --task NAME, --train-file FILE or --dataset NAME.")
        if self.task is not None:
            get_task(self.task)  # an unknown name fails here, before any work, listing the known tasks
        if self.dev_file and not self.train_file:
            raise ValueError("--dev-file goes with --train-file.")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max-train-samples must be a number > 0, got {self.max_train_samples}.")

    @property
    def own_pairs(self) -> bool:
        return self.task is None


def load_pairs(
    config: DataConfig, teacher: Any | None = None
) -> tuple[TaskSpec, datasets.Dataset, datasets.Dataset | None]:
    """The task and its train and dev pairs (dev may be None for your own pairs without a dev file or split).

    For a registered task the splits come from :func:`~st_dse.data.load_task`. For your own pairs the task is
    described by ``teacher`` (:func:`task_from_teacher`) when one is given, else by the gold labels
    (:func:`task_from_labels`), and class names in the files are mapped to its class ids.
    """
    if not config.own_pairs:
        task = get_task(config.task)
        train = load_task(task, "train", config.data_dir, max_samples=config.max_train_samples)
        return task, train, load_task(task, task.dev_split, config.data_dir)
    train, dev = _read_own_pairs(config, teacher)
    if config.max_train_samples is not None:
        train = train.select(range(min(config.max_train_samples, len(train))))
    labels = train["label"] if "label" in train.column_names else None
    if teacher is not None:
        task = task_from_teacher(teacher, labels=labels, problem_type=config.problem_type)
    else:
        task = task_from_labels(labels or [], problem_type=config.problem_type)
    return task, encode_labels(train, task), encode_labels(dev, task) if dev is not None else None


def _read_own_pairs(config: DataConfig, teacher: Any | None) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    columns = (config.sentence1_column, config.sentence2_column, config.label_column)
    if config.train_file:
        dev = read_pair_file(config.dev_file, *columns) if config.dev_file else None
        return read_pair_file(config.train_file, *columns), dev
    label_names = None
    if teacher is not None:
        label_names = task_from_teacher(teacher, problem_type=config.problem_type).label_names or None
    load = functools.partial(load_hub_pairs, config.dataset, config.dataset_config, label_names=label_names)
    train = load(config.train_split, *columns)
    return train, load(config.dev_split, *columns) if config.dev_split else None
