"""Task data: the registry of sentence-pair tasks, their readers, pair checks and teacher-labelled augmentation."""

from __future__ import annotations

from st_dse.data.augment import STRATEGIES, augment_pairs, with_augmented
from st_dse.data.pairs import check_pairs
from st_dse.data.readers import load_task, resolve_data_dir, standardize_hub_dataset
from st_dse.data.tasks import TASKS, TaskSpec, compute_metrics, get_task, logits_to_predictions

__all__ = [
    "STRATEGIES",
    "TASKS",
    "TaskSpec",
    "augment_pairs",
    "check_pairs",
    "compute_metrics",
    "get_task",
    "load_task",
    "logits_to_predictions",
    "resolve_data_dir",
    "standardize_hub_dataset",
    "with_augmented",
]
