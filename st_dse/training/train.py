"""Training helpers shared by the recipes: teacher fine-tuning, distillation, and task evaluation of both."""

from __future__ import annotations

import atexit
import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.distributed as dist
from sentence_transformers import (
    CrossEncoder,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
from sentence_transformers.cross_encoder import losses as cross_encoder_losses
from transformers import ProgressCallback, set_seed

from st_dse.data import TaskSpec
from st_dse.hub import resolve_model_name
from st_dse.integrity import atomic_save_dir, foreign_files
from st_dse.losses import DSELoss, ListwiseDistillLoss, check_gold_labels, pack_dse_labels, ranking_label_index
from st_dse.student import build_student, head_learning_rate_mapping
from st_dse.teacher import label_with_teacher
from st_dse.training.config import DistillConfig, TeacherConfig
from st_dse.training.evaluator import PairTaskEvaluator, evaluate_cross_encoder
from st_dse.training.model_card import describe_training

logger = logging.getLogger(__name__)


def sibling_dir(path: str | os.PathLike, suffix: str) -> Path:
    """``<path>-<suffix>``: where a run keeps what belongs beside a saved model (its checkpoints, its teacher)."""
    path = Path(os.path.abspath(path))  # "." and ".." have no name to extend
    return path.with_name(f"{path.name}-{suffix}")


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool, resume: bool, kind: str = "student") -> None:
    """Refuse (FileExistsError), before any work, an output folder st_dse may not save a ``kind`` into: a file, a
    folder holding files that are not part of an st_dse save of that kind (never replaced, whatever the flags), or
    one holding such a save, unless ``overwrite`` or ``resume``."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--output-dir {path} is a file, not a folder: choose another --output-dir.")
    found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if foreign := foreign_files(path, kind):
        raise FileExistsError(
            f"--output-dir {path} holds files that are not part of an st_dse {kind} save ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); st_dse never replaces them, even with --overwrite. Choose "
            "another (new or empty) --output-dir, or move those files away."
        )
    if found and not (overwrite or resume):
        raise FileExistsError(
            f"--output-dir {path} already holds a {kind} ({', '.join(found[:5])}). Choose another --output-dir, pass "
            "--overwrite to replace it, or --resume to continue the run that wrote it."
        )


def _process_group() -> tuple[int, int]:
    """(rank, world size); under torchrun, starts the process group (gloo on CPU, nccl on GPU) the first time."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_end_process_group)
    return dist.get_rank(), dist.get_world_size()


def _end_process_group() -> None:
    """Joins the group's threads at exit: a gloo group left to the interpreter's teardown can abort the process."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every torchrun rank; nothing to wait for in a single process."""
    if _process_group()[1] > 1:
        dist.barrier()


def is_main_process() -> bool:
    """True in the one process that prints summaries and writes files (rank 0, or a single process)."""
    return _process_group()[0] == 0


def label_across_ranks(teacher: CrossEncoder, dataset: datasets.Dataset, **kwargs) -> datasets.Dataset:
    """:func:`~st_dse.label_with_teacher` with the pairs split across torchrun's ranks, each pair scored once.

    Each rank labels its shard into the shared cache (``cache_dir`` must be reachable by every rank), waits for the
    others, then reads every pair's logits from the cache.
    """
    rank, world_size = _process_group()
    if world_size == 1:
        return label_with_teacher(teacher, dataset, **kwargs)
    label_with_teacher(teacher, dataset, shard_index=rank, num_shards=world_size, merge=False, **kwargs)
    dist.barrier()
    # Every rank reads the whole cache; none merges its files while another may still be reading them.
    return label_with_teacher(teacher, dataset, require_cached=True, merge=False, **kwargs)


def _training_arguments(config: TeacherConfig | DistillConfig, checkpoint_dir: Path, resume: bool) -> tuple[dict, Any]:
    """The trainer settings teacher and student share, and the checkpoint to resume from (None: the start)."""
    checkpoint = last_complete_checkpoint(checkpoint_dir) if resume else None
    if resume:
        logger.info("Resuming from %s", checkpoint or "the start: no complete checkpoint found")
    settings = {"num_train_epochs": config.epochs, "per_device_train_batch_size": config.batch_size}
    settings |= {"learning_rate": config.lr, "warmup_steps": config.warmup_ratio, "save_strategy": "epoch"}
    # Under torchrun on a machine without CUDA, transformers sets up gloo DDP only with use_cpu.
    use_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    settings |= {"logging_steps": 50, "seed": config.seed, "report_to": "none", "bf16": config.bf16}
    settings["use_cpu"] = use_cpu
    settings["dataloader_pin_memory"] = torch.cuda.is_available()  # pinning without CUDA only warns, per process
    return {"output_dir": str(checkpoint_dir), **settings}, checkpoint


class NumericProgressCallback(ProgressCallback):
    """transformers' progress bar, with the logged values written as JSON numbers (it writes them as strings)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None:
            shown = {key: round(value, 6) if isinstance(value, float) else value for key, value in logs.items()}
            shown.pop("total_flos", None)
            self.training_bar.write(json.dumps(shown))


def _train(trainer: Any, checkpoint: str | None) -> None:
    if not trainer.args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(NumericProgressCallback)
    trainer.train(resume_from_checkpoint=checkpoint)


def finetune_teacher(
    task: TaskSpec,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None,
    output_dir: str | os.PathLike,
    config: TeacherConfig | None = None,
    resume: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
) -> CrossEncoder:
    """Fine-tune a CrossEncoder teacher on a task's train split and save it to ``output_dir``.

    The teacher outputs raw logits: one for binary tasks (BCE) and regression (MSE on the gold score), k for k-way
    tasks (cross-entropy). Checkpoints go to ``checkpoint_dir``, by default ``<output_dir>-checkpoints``.
    """
    output_dir = Path(output_dir)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else sibling_dir(output_dir, "checkpoints")
    config = config or TeacherConfig()
    set_seed(config.seed)  # the trainer seeds only after the model exists; the fresh classifier must be seeded too
    # A regression teacher's output is the score itself: no sigmoid, and MSE on the raw logit.
    identity = torch.nn.Identity() if task.is_regression else None
    cross_encoder = CrossEncoder(
        resolve_model_name(config.base_model),
        num_labels=task.num_labels,
        max_length=config.max_length,
        activation_fn=identity,
    )
    if task.is_regression:
        loss = cross_encoder_losses.MSELoss(cross_encoder, activation_fn=identity)
    elif task.problem_type == "binary":
        loss = cross_encoder_losses.BinaryCrossEntropyLoss(cross_encoder)
    else:
        loss = cross_encoder_losses.CrossEntropyLoss(cross_encoder)
    settings, checkpoint = _training_arguments(config, checkpoint_dir, resume)
    mapping = {r"(^|\.)classifier\.": config.classifier_lr} if config.classifier_lr else None
    args = CrossEncoderTrainingArguments(**settings, learning_rate_mapping=mapping, save_total_limit=1)
    train = train_dataset.select_columns(["sentence1", "sentence2", "label"])
    _train(CrossEncoderTrainer(model=cross_encoder, args=args, train_dataset=train, loss=loss), checkpoint)
    metrics = evaluate_cross_encoder(cross_encoder, task, eval_dataset) if eval_dataset is not None else None
    if metrics is not None:
        logger.info("Teacher dev metrics: %s", metrics)

    def write(folder: Path) -> None:
        cross_encoder.save(str(folder))
        if metrics is not None:
            (folder / "dev_metrics.json").write_text(json.dumps(metrics, indent=2))

    atomic_save_dir(output_dir, write, kind="teacher")  # all or nothing: no new weights beside old metrics
    return cross_encoder


def last_complete_checkpoint(directory: Path) -> str | None:
    """The newest ``checkpoint-N`` with its ``trainer_state.json`` (written last, so it is whole), or None."""
    steps = [
        int(path.name.split("-")[-1])
        for path in Path(directory).glob("checkpoint-*")
        if path.name.split("-")[-1].isdigit() and (path / "trainer_state.json").is_file()
    ]
    return str(Path(directory) / f"checkpoint-{max(steps)}") if steps else None


def distill_student(
    task: TaskSpec,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None,
    checkpoint_dir: str | os.PathLike,
    config: DistillConfig | None = None,
    resume: bool = False,
    ranking_lists: datasets.Dataset | None = None,
) -> SentenceTransformer:
    """Train a DSE student on teacher-labelled pairs (``teacher_logits`` column) and return it, best checkpoint loaded.

    Checkpoints go to ``checkpoint_dir`` (outside the folder the student is saved to). With
    ``config.distillation_weight=0`` this is the gold-only baseline and needs no ``teacher_logits`` column. Rows
    whose gold label is None train on the teacher's logits alone. Gold labels that do not fit ``task`` are refused.

    With ``config.ranking_weight > 0``, ``ranking_lists`` (query, candidates and their teacher logits, see
    :mod:`st_dse.data.candidates`) train the same student with :class:`~st_dse.losses.ListwiseDistillLoss`, their
    batches drawn among the pairs' in proportion to their number.
    """
    config = config or DistillConfig()
    if len(train_dataset) == 0:
        raise ValueError("The dataset has no rows: there is nothing to train on. Check the data source.")
    if config.ranking_weight > 0 and ranking_lists is None:
        raise ValueError(
            "ranking_weight > 0 trains on candidate lists, but none were given: build them with "
            "st_dse.data.candidate_lists, label them with the teacher, and pass ranking_lists=..."
        )
    has_gold = "label" in train_dataset.column_names
    if has_gold:
        check_gold_labels(train_dataset["label"], task.problem_type, task.num_labels)
    set_seed(config.seed)  # the trainer seeds only after the model exists; the fresh PairHead must be seeded too
    student = build_student(
        config.student,
        num_labels=task.num_labels,
        problem_type=task.problem_type,
        head_type=config.head,
        hidden_dim=config.hidden_dim,
        keep_normalize=config.keep_normalize,
        pooling_layers=config.pooling_layers,
        label_names=list(task.label_names) if not task.is_regression and task.label_names else None,
    )
    student.max_seq_length = config.max_seq_length
    # Before the trainer exists: its card callback extends what is set here with the data's statistics.
    describe_training(student, task, base_model=config.student)
    if config.distillation_weight > 0:
        train = pack_dse_labels(train_dataset, gold_column="label" if has_gold else None)
    else:
        train = train_dataset.select_columns(["sentence1", "sentence2", "label"])
    evaluator = PairTaskEvaluator(task, eval_dataset) if eval_dataset is not None else None
    settings, checkpoint = _training_arguments(config, Path(checkpoint_dir), resume)
    args = SentenceTransformerTrainingArguments(
        **settings,
        eval_strategy="epoch" if evaluator else "no",
        save_total_limit=2,
        load_best_model_at_end=evaluator is not None,
        metric_for_best_model=f"eval_{task.name}_dev_{task.main_metric}" if evaluator else None,
        data_seed=config.seed,
        # DSELoss calls the PairHead outside the model's forward; DDP accepts that only with a static graph.
        ddp_static_graph=True,
        learning_rate_mapping=head_learning_rate_mapping(student, config.head_lr),
    )
    loss = DSELoss(student, config.distillation_weight, config.symmetric, config.teacher_logit_scale)
    if config.ranking_weight > 0:
        ranking = ListwiseDistillLoss(student, config.ranking_weight, config.temperature, ranking_label_index(task))
        train, loss = datasets.DatasetDict(pairs=train, lists=ranking_lists), {"pairs": loss, "lists": ranking}
    trainer = SentenceTransformerTrainer(model=student, args=args, train_dataset=train, loss=loss, evaluator=evaluator)
    _train(trainer, checkpoint)
    return student
