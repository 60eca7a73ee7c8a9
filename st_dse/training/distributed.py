"""Multi-process runs (``torchrun``): split teacher labelling across the ranks, write files and summaries once."""

from __future__ import annotations

import logging
import os

import datasets
import torch
import torch.distributed as dist

from st_dse.teacher import label_with_teacher

logger = logging.getLogger(__name__)


def world_size() -> int:
    """How many processes run this job (``WORLD_SIZE`` under torchrun, else 1)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True in the one process that prints summaries and writes files (rank 0, or a single process)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank; starts the process group (gloo on CPU, nccl on GPU) the first time under torchrun."""
    if world_size() == 1:
        return
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    dist.barrier()


def label_across_ranks(teacher, dataset: datasets.Dataset, **kwargs) -> datasets.Dataset:
    """:func:`~st_dse.label_with_teacher` with the pairs split across torchrun's ranks.

    Each rank labels its share of the pairs (by a hash of their text) into the shared cache, waits for the others, and
    then reads every pair's logits from the cache: each pair is scored by the teacher exactly once. A single process
    labels everything itself. ``kwargs`` go to :func:`~st_dse.label_with_teacher` (``cache_dir`` must be a folder
    every rank can reach).
    """
    size = world_size()
    if size == 1:
        return label_with_teacher(teacher, dataset, **kwargs)
    label_with_teacher(teacher, dataset, shard_index=rank(), num_shards=size, merge=False, **kwargs)
    barrier()
    # Every rank reads the whole cache; none merges its files while another may still be reading them.
    return label_with_teacher(teacher, dataset, require_cached=True, merge=False, **kwargs)
