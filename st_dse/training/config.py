"""The settings of a run, each declared once: the recipes parse these dataclasses, the train functions read them.

Impossible values are refused when an object is made, with a message naming the option and its allowed range.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from transformers import HfArgumentParser

from st_dse.checks import int_at_least, one_of
from st_dse.data.augment import STRATEGIES
from st_dse.hub import DEFAULT_MODEL
from st_dse.losses.dse_loss import is_number

DEFAULT_AUGMENT = 2.0  # new pairs per train pair when a trained teacher is given
CACHE_HELP = "teacher-logit cache (default: $ST_DSE_CACHE or ~/.cache/st_dse)"


def _option(default: Any, help: str, **kwargs) -> Any:  # noqa: A002 -- argparse's name
    return field(default=default, metadata={"help": help}, **kwargs)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


POSITIVE, NON_NEGATIVE, SHARE = (0.0, math.inf, True), (0.0, math.inf, False), (0.0, 1.0, False)


def check_fields(config: object, ints: Sequence[str] = (), numbers: dict[str, tuple] | None = None) -> None:
    """Refuse impossible values of ``config``'s fields with a ValueError naming the option (None passes): ``ints`` must
    be positive integers, ``numbers`` finite numbers in their ``(low, high, above_low)`` range: ``> low`` (``>= low``
    when not ``above_low``) and ``<= high``; a ``seed`` must be one numpy and torch accept."""
    for name in ints:
        if getattr(config, name) is not None:
            int_at_least(_flag(name), getattr(config, name))
    for name, (low, high, above_low) in (numbers or {}).items():
        value = getattr(config, name)
        inside = is_number(value) and (low < value if above_low else low <= value) and value <= high
        if value is not None and not inside:
            wanted = f"in [{low:g}, {high:g}]" if high < math.inf else f"a number {'>' if above_low else '>='} {low:g}"
            raise ValueError(f"{_flag(name)} must be {wanted}, got {value!r}.")
    if not 0 <= getattr(config, "seed", 0) < 2**32:
        raise ValueError(f"--seed must be between 0 and 2**32 - 1, got {config.seed}.")


@dataclass
class TeacherConfig:
    """How a CrossEncoder teacher is fine-tuned on the task's gold labels."""

    base_model: str = _option(DEFAULT_MODEL, "encoder to fine-tune as a cross-encoder")
    epochs: int = _option(3, "training epochs")
    batch_size: int = _option(32, "training batch size")
    lr: float = _option(5e-5, "encoder learning rate")
    classifier_lr: float | None = _option(1e-3, "learning rate of the new classifier layer (None: the encoder's)")
    warmup_ratio: float = _option(0.1, "share of steps with a rising learning rate")
    max_length: int = _option(128, "maximum tokens per pair")
    seed: int = _option(42, "random seed")
    bf16: bool = _option(False, "bfloat16 mixed precision (GPUs that support it)")

    def __post_init__(self) -> None:
        numbers = {"lr": POSITIVE, "classifier_lr": POSITIVE, "warmup_ratio": SHARE}
        check_fields(self, ("epochs", "batch_size", "max_length"), numbers)


@dataclass
class DistillConfig:
    """How a DSE student is trained: student and head, loss, optimisation, teacher, augmentation."""

    student: str = _option(DEFAULT_MODEL, "the student's sentence encoder (Hub id or folder)")
    teacher: str | None = _option(
        None, "a fine-tuned CrossEncoder, Hub id or folder (default: train one from --teacher-base)"
    )
    teacher_base: str = _option(DEFAULT_MODEL, "base model when fine-tuning the teacher")
    teacher_epochs: int = _option(3, "epochs when fine-tuning the teacher")
    epochs: int = _option(4, "student training epochs")
    batch_size: int = _option(32, "student training batch size")
    label_batch_size: int = _option(32, "teacher batch size for labelling (larger is faster on a GPU)")
    lr: float = _option(5e-5, "encoder learning rate")
    head_lr: float = _option(1e-3, "PairHead learning rate")
    distillation_weight: float = _option(0.5, "w in (1 - w) * gold + w * distillation (0: gold only, 1: teacher only)")
    head: Literal["concat", "factorized"] = _option("concat", "PairHead type")
    hidden_dim: int = _option(512, "width of the PairHead's hidden layer")
    symmetric: bool = _option(False, "also train on each pair in the other order")
    keep_normalize: bool = _option(False, "keep the base model's Normalize module (dropped by default)")
    pooling_layers: int | None = _option(
        None, "mean-pool the last K layers (DSE paper: 4; load with st_dse.load_student)"
    )
    teacher_logit_scale: float = _option(1.0, "multiply classifier teachers' logits by this in the distillation term")
    warmup_ratio: float = _option(0.1, "share of steps with a rising learning rate")
    max_seq_length: int = _option(128, "maximum tokens per sentence")
    bf16: bool = _option(False, "bfloat16 mixed precision (GPU); teacher stays float32")
    augment: float | None = _option(
        None, "add FACTOR x (train size) teacher-labelled pairs (default: 2 with --teacher)"
    )
    augment_strategies: list[str] = field(
        default_factory=lambda: list(STRATEGIES), metadata={"help": f"augmentation strategies, of {list(STRATEGIES)}"}
    )
    ranking_weight: float = _option(
        0.0, "weight of the listwise ranking term on teacher-labelled candidate lists (0: off)"
    )
    list_size: int = _option(32, "candidates per list for the ranking term")
    ranking_queries: int = _option(1000, "training sentences used as queries of candidate lists")
    temperature: float = _option(1.0, "softmax temperature of the ranking term")
    seed: int = _option(42, "random seed")
    cache_dir: str | None = _option(None, CACHE_HELP)

    def __post_init__(self) -> None:
        ints = ("teacher_epochs", "epochs", "batch_size", "label_batch_size", "hidden_dim", "max_seq_length")
        numbers = dict.fromkeys(("lr", "head_lr", "teacher_logit_scale", "temperature"), POSITIVE)
        numbers |= {"ranking_weight": NON_NEGATIVE, "distillation_weight": SHARE, "warmup_ratio": SHARE}
        check_fields(self, (*ints, "pooling_layers", "ranking_queries"), numbers | {"augment": NON_NEGATIVE})
        int_at_least("--list-size", self.list_size, 2)  # a softmax over one candidate has nothing to rank
        if self.ranking_weight > 0 and self.distillation_weight == 0:
            raise ValueError(
                "--ranking-weight distils the teacher's ranking; a gold-only run (--distillation-weight 0) has no "
                "teacher. Drop --ranking-weight, or give the run a teacher (--distillation-weight > 0)."
            )
        for strategy in self.augment_strategies:
            one_of("--augment-strategies", strategy, STRATEGIES)
        if self.augment is None:
            # Augmentation pays off with a strong teacher; the quick teacher a bare run fine-tunes is no better than
            # gold labels, and labelling plus 3x the training steps would about double the one-command run.
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
    overwrite: bool = _option(False, "replace a model or results already in --output-dir")
    resume: bool = _option(False, "continue the same run from its last checkpoint")
    push_to_hub: str | None = _option(None, "also upload the model to this Hub repository")
    keep_checkpoints: bool = _option(
        False, "keep the trainer's checkpoints after a successful run (deleted by default)"
    )


@dataclass
class LabelConfig:
    """Which teacher labels which split, in which shard, into which cache."""

    teacher: str = field(metadata={"help": "the fine-tuned CrossEncoder (a path or Hub id)"})
    split: str = _option("train", "which split of --task to label")
    cache_dir: str | None = _option(None, CACHE_HELP)
    batch_size: int = _option(32, "teacher batch size")
    shard_index: int | None = _option(None, "which shard to label, 0 to --num-shards - 1")
    num_shards: int | None = _option(None, "how many shards the pairs are split into")
    merge: bool = _option(False, "label nothing: check that every pair is cached, and merge the cache files")

    def __post_init__(self) -> None:
        check_fields(self, ("batch_size", "num_shards"))
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
    parser.set_defaults(**(defaults or {}))
    try:
        return parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


def config_fields(config: object) -> dict[str, object]:
    """A config object's fields as a JSON-ready dict (what the run summary records)."""
    return {item.name: getattr(config, item.name) for item in fields(config)}
