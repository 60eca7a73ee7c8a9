"""The settings of a run, each declared once: the recipes parse these dataclasses, the train functions read them.

Impossible values are refused when an object is made, with a message naming the option and its allowed range.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

from transformers import HfArgumentParser

from st_dse.data.augment import STRATEGIES
from st_dse.hub import DEFAULT_MODEL

DEFAULT_AUGMENT = 2.0  # new pairs per train pair when a trained teacher is given


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_positive(name: str, value: float | int | None, allow_zero: bool = False) -> None:
    """Raise a ValueError naming option ``--name`` unless ``value`` is None or a finite number > 0 (or >= 0)."""
    if value is not None:
        check_range(name, value, 0.0, math.inf, bound=">= 0" if allow_zero else "> 0", allow_low=allow_zero)


def check_range(name: str, value: float, low: float, high: float, bound: str = "", allow_low: bool = True) -> None:
    """Raise a ValueError naming option ``--name`` unless ``low <= value <= high`` (and finite)."""
    inside = low <= value <= high and math.isfinite(value) and (allow_low or value > low)
    if isinstance(value, bool) or not inside:
        raise ValueError(
            f"{_option(name)} must be {f'a number {bound}' if bound else f'in [{low:g}, {high:g}]'}, got {value!r}."
        )


@dataclass
class TeacherConfig:
    """How a CrossEncoder teacher is fine-tuned on the task's gold labels."""

    base_model: str = field(default=DEFAULT_MODEL, metadata={"help": "encoder to fine-tune as a cross-encoder"})
    epochs: int = field(default=3, metadata={"help": "training epochs"})
    batch_size: int = field(default=32, metadata={"help": "training batch size"})
    lr: float = field(default=5e-5, metadata={"help": "encoder learning rate"})
    classifier_lr: float | None = field(
        default=1e-3, metadata={"help": "learning rate of the fresh classification layer (None: the encoder's)"}
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps with a rising learning rate"})
    max_length: int = field(default=128, metadata={"help": "maximum tokens per pair"})
    seed: int = field(default=42, metadata={"help": "random seed"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPUs that support it)"})

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lr", "max_length"):
            check_positive(name, getattr(self, name))
        check_positive("classifier_lr", self.classifier_lr)
        check_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)


@dataclass
class DistillConfig:
    """How a DSE student is trained: student and head, loss, optimisation, teacher, augmentation."""

    student: str = field(default=DEFAULT_MODEL, metadata={"help": "the student's sentence encoder (Hub id or folder)"})
    teacher: str | None = field(
        default=None,
        metadata={"help": "a fine-tuned CrossEncoder (Hub id or folder); default: fine-tune one from --teacher-base"},
    )
    teacher_base: str = field(default=DEFAULT_MODEL, metadata={"help": "base model when fine-tuning the teacher"})
    teacher_epochs: int = field(default=3, metadata={"help": "epochs when fine-tuning the teacher"})
    epochs: int = field(default=4, metadata={"help": "student training epochs"})
    batch_size: int = field(default=32, metadata={"help": "student training batch size"})
    label_batch_size: int = field(
        default=32, metadata={"help": "teacher batch size for labelling (larger is faster on a GPU)"}
    )
    lr: float = field(default=5e-5, metadata={"help": "encoder learning rate"})
    head_lr: float = field(default=1e-3, metadata={"help": "PairHead learning rate"})
    distillation_weight: float = field(
        default=0.5, metadata={"help": "w in (1 - w) * gold + w * distillation: 0 = gold-only, 1 = teacher-only"}
    )
    head: Literal["concat", "factorized"] = field(default="concat", metadata={"help": "PairHead type"})
    hidden_dim: int = field(default=512, metadata={"help": "width of the PairHead's hidden layer"})
    symmetric: bool = field(default=False, metadata={"help": "also train on each pair in the other order"})
    keep_normalize: bool = field(
        default=False, metadata={"help": "keep the base model's Normalize module (dropped by default)"}
    )
    pooling_layers: int | None = field(
        default=None,
        metadata={"help": "mean-pool the last K layers (original DSE: 4; then load with st_dse.load_student only)"},
    )
    teacher_logit_scale: float = field(
        default=1.0, metadata={"help": "multiply the teacher's logits by this in the distillation term (classifiers)"}
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps with a rising learning rate"})
    max_seq_length: int = field(default=128, metadata={"help": "maximum tokens per sentence"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPU); teacher stays float32"})
    augment: float | None = field(
        default=None,
        metadata={
            "help": "add FACTOR x (train size) teacher-labelled pairs of train sentences (default: 2 with --teacher)"
        },
    )
    augment_strategies: list[str] = field(
        default_factory=lambda: list(STRATEGIES), metadata={"help": f"augmentation strategies, of {list(STRATEGIES)}"}
    )
    seed: int = field(default=42, metadata={"help": "random seed"})
    cache_dir: str | None = field(
        default=None, metadata={"help": "teacher-logit cache (default: $ST_DSE_CACHE or ~/.cache/st_dse)"}
    )

    def __post_init__(self) -> None:
        for name in ("teacher_epochs", "epochs", "batch_size", "label_batch_size", "lr", "head_lr", "hidden_dim"):
            check_positive(name, getattr(self, name))
        check_positive("max_seq_length", self.max_seq_length)
        check_positive("pooling_layers", self.pooling_layers)
        check_positive("teacher_logit_scale", self.teacher_logit_scale)
        check_range("distillation_weight", self.distillation_weight, 0.0, 1.0)
        check_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        check_positive("augment", self.augment, allow_zero=True)
        unknown = sorted(set(self.augment_strategies) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"--augment-strategies: unknown {unknown}; choose from {list(STRATEGIES)}.")
        if self.augment is None:
            # Augmentation pays off with a strong teacher (mpnet: +2.7 accuracy on MRPC, +3.0 on SICK-E); the quick
            # teacher a bare run fine-tunes from the student's own base is no better than gold labels, and labelling
            # plus 3x the training steps would about double the one-command run.
            self.augment = DEFAULT_AUGMENT if self.teacher and self.distillation_weight > 0 else 0.0
        if self.augment > 0 and self.distillation_weight == 0:
            raise ValueError(
                "--augment adds pairs that only the teacher labels; a gold-only run (--distillation-weight 0) cannot "
                "learn from them. Drop --augment, or give the run a teacher (--distillation-weight > 0)."
            )


@dataclass
class RunConfig:
    """Where a run's outputs go, and what may happen to what is already there."""

    output_dir: str = field(metadata={"help": "folder for the trained model (created; refused if it holds one)"})
    overwrite: bool = field(default=False, metadata={"help": "replace a model or results already in --output-dir"})
    resume: bool = field(default=False, metadata={"help": "continue the same run from its last checkpoint"})
    push_to_hub: str | None = field(default=None, metadata={"help": "also upload the model to this Hub repository"})


@dataclass
class LabelConfig:
    """Which teacher labels which split, in which shard, into which cache."""

    teacher: str = field(metadata={"help": "the fine-tuned CrossEncoder (a path or Hub id)"})
    split: str = field(default="train", metadata={"help": "which split of --task to label"})
    cache_dir: str | None = field(
        default=None, metadata={"help": "teacher-logit cache (default: $ST_DSE_CACHE or ~/.cache/st_dse)"}
    )
    batch_size: int = field(default=32, metadata={"help": "teacher batch size"})
    shard_index: int | None = field(default=None, metadata={"help": "which shard to label, 0 to --num-shards - 1"})
    num_shards: int | None = field(default=None, metadata={"help": "how many shards the pairs are split into"})
    merge: bool = field(
        default=False, metadata={"help": "label nothing: check that every pair is cached, and merge the cache files"}
    )

    def __post_init__(self) -> None:
        check_positive("batch_size", self.batch_size)
        check_positive("num_shards", self.num_shards)
        problem = None
        if (self.shard_index is None) != (self.num_shards is None) and not self.merge:
            problem = "--shard-index and --num-shards go together."
        elif self.merge and self.shard_index is not None:
            problem = "--merge checks every shard; leave out --shard-index."
        elif self.shard_index is not None and not 0 <= self.shard_index < self.num_shards:
            problem = f"--shard-index must be in [0, {self.num_shards - 1}], got {self.shard_index}."
        if problem:
            raise ValueError(problem)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps a recipe's Usage block as written and shows every option's default."""


def parse_config(
    config_classes: Sequence[type],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    defaults: dict[str, object] | None = None,
) -> tuple:
    """Parse command-line options into one object per class of ``config_classes``.

    ``defaults`` overrides field defaults (a per-task recipe fixing ``task``, say). An impossible value ends the
    program with one line naming the option (exit status 2).
    """
    parser = HfArgumentParser(list(config_classes), description=description, formatter_class=_HelpFormatter)
    if defaults:
        parser.set_defaults(**defaults)
    try:
        return parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


def config_fields(config: object) -> dict[str, object]:
    """A config object's fields as a JSON-ready dict (what the run summary records)."""
    return {item.name: getattr(config, item.name) for item in fields(config)}


__all__ = [
    "DEFAULT_AUGMENT",
    "RunConfig",
    "DistillConfig",
    "LabelConfig",
    "TeacherConfig",
    "check_positive",
    "check_range",
    "config_fields",
    "parse_config",
]
