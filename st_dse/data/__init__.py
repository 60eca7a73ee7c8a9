"""Task data: task shapes and benchmarks, readers of your own pairs, pair checks and teacher-labelled augmentation."""

from __future__ import annotations

from st_dse.data.augment import STRATEGIES, augment_pairs, with_augmented
from st_dse.data.benchmarks import TASKS, Benchmark, get_task, load_task, resolve_data_dir, standardize_hub_dataset
from st_dse.data.pairs import check_pairs
from st_dse.data.tasks import TaskSpec, compute_metrics, logits_to_predictions

__all__ = [
    "STRATEGIES",
    "TASKS",
    "Benchmark",
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
