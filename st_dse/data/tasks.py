"""The shape of a sentence-pair task (problem type, labels, metrics), read from a teacher or from gold labels for your
own pairs, and the task's official metrics.

Binary tasks have one head output (class 1 when the logit is > 0), k-way tasks k outputs, regression one (the score).
Where a registered benchmark's data lives is a separate object, :class:`st_dse.data.benchmarks.Benchmark`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

import datasets
import numpy as np
import torch

from st_dse.checks import one_of
from st_dse.modules.pair_head import ProblemType, logits_to_output

if TYPE_CHECKING:
    from st_dse.data.benchmarks import Benchmark

logger = logging.getLogger(__name__)

PROBLEM_TYPES: tuple[str, ...] = get_args(ProblemType)
_GENERIC_LABEL_NAME = re.compile(r"label_?\d+", re.IGNORECASE)


@dataclass(frozen=True)
class TaskSpec:
    """What st_dse needs to know about a sentence-pair task.

    ``num_labels`` is the number of PairHead outputs (1 for binary and regression, k for k-way); ``label_names[i]``
    names class id i (empty for regression); ``metrics`` are reported on a 0-100 scale and ``main_metric`` picks
    checkpoints. ``benchmark`` says where a registered task's data lives (None for your own pairs).
    """

    name: str
    description: str
    problem_type: str
    num_labels: int
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str
    benchmark: Benchmark | None = field(default=None, compare=False, repr=False)

    @property
    def is_regression(self) -> bool:
        return self.problem_type == "regression"


def custom_task(kind: str, num_logits: int, label_names: Sequence[str], description: str, name: str) -> TaskSpec:
    """A :class:`TaskSpec` for pairs of your own: its shape, label names and the metrics that fit it."""
    one_of("problem_type", kind, PROBLEM_TYPES)
    names = tuple(label_names) if kind == "multiclass" or (kind == "binary" and len(label_names) == 2) else ()
    metrics = {"binary": ("accuracy", "f1"), "multiclass": ("accuracy",), "regression": ("spearman", "pearson")}[kind]
    return TaskSpec(name, description, kind, num_logits if kind == "multiclass" else 1, names, metrics, metrics[0])


def parse_label(value: Any) -> int | float | str | None:
    """One raw label as None (missing: None, NaN, an empty cell or ``-``), an int, a float or a stripped class name."""
    if value is None or isinstance(value, (bool, np.bool_, int, np.integer)):
        return None if value is None else int(value)
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


def task_from_teacher(
    cross_encoder: Any, labels: Sequence | None = None, problem_type: str | None = None, name: str = "custom"
) -> TaskSpec:
    """The pair task ``cross_encoder`` was trained for, from its number of logits (``config.num_labels``).

    * 1 logit: ``binary`` (class 1 when the logit is > 0), unless the gold ``labels`` are graded (fractions) or the
      config or ``problem_type`` says ``"regression"``. Whole-number labels other than 0 and 1 (0/1/2, -1) are
      refused: pass ``problem_type`` to say whether they are scores.
    * 2 logits: ``binary`` with one output (``label_with_teacher`` reduces them to ``l1 - l0``);
      ``problem_type="multiclass"`` keeps both. k >= 3 logits: ``multiclass`` with k outputs.

    Label names come from the config's ``id2label`` (generic names such as ``LABEL_0`` count as none). Raises a
    ValueError for an unknown ``problem_type``, or one the teacher's number of logits cannot give.
    """
    config = cross_encoder.config
    num_logits, kind = int(config.num_labels), problem_type
    if kind is not None:  # an unknown kind is refused by custom_task
        allowed = {"regression": num_logits == 1, "binary": num_logits in (1, 2), "multiclass": num_logits >= 2}
        if not allowed.get(kind, True):
            raise ValueError(f"A teacher with {num_logits} logit(s) cannot be used for a {kind} task.")
    elif num_logits == 1:
        says_regression = getattr(config, "problem_type", None) == "regression"
        numbers = [value for value in map(parse_label, labels or ()) if isinstance(value, (int, float))]
        graded = any(value not in (0, 1) for value in numbers)
        if graded and not says_regression and all(float(value).is_integer() for value in numbers):
            raise ValueError(  # 0/1/2: classes or integer scores?
                "The gold labels are whole numbers other than 0 and 1, and the teacher has one logit: pass "
                "--problem-type regression if they are graded scores, or a teacher with one logit per class."
            )
        kind = "regression" if says_regression or graded else "binary"
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


def encode_labels(dataset: datasets.Dataset, task: TaskSpec, label_column: str = "label") -> datasets.Dataset:
    """Check every gold label against ``task`` and store it as the task needs it; None (no gold) stays None.

    Class names become ids through ``task.label_names`` (case-insensitive); numbers must be class ids (int64);
    regression labels must be numbers (float64). A dataset without ``label_column`` is returned unchanged. Raises a
    ValueError naming the (1-based) row of an unknown class name or an out-of-range label.
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


def logits_to_predictions(task: TaskSpec, logits) -> np.ndarray:
    """PairHead (or teacher) logits as :func:`compute_metrics` takes them: class ids, or scores for regression.

    Binary and regression logits have shape (n,) or (n, 1), k-way logits (n, k); numpy, lists and tensors work.
    """
    if hasattr(logits, "detach"):  # a torch tensor, possibly on GPU or in half precision
        logits = logits.detach().float().cpu().numpy()
    logits = np.asarray(logits, dtype=np.float64)
    if task.num_labels == 1 and logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    expected = (len(logits),) if task.num_labels == 1 else (len(logits), task.num_labels)
    if logits.shape != expected:
        shape = "(n,) or (n, 1)" if task.num_labels == 1 else f"(n, {task.num_labels})"
        raise ValueError(
            f"{task.name} has {task.num_labels} output(s) per pair; expected logits of shape {shape}, "
            f"got {logits.shape}."
        )
    if task.is_regression:
        return logits
    logits = torch.from_numpy(logits if logits.ndim == 2 else logits[:, None])
    return logits_to_output(logits, task.problem_type, "labels").numpy()


def compute_metrics(task: TaskSpec, predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """The task's metrics on a 0-100 scale, plus ``"main"``: accuracy (and F1 of class 1) for classification,
    Pearson and Spearman for regression, as GLUE reports them. For MNLI call it once per dev split."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score

    predictions, labels = np.asarray(predictions), np.asarray(labels)
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
    results = {metric: 100.0 * float(compute[metric]()) for metric in task.metrics}
    return {**results, "main": results[task.main_metric]}
