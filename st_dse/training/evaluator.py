"""Task metrics of teachers and students, the evaluator that picks the best checkpoint, student-teacher agreement."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from st_dse.data import TaskSpec, compute_metrics, logits_to_predictions
from st_dse.inference.scoring import score_pairs
from st_dse.teacher import raw_logits

logger = logging.getLogger(__name__)
EVAL_BATCH_SIZE = 64  # one batch size for every dev evaluation, so that the recipe's metrics equal the evaluator's


def task_metrics(task: TaskSpec, logits: np.ndarray, labels) -> dict[str, float]:
    """Official metrics of ``task`` (0-100 scale) from a model's raw logits."""
    return compute_metrics(task, logits_to_predictions(task, logits), list(labels))


def relative_degradation(teacher_metrics: dict[str, float], student_metrics: dict[str, float], metric: str) -> float:
    """How much worse the student is than the teacher on ``metric``, in percent of the teacher's value."""
    return 100 * (teacher_metrics[metric] - student_metrics[metric]) / teacher_metrics[metric]


def evaluate_student(
    model: SentenceTransformer, task: TaskSpec, dataset: datasets.Dataset, batch_size=EVAL_BATCH_SIZE
):
    """Task metrics of a student's PairHead on ``dataset`` (columns sentence1, sentence2, label)."""
    logits = score_pairs(model, dataset["sentence1"], dataset["sentence2"], batch_size=batch_size)
    return task_metrics(task, logits, dataset["label"])


def evaluate_cross_encoder(
    cross_encoder: CrossEncoder, task: TaskSpec, dataset: datasets.Dataset, batch_size=EVAL_BATCH_SIZE
):
    """Task metrics of a cross-encoder teacher on ``dataset``, from its raw logits."""
    pairs = list(zip(dataset["sentence1"], dataset["sentence2"]))
    return task_metrics(task, raw_logits(cross_encoder, pairs, batch_size=batch_size), dataset["label"])


class PairTaskEvaluator(BaseEvaluator):
    """Evaluates a student's PairHead on a task's dev set in training; its main metric picks the best checkpoint."""

    def __init__(self, task: TaskSpec, dataset: datasets.Dataset, name: str = "dev", batch_size=EVAL_BATCH_SIZE):
        super().__init__()
        self.task, self.dataset, self.name, self.batch_size = task, dataset, name, batch_size
        self.primary_metric = task.main_metric

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        metrics = evaluate_student(model, self.task, self.dataset, batch_size=self.batch_size)
        metrics.pop("main", None)
        logger.info("%s %s (epoch %s, step %s): %s", self.task.name, self.name, epoch, steps, metrics)
        metrics = self.prefix_name_to_metrics(metrics, f"{self.task.name}_{self.name}")
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict[str, Any]:
        return {"task": self.task.name}


def agreement_report(student_logits: Any, teacher_logits: Any, task: TaskSpec, gold: Sequence | None = None) -> dict:
    """How closely the student follows its teacher, and how both do on the rows with a gold label.

    Args:
        student_logits, teacher_logits: ``(n, num_labels)`` or ``(n,)`` raw logits (numpy, lists or tensors).
        task: the task, e.g. from :func:`task_from_teacher`.
        gold: optional gold labels; None or NaN marks a row without one.

    Returns:
        A dict: ``num_pairs``, ``spearman`` (of the logits, averaged over columns) and ``spearman_per_logit``; for
        classifiers ``label_agreement``; with ``gold``, ``num_gold`` and ``student_metrics`` / ``teacher_metrics``
        (0-100 on the rows with gold, None when there are none).
    """
    student, teacher = _logit_matrix(student_logits), _logit_matrix(teacher_logits)
    if student.shape != teacher.shape:
        raise ValueError(f"Student logits {student.shape} and teacher logits {teacher.shape} differ in shape.")
    per_logit = [_spearman(student[:, column], teacher[:, column]) for column in range(student.shape[1])]
    report: dict[str, Any] = {
        "task": task.name,
        "problem_type": task.problem_type,
        "num_pairs": len(student),
        "spearman": float(np.mean(per_logit)) if per_logit else math.nan,
        "spearman_per_logit": per_logit,
    }
    student_predictions = logits_to_predictions(task, student)
    teacher_predictions = logits_to_predictions(task, teacher)
    if not task.is_regression:
        same = student_predictions == teacher_predictions
        report["label_agreement"] = float(same.mean()) if len(same) else math.nan
    if gold is not None:
        report.update(_gold_metrics(task, student_predictions, teacher_predictions, gold))
    return report


def _logit_matrix(logits: Any) -> np.ndarray:
    if hasattr(logits, "detach"):  # a torch tensor
        logits = logits.detach().float().cpu().numpy()
    logits = np.asarray(logits, dtype=np.float64)
    return logits.reshape(-1, 1) if logits.ndim == 1 else logits


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant column gives NaN, with a warning
        return float(spearmanr(a, b).statistic)


def _gold_metrics(task: TaskSpec, student: np.ndarray, teacher: np.ndarray, gold: Sequence) -> dict[str, Any]:
    values = np.array([math.nan if value is None else float(value) for value in gold], dtype=np.float64)
    has_gold = ~np.isnan(values)
    values = values[has_gold] if task.is_regression else values[has_gold].astype(np.int64)
    if not has_gold.any():
        return {"num_gold": 0, "student_metrics": None, "teacher_metrics": None}
    return {
        "num_gold": int(has_gold.sum()),
        "student_metrics": compute_metrics(task, student[has_gold], values),
        "teacher_metrics": compute_metrics(task, teacher[has_gold], values),
    }


def format_report(report: Mapping[str, Any]) -> str:
    """A few lines summarising :func:`agreement_report`'s dict for people."""
    lines = [f"Student vs. teacher on {report['num_pairs']:,} pairs ({report['task']}, {report['problem_type']}):"]
    spearman = f"  logit Spearman {report['spearman']:.3f}"
    if len(report["spearman_per_logit"]) > 1:
        spearman += f" (per logit: {', '.join(f'{value:.3f}' for value in report['spearman_per_logit'])})"
    lines.append(spearman)
    if "label_agreement" in report:
        lines.append(f"  same predicted label on {100 * report['label_agreement']:.1f}% of pairs")
    if report.get("student_metrics"):
        lines.append(f"  on the {report['num_gold']:,} pairs with gold labels (0-100):")
        for who in ("student", "teacher"):
            metrics = report[f"{who}_metrics"]
            shown = ", ".join(f"{metric} {value:.2f}" for metric, value in metrics.items() if metric != "main")
            lines.append(f"    {who}: {shown}")
    elif "num_gold" in report:
        lines.append("  no pair has a gold label")
    return "\n".join(lines)
