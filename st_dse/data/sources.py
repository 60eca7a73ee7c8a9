"""Where a run's pairs come from: a registered task, your own files, or a Hugging Face Hub dataset.

:class:`DataConfig` holds the command line's data options; :func:`load_pairs` turns it into the task and its train
and dev splits. For your own pairs the task's shape comes from the teacher (:func:`task_from_teacher`) or, without
one, from the gold labels (:func:`task_from_labels`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import datasets

from st_dse.checks import int_at_least
from st_dse.data.benchmarks import get_task, load_task
from st_dse.data.pairs import load_hub_pairs, read_pair_file
from st_dse.data.tasks import TaskSpec, encode_labels, task_from_labels, task_from_teacher
from st_dse.modules.pair_head import ProblemType


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
    problem_type: ProblemType | None = field(
        default=None,
        metadata={"help": "for your own pairs: the task's kind (default: from the teacher and the labels)"},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training pairs"})

    def __post_init__(self) -> None:
        sources = [name for name in ("task", "train_file", "dataset") if getattr(self, name)]
        if len(sources) != 1:
            given = ", ".join("--" + name.replace("_", "-") for name in sources)
            none = "No pairs given: pass --task NAME, --train-file FILE or --dataset NAME."
            raise ValueError(f"Give one source of pairs, not {given}." if sources else none)
        if self.task is not None:
            get_task(self.task)  # an unknown name fails here, before any work, listing the known tasks
        if self.dev_file and not self.train_file:
            raise ValueError("--dev-file goes with --train-file.")
        if self.max_train_samples is not None:
            int_at_least("--max-train-samples", self.max_train_samples)

    @property
    def own_pairs(self) -> bool:
        return self.task is None


def load_pairs(
    config: DataConfig, teacher: Any | None = None
) -> tuple[TaskSpec, datasets.Dataset, datasets.Dataset | None]:
    """The task and its train and dev pairs (dev may be None for your own pairs without a dev file or split).

    A registered task's splits come from :func:`~st_dse.data.load_task`. Your own pairs are described by ``teacher``
    when one is given, else by their gold labels, and class names are mapped to the task's class ids.
    """
    if not config.own_pairs:
        task = get_task(config.task)
        train = load_task(task, "train", config.data_dir, max_samples=config.max_train_samples)
        return task, train, load_task(task, task.benchmark.dev_split, config.data_dir)
    columns = (config.sentence1_column, config.sentence2_column, config.label_column)
    if config.train_file:
        train = read_pair_file(config.train_file, *columns)
        dev = read_pair_file(config.dev_file, *columns) if config.dev_file else None
    else:
        names = task_from_teacher(teacher, problem_type=config.problem_type).label_names if teacher else ()
        load = functools.partial(load_hub_pairs, config.dataset, config.dataset_config, label_names=names or None)
        train = load(config.train_split, *columns)
        dev = load(config.dev_split, *columns) if config.dev_split else None
    if config.max_train_samples is not None:
        train = train.select(range(min(config.max_train_samples, len(train))))
    labels = train["label"] if "label" in train.column_names else None
    if teacher is not None:
        task = task_from_teacher(teacher, labels=labels, problem_type=config.problem_type)
    else:
        task = task_from_labels(labels or [], problem_type=config.problem_type)
    return task, encode_labels(train, task), encode_labels(dev, task) if dev is not None else None
