"""Training: fine-tune a teacher, distil a student, evaluate both on a task, save the student with its card."""

from __future__ import annotations

from st_dse.training.evaluator import (
    PairTaskEvaluator,
    agreement_report,
    evaluate_cross_encoder,
    evaluate_student,
    format_report,
    relative_degradation,
    task_metrics,
)
from st_dse.training.model_card import save_student
from st_dse.training.train import (
    barrier,
    check_output_dir,
    distill_student,
    finetune_teacher,
    is_main_process,
    label_across_ranks,
    last_complete_checkpoint,
)

__all__ = ["PairTaskEvaluator", "agreement_report", "barrier", "check_output_dir", "distill_student"]
__all__ += ["evaluate_cross_encoder", "evaluate_student", "finetune_teacher", "format_report", "is_main_process"]
__all__ += ["label_across_ranks", "last_complete_checkpoint", "relative_degradation", "save_student", "task_metrics"]
