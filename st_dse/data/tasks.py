"""Sentence-pair tasks: the registry and the official metrics.

Every task is loaded as a :class:`datasets.Dataset` with exactly three columns, in the source file's row order::

    sentence1 (str), sentence2 (str), label (int class id for classification, float score for regression)

Tasks: GLUE's ``mrpc``, ``qqp``, ``stsb``, ``mnli``, ``qnli``, ``rte``; ``sick-e`` (3-way entailment) and ``sick-r``
(relatedness 1-5) from SentEval's copy of SICK; and ``qqp-subset``, a seeded held-out split of a 23,497-row sample of
GLUE QQP *train* (for machines without the full QQP files: its numbers are "QQP subset" numbers, never GLUE dev).

Where the data comes from: :mod:`st_dse.data.readers` (local files or the Hugging Face Hub).

Labels follow the Hugging Face GLUE convention (e.g. RTE/QNLI ``entailment`` = 0), so hub and local data agree.
Binary tasks use one head output (``num_labels`` = 1, class 1 when the logit is > 0), k-way tasks k outputs and
regression one (the score).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from st_dse.modules.pair_head import logits_to_output

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "ST_DSE_DATA_DIR"
HUB_GLUE = "nyu-mll/glue"

# qqp-subset: the validation part is the 10% of rows whose sha256("<seed>:<row index>") sorts first. Hashing (rather
# than a numpy/random permutation) keeps the split identical across library versions and platforms.
QQP_SUBSET_VALIDATION_FRACTION = 0.1
QQP_SUBSET_SEED = 42

GLUE_SOURCE = (
    "the GLUE data (https://gluebenchmark.com/tasks, e.g. via download_glue_data.py), laid out as "
    "<data-dir>/glue/<TASK>/<file> or <data-dir>/<TASK>/<file>; pass that folder with --data-dir / data_dir= "
    f"(or set {DATA_DIR_ENV}), or leave it unset to download from the Hugging Face hub"
)
SENTEVAL_SOURCE = (
    "SentEval's data (SentEval/data/downstream/get_transfer_data.bash), laid out as "
    "<data-dir>/senteval/data/downstream/SICK/<file>; pass the data root with --data-dir / data_dir= "
    f"(or set {DATA_DIR_ENV})"
)
STSBENCHMARK_SOURCE = (
    "the STS Benchmark release (https://ixa2.si.ehu.eus/stswiki, stsbenchmark.tar.gz; GLUE's STS-B test.tsv has no "
    "gold scores), laid out as <data-dir>/stsbenchmark/sts-test.csv; pass the data root with --data-dir / data_dir= "
    f"(or set {DATA_DIR_ENV})"
)


@dataclass(frozen=True)
class LocalFile:
    """Where one split lives on disk and which columns hold the pair and the label.

    ``relative_path`` is relative to the data root. Columns are header names when ``has_header``, else 0-based indices.
    ``column_counts`` lists the allowed number of columns per row (empty: exactly as many as the header has).
    ``heldout_part`` ("train" or "validation") selects one side of the seeded qqp-subset split of the file.
    ``repair_space_separated_label``: repair rows whose last tab became a space (the QQP subset's first line).
    ``source`` says where the file comes from when that differs from the task's ``data_source``.
    """

    relative_path: str
    sentence1: str | int
    sentence2: str | int
    label: str | int
    has_header: bool = True
    column_counts: tuple[int, ...] = ()
    heldout_part: str | None = None
    repair_space_separated_label: bool = False
    source: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    """Everything st_dse needs to know about one sentence-pair task.

    ``num_labels`` is the number of PairHead outputs: 1 for binary tasks (one logit, class 1 when > 0) and regression,
    k for k-way classification. ``label_names[i]`` is the name of class id i (empty for regression). ``metrics`` are
    the task's official metrics (on a 0-100 scale), ``main_metric`` the one used to pick checkpoints and to summarise.
    ``splits`` are the labelled splits, ``dev_split`` the one used to pick checkpoints and to report, ``hub_splits``
    those that can be downloaded from ``hub_dataset``.
    """

    name: str
    description: str
    hub_dataset: str | None
    hub_config: str | None
    hub_text_columns: tuple[str, str]
    label_names: tuple[str, ...]
    num_labels: int
    problem_type: str  # "binary", "multiclass" or "regression"
    metrics: tuple[str, ...]
    main_metric: str
    splits: tuple[str, ...]
    hub_splits: tuple[str, ...]
    local_files: dict[str, LocalFile] = field(hash=False, repr=False)
    data_source: str = GLUE_SOURCE
    dev_split: str = "validation"

    @property
    def is_regression(self) -> bool:
        return self.problem_type == "regression"


def _glue_files(
    folder: str, sentence1: str, sentence2: str, label: str, dev_files: dict[str, str] | None = None
) -> dict[str, LocalFile]:
    dev_files = dev_files or {"validation": "dev.tsv"}
    files = {"train": "train.tsv", **dev_files}
    return {split: LocalFile(f"glue/{folder}/{name}", sentence1, sentence2, label) for split, name in files.items()}


def _sick_files(label_column: str) -> dict[str, LocalFile]:
    names = {"train": "SICK_train.txt", "validation": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
    return {
        split: LocalFile(f"senteval/data/downstream/SICK/{name}", "sentence_A", "sentence_B", label_column)
        for split, name in names.items()
    }


_NLI_LABELS = ("entailment", "neutral", "contradiction")
_QQP_SUBSET_FILE = "glue/QQP/train_subset/new_dev.tsv"

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            name="mrpc",
            description="GLUE MRPC: is sentence2 a paraphrase of sentence1 (Microsoft Research Paraphrase Corpus)",
            hub_dataset=HUB_GLUE,
            hub_config="mrpc",
            hub_text_columns=("sentence1", "sentence2"),
            label_names=("not_equivalent", "equivalent"),
            num_labels=1,
            problem_type="binary",
            metrics=("accuracy", "f1"),
            main_metric="accuracy",
            splits=("train", "validation"),
            hub_splits=("train", "validation"),
            local_files=_glue_files("MRPC", "#1 String", "#2 String", "Quality"),
        ),
        TaskSpec(
            name="qqp",
            description="GLUE QQP: are two Quora questions duplicates (full GLUE train/dev)",
            hub_dataset=HUB_GLUE,
            hub_config="qqp",
            hub_text_columns=("question1", "question2"),
            label_names=("not_duplicate", "duplicate"),
            num_labels=1,
            problem_type="binary",
            metrics=("accuracy", "f1"),
            main_metric="accuracy",
            splits=("train", "validation"),
            hub_splits=("train", "validation"),
            local_files=_glue_files("QQP", "question1", "question2", "is_duplicate"),
            data_source=GLUE_SOURCE
            + ". If you only have glue/QQP/train_subset/new_dev.tsv, use the task 'qqp-subset'",
        ),
        TaskSpec(
            name="qqp-subset",
            description=(
                "QQP subset, NOT GLUE dev: a 23,497-row random sample of GLUE QQP train "
                f"({_QQP_SUBSET_FILE}) split into train and a seeded "
                f"{QQP_SUBSET_VALIDATION_FRACTION:.0%} held-out validation part (seed {QQP_SUBSET_SEED})"
            ),
            hub_dataset=None,
            hub_config=None,
            hub_text_columns=("question1", "question2"),
            label_names=("not_duplicate", "duplicate"),
            num_labels=1,
            problem_type="binary",
            metrics=("accuracy", "f1"),
            main_metric="accuracy",
            splits=("train", "validation"),
            hub_splits=(),
            # No header; columns id, qid1, qid2, question1, question2, is_duplicate.
            local_files={
                part: LocalFile(
                    _QQP_SUBSET_FILE,
                    sentence1=3,
                    sentence2=4,
                    label=5,
                    has_header=False,
                    column_counts=(6,),
                    heldout_part=part,
                    repair_space_separated_label=True,
                )
                for part in ("train", "validation")
            },
            data_source=(
                f"a third-party 23,497-row sample of GLUE QQP train.tsv, expected at <data-dir>/{_QQP_SUBSET_FILE}; "
                f"pass the data root with --data-dir / data_dir= (or set {DATA_DIR_ENV})"
            ),
        ),
        TaskSpec(
            name="stsb",
            description="GLUE STS-B: semantic similarity 0-5 (test = STS Benchmark gold sts-test.csv)",
            hub_dataset=HUB_GLUE,
            hub_config="stsb",
            hub_text_columns=("sentence1", "sentence2"),
            label_names=(),
            num_labels=1,
            problem_type="regression",
            metrics=("pearson", "spearman"),
            main_metric="spearman",
            splits=("train", "validation", "test"),
            hub_splits=("train", "validation"),
            local_files={
                **_glue_files("STS-B", "sentence1", "sentence2", "score"),
                # genre, filename, year, id, score, sentence1, sentence2 (+ 2 provenance columns on some rows).
                "test": LocalFile(
                    "stsbenchmark/sts-test.csv",
                    sentence1=5,
                    sentence2=6,
                    label=4,
                    has_header=False,
                    column_counts=(7, 9),
                    source=STSBENCHMARK_SOURCE,
                ),
            },
        ),
        TaskSpec(
            name="mnli",
            description="GLUE MNLI: premise (sentence1) entails / is neutral to / contradicts hypothesis (sentence2)",
            hub_dataset=HUB_GLUE,
            hub_config="mnli",
            hub_text_columns=("premise", "hypothesis"),
            label_names=_NLI_LABELS,
            num_labels=3,
            problem_type="multiclass",
            metrics=("accuracy",),  # reported per dev split: matched and mismatched accuracy
            main_metric="accuracy",
            splits=("train", "validation_matched", "validation_mismatched"),
            dev_split="validation_matched",
            hub_splits=("train", "validation_matched", "validation_mismatched"),
            local_files=_glue_files(
                "MNLI",
                "sentence1",
                "sentence2",
                "gold_label",
                dev_files={"validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"},
            ),
        ),
        TaskSpec(
            name="qnli",
            description="GLUE QNLI: does the sentence (sentence2) answer the question (sentence1)",
            hub_dataset=HUB_GLUE,
            hub_config="qnli",
            hub_text_columns=("question", "sentence"),
            label_names=("entailment", "not_entailment"),
            num_labels=1,
            problem_type="binary",
            metrics=("accuracy",),
            main_metric="accuracy",
            splits=("train", "validation"),
            hub_splits=("train", "validation"),
            local_files=_glue_files("QNLI", "question", "sentence", "label"),
        ),
        TaskSpec(
            name="rte",
            description="GLUE RTE: does sentence1 entail sentence2",
            hub_dataset=HUB_GLUE,
            hub_config="rte",
            hub_text_columns=("sentence1", "sentence2"),
            label_names=("entailment", "not_entailment"),
            num_labels=1,
            problem_type="binary",
            metrics=("accuracy",),
            main_metric="accuracy",
            splits=("train", "validation"),
            hub_splits=("train", "validation"),
            local_files=_glue_files("RTE", "sentence1", "sentence2", "label"),
        ),
        TaskSpec(
            name="sick-e",
            description="SICK entailment (SentEval copy): entailment / neutral / contradiction; validation = trial",
            hub_dataset=None,
            hub_config=None,
            hub_text_columns=("sentence_A", "sentence_B"),
            label_names=_NLI_LABELS,
            num_labels=3,
            problem_type="multiclass",
            metrics=("accuracy",),
            main_metric="accuracy",
            splits=("train", "validation", "test"),
            hub_splits=(),
            local_files=_sick_files("entailment_judgment"),
            data_source=SENTEVAL_SOURCE,
        ),
        TaskSpec(
            name="sick-r",
            description="SICK relatedness (SentEval copy): relatedness score 1-5; validation = trial",
            hub_dataset=None,
            hub_config=None,
            hub_text_columns=("sentence_A", "sentence_B"),
            label_names=(),
            num_labels=1,
            problem_type="regression",
            metrics=("pearson", "spearman"),
            main_metric="spearman",
            splits=("train", "validation", "test"),
            hub_splits=(),
            local_files=_sick_files("relatedness_score"),
            data_source=SENTEVAL_SOURCE,
        ),
    ]
}


def _normalize_name(name: str) -> str:
    return "".join(character for character in name.lower() if character.isalnum())


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, ignoring case and punctuation ("STS-B", "sts_b", "sickr" and "SICK-R" all work).

    This is where a task's name is resolved; everything downstream takes the :class:`TaskSpec` it returns.
    """
    if isinstance(name, TaskSpec):
        return name
    by_normalized_name = {_normalize_name(task_name): spec for task_name, spec in TASKS.items()}
    spec = by_normalized_name.get(_normalize_name(name))
    if spec is None:
        raise ValueError(
            f"Unknown task {name!r}. Known tasks: {', '.join(TASKS)}. For your own pairs, pass --train-file FILE "
            "(CSV, TSV, JSONL or Parquet) instead of --task."
        )
    return spec


def require_task_spec(task: TaskSpec) -> TaskSpec:
    """``task`` itself; a clear TypeError when a name was passed where the resolved task is needed."""
    if not isinstance(task, TaskSpec):
        raise TypeError(
            f"Expected a TaskSpec, got {type(task).__name__} {task!r}. Resolve a task name once with "
            "st_dse.data.get_task(name) and pass the TaskSpec it returns."
        )
    return task


def logits_to_predictions(task: TaskSpec, logits) -> np.ndarray:
    """Turn PairHead (or teacher) logits into what :func:`compute_metrics` takes.

    Binary: shape (n,) or (n, 1), class 1 when the logit is > 0. Regression: shape (n,) or (n, 1), the score itself.
    k-way: shape (n, k), the argmax class id. Accepts numpy arrays, lists and torch tensors.
    """
    spec = require_task_spec(task)
    if hasattr(logits, "detach"):  # a torch tensor, possibly on GPU or in half precision
        logits = logits.detach().float().cpu().numpy()
    logits = np.asarray(logits, dtype=np.float64)
    if spec.num_labels == 1:
        if logits.ndim == 2 and logits.shape[1] == 1:
            logits = logits[:, 0]
        if logits.ndim != 1:
            raise ValueError(
                f"{spec.name} has one output per pair; expected logits of shape (n,) or (n, 1), got {logits.shape}."
            )
        if spec.is_regression:
            return logits
        return logits_to_output(torch.from_numpy(logits[:, None]), "binary", "labels").numpy()
    if logits.ndim != 2 or logits.shape[1] != spec.num_labels:
        raise ValueError(
            f"{spec.name} has {spec.num_labels} classes; expected logits of shape (n, {spec.num_labels}), "
            f"got {logits.shape}."
        )
    return logits_to_output(torch.from_numpy(logits), "multiclass", "labels").numpy()


def compute_metrics(task: TaskSpec, predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """The task's official metrics on a 0-100 scale, plus ``"main"`` = the task's main metric.

    ``predictions`` are class ids for classification (see :func:`logits_to_predictions`) and scores for regression.
    As in GLUE, MRPC and QQP report accuracy and F1 (positive class 1) and STS-B / SICK-R Pearson and Spearman; the
    main metric is accuracy for classification and Spearman for regression. For MNLI call this once per dev split
    (matched and mismatched accuracy).
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score

    spec = require_task_spec(task)
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(
            f"predictions and labels must be 1-d and of the same length, got {predictions.shape} and {labels.shape}."
        )
    compute = {
        "accuracy": lambda: accuracy_score(labels, predictions),
        "f1": lambda: f1_score(labels, predictions, pos_label=1, zero_division=0),
        "pearson": lambda: pearsonr(predictions, labels).statistic,
        "spearman": lambda: spearmanr(predictions, labels).statistic,
    }
    results = {metric: 100.0 * float(compute[metric]()) for metric in spec.metrics}
    results["main"] = results[spec.main_metric]
    return results
