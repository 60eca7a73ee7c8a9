"""Training: fine-tune a teacher, distil a student, evaluate both on a task, save the student with its card."""

from __future__ import annotations

from st_dse.training.evaluator import (
    PairTaskEvaluator,
    evaluate_cross_encoder,
    evaluate_student,
    relative_degradation,
    task_metrics,
)
from st_dse.training.model_card import save_student
from st_dse.training.train import distill_student, finetune_teacher, last_complete_checkpoint

__all__ = [
    "PairTaskEvaluator",
    "distill_student",
    "evaluate_cross_encoder",
    "evaluate_student",
    "finetune_teacher",
    "last_complete_checkpoint",
    "relative_degradation",
    "save_student",
    "task_metrics",
]
