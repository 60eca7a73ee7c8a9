"""Task metrics of teachers and students, and the evaluator that picks the best checkpoint in training."""

from __future__ import annotations

import logging
from typing import Any

import datasets
import numpy as np
from sentence_transformers import (
    CrossEncoder,
    SentenceTransformer,
)
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from st_dse.data.tasks import TaskSpec, compute_metrics, logits_to_predictions, require_task_spec
from st_dse.inference.scoring import score_pairs
from st_dse.teacher import raw_logits

logger = logging.getLogger(__name__)


def task_metrics(task: TaskSpec, logits: np.ndarray, labels) -> dict[str, float]:
    """Official metrics of ``task`` (0-100 scale) from a model's raw logits."""
    return compute_metrics(task, logits_to_predictions(task, logits), list(labels))


def relative_degradation(teacher_metrics: dict[str, float], student_metrics: dict[str, float], metric: str) -> float:
    """How much worse the student is than the teacher on ``metric``, in percent of the teacher's value."""
    return 100 * (teacher_metrics[metric] - student_metrics[metric]) / teacher_metrics[metric]


def evaluate_student(model: SentenceTransformer, task: TaskSpec, dataset: datasets.Dataset, batch_size: int = 64):
    """Task metrics of a student's PairHead on ``dataset`` (columns sentence1, sentence2, label)."""
    logits = score_pairs(model, dataset["sentence1"], dataset["sentence2"], batch_size=batch_size)
    return task_metrics(task, logits, dataset["label"])


def evaluate_cross_encoder(cross_encoder: CrossEncoder, task: TaskSpec, dataset: datasets.Dataset, batch_size=64):
    """Task metrics of a cross-encoder teacher on ``dataset``, from its raw logits."""
    pairs = list(zip(dataset["sentence1"], dataset["sentence2"]))
    return task_metrics(task, raw_logits(cross_encoder, pairs, batch_size=batch_size), dataset["label"])


class PairTaskEvaluator(BaseEvaluator):
    """Evaluates a student's PairHead on a task's dev set in training; its main metric picks the best checkpoint."""

    def __init__(self, task: TaskSpec, dataset: datasets.Dataset, name: str = "dev", batch_size: int = 64):
        super().__init__()
        self.task = require_task_spec(task)
        self.dataset = dataset
        self.name = name
        self.batch_size = batch_size
        self.primary_metric = self.task.main_metric

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        metrics = evaluate_student(model, self.task, self.dataset, batch_size=self.batch_size)
        metrics.pop("main", None)
        logger.info("%s %s (epoch %s, step %s): %s", self.task.name, self.name, epoch, steps, metrics)
        metrics = self.prefix_name_to_metrics(metrics, f"{self.task.name}_{self.name}")
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict[str, Any]:
        return {"task": self.task.name}
