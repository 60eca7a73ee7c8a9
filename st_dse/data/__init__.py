"""Task data: task shapes and benchmarks, your own pairs (read and checked), teacher-labelled augmentation and
candidate lists for listwise distillation."""

from __future__ import annotations

from st_dse.data.augment import STRATEGIES, augment_pairs, with_augmented
from st_dse.data.benchmarks import TASKS, Benchmark, get_task, load_task, resolve_data_dir, standardize_hub_dataset
from st_dse.data.candidates import candidate_lists, list_labels, list_pairs
from st_dse.data.pairs import check_pairs
from st_dse.data.tasks import TaskSpec, compute_metrics, logits_to_predictions

__all__ = [
    "STRATEGIES",
    "TASKS",
    "Benchmark",
    "TaskSpec",
    "augment_pairs",
    "candidate_lists",
    "check_pairs",
    "compute_metrics",
    "get_task",
    "list_labels",
    "list_pairs",
    "load_task",
    "logits_to_predictions",
    "resolve_data_dir",
    "standardize_hub_dataset",
    "with_augmented",
]
