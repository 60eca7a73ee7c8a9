"""The shape of a sentence-pair task (problem type, labels, metrics) and its official metrics.

Binary tasks have one head output (class 1 when the logit is > 0), k-way tasks k outputs, regression one (the score).
Where a registered benchmark's data lives is a separate object, :class:`st_dse.data.benchmarks.Benchmark`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from st_dse.checks import one_of
from st_dse.modules.pair_head import logits_to_output

if TYPE_CHECKING:
    from st_dse.data.benchmarks import Benchmark

PROBLEM_TYPES = ("binary", "multiclass", "regression")


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
    num_labels = num_logits if kind == "multiclass" else 1
    return TaskSpec(name, description, kind, num_labels, names, metrics, metrics[0])


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
