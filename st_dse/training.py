"""Training helpers shared by the recipes: teacher fine-tuning, distillation, and task evaluation of both."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from sentence_transformers import (
    CrossEncoder,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
from sentence_transformers.cross_encoder import losses as cross_encoder_losses
from transformers import set_seed

from st_dse.head import build_student, get_pair_head, head_learning_rate_mapping
from st_dse.loss import DSE_CITATION, DSELoss, pack_dse_labels
from st_dse.models import DEFAULT_MODEL, resolve_model_name
from st_dse.scoring import score_pairs
from st_dse.tasks import TaskSpec, compute_metrics, get_task, logits_to_predictions
from st_dse.teacher import raw_logits

logger = logging.getLogger(__name__)


def task_metrics(task: TaskSpec | str, logits: np.ndarray, labels) -> dict[str, float]:
    """Official metrics of ``task`` (0-100 scale) from a model's raw logits."""
    task = get_task(task)
    return compute_metrics(task, logits_to_predictions(task, logits), list(labels))


def relative_degradation(teacher_metrics: dict[str, float], student_metrics: dict[str, float], metric: str) -> float:
    """How much worse the student is than the teacher on ``metric``, in percent of the teacher's value."""
    return 100 * (teacher_metrics[metric] - student_metrics[metric]) / teacher_metrics[metric]


def evaluate_student(
    model: SentenceTransformer, task: TaskSpec | str, dataset: datasets.Dataset, batch_size: int = 64
):
    """Task metrics of a student's PairHead on ``dataset`` (columns sentence1, sentence2, label)."""
    logits = score_pairs(model, dataset["sentence1"], dataset["sentence2"], batch_size=batch_size)
    return task_metrics(task, logits, dataset["label"])


def evaluate_cross_encoder(
    cross_encoder: CrossEncoder, task: TaskSpec | str, dataset: datasets.Dataset, batch_size=64
):
    """Task metrics of a cross-encoder teacher on ``dataset``, from its raw logits."""
    pairs = list(zip(dataset["sentence1"], dataset["sentence2"]))
    return task_metrics(task, raw_logits(cross_encoder, pairs, batch_size=batch_size), dataset["label"])


class PairTaskEvaluator(BaseEvaluator):
    """Evaluates a student's PairHead on a task's dev set in training; its main metric picks the best checkpoint."""

    def __init__(self, task: TaskSpec | str, dataset: datasets.Dataset, name: str = "dev", batch_size: int = 64):
        super().__init__()
        self.task = get_task(task)
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


def _cross_encoder_loss(task: TaskSpec, cross_encoder: CrossEncoder):
    if task.problem_type == "binary":
        return cross_encoder_losses.BinaryCrossEntropyLoss(cross_encoder)
    if task.problem_type == "multiclass":
        return cross_encoder_losses.CrossEntropyLoss(cross_encoder)
    # Regression: fit the raw logit to the gold score itself, so teacher logits and gold share one scale.
    return cross_encoder_losses.MSELoss(cross_encoder, activation_fn=torch.nn.Identity())


def finetune_teacher(
    task: TaskSpec | str,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None,
    output_dir: str | os.PathLike,
    base_model: str = DEFAULT_MODEL,
    epochs: int = 3,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    classifier_learning_rate: float | None = 1e-3,
    warmup_ratio: float = 0.1,
    max_length: int | None = 128,
    seed: int = 42,
    resume: bool = False,
    bf16: bool = False,
) -> CrossEncoder:
    """Fine-tune a CrossEncoder teacher on a task's train split and save it to ``output_dir``.

    The teacher outputs raw logits: one for binary tasks (trained with BCE) and regression (trained with MSE on the
    gold score), k for k-way tasks (cross-entropy). The freshly initialised classification layer gets its own
    ``classifier_learning_rate`` (None: the encoder's), for the same reason as the student's PairHead. ``bf16``
    trains in bfloat16 mixed precision (GPUs that support it); the saved weights stay float32.
    """
    task = get_task(task)
    output_dir = Path(output_dir)
    set_seed(seed)  # the trainer seeds only after the model exists; the fresh classifier must be seeded too
    cross_encoder = CrossEncoder(
        resolve_model_name(base_model),
        num_labels=task.num_labels,
        max_length=max_length,
        # A regression teacher's output is the score itself; the default sigmoid would squash it.
        activation_fn=torch.nn.Identity() if task.problem_type == "regression" else None,
    )
    args = CrossEncoderTrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        learning_rate_mapping={r"(^|\.)classifier\.": classifier_learning_rate} if classifier_learning_rate else None,
        warmup_steps=warmup_ratio,
        save_strategy="epoch",
        save_total_limit=1,
        logging_steps=50,
        seed=seed,
        report_to="none",
        use_cpu=_distributed_cpu_run(),
        bf16=bf16,
    )
    trainer = CrossEncoderTrainer(
        model=cross_encoder,
        args=args,
        train_dataset=train_dataset.select_columns(["sentence1", "sentence2", "label"]),
        loss=_cross_encoder_loss(task, cross_encoder),
    )
    trainer.train(resume_from_checkpoint=_resume_point(resume, output_dir / "checkpoints"))
    cross_encoder.save(str(output_dir))
    if eval_dataset is not None:
        metrics = evaluate_cross_encoder(cross_encoder, task, eval_dataset)
        logger.info("Teacher dev metrics: %s", metrics)
        (output_dir / "dev_metrics.json").write_text(json.dumps(metrics, indent=2))
    return cross_encoder


def _distributed_cpu_run() -> bool:
    """True under ``torchrun`` (WORLD_SIZE > 1) on a machine without CUDA.

    transformers then sets up gloo DDP only with ``use_cpu=True``; without it every rank trains its own copy, and
    sentence-transformers' rank-0-only evaluator leaves the other ranks without the best-checkpoint metric.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def last_complete_checkpoint(directory: Path) -> str | None:
    """The newest ``checkpoint-N`` that was written completely, or None.

    The trainer writes ``trainer_state.json`` last, so a run killed while saving leaves a newer, partial folder that
    resuming "from the last checkpoint" by number would trip over.
    """
    if not directory.is_dir():
        return None
    complete = [
        path
        for path in directory.glob("checkpoint-*")
        if path.name.split("-")[-1].isdigit() and (path / "trainer_state.json").is_file()
    ]
    if not complete:
        return None
    return str(max(complete, key=lambda path: int(path.name.split("-")[-1])))


def _resume_point(resume: bool, directory: Path) -> str | None:
    checkpoint = last_complete_checkpoint(directory) if resume else None
    if resume:
        logger.info("Resuming from %s", checkpoint or "the start: no complete checkpoint found")
    return checkpoint


def distill_student(
    task: TaskSpec | str,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None,
    output_dir: str | os.PathLike,
    student_model: str = DEFAULT_MODEL,
    distillation_weight: float = 0.5,
    head_type: str = "concat",
    hidden_dim: int = 512,
    epochs: int = 4,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    head_learning_rate: float = 1e-3,
    warmup_ratio: float = 0.1,
    keep_normalize: bool = False,
    pooling_layers: int | None = None,
    symmetric: bool = False,
    teacher_logit_scale: float = 1.0,
    max_seq_length: int | None = 128,
    seed: int = 42,
    resume: bool = False,
    bf16: bool = False,
) -> SentenceTransformer:
    """Train a DSE student on teacher-labelled pairs (``teacher_logits`` column) and return it, best checkpoint loaded.

    With ``distillation_weight=0`` this is the gold-only baseline: same architecture, same budget, no teacher (the
    dataset then needs no ``teacher_logits`` column). ``pooling_layers=4`` gives the original DSE embedding (mean over
    the concatenated last 4 layers, see :class:`~st_dse.TopLayersConcat`); ``teacher_logit_scale`` multiplies the
    teacher's logits in the distillation term (see :class:`~st_dse.DSELoss`). ``bf16`` trains in bfloat16 mixed
    precision (GPUs that support it); DSELoss still compares logits in float32.
    """
    task = get_task(task)
    output_dir = Path(output_dir)
    set_seed(seed)  # the trainer seeds only after the model exists; the fresh PairHead must be seeded too
    student = build_student(
        student_model,
        num_labels=task.num_labels,
        problem_type=task.problem_type,
        head_type=head_type,
        hidden_dim=hidden_dim,
        keep_normalize=keep_normalize,
        pooling_layers=pooling_layers,
        label_names=list(task.label_names) if task.problem_type != "regression" else None,
    )
    if max_seq_length is not None:
        student.max_seq_length = max_seq_length
    if distillation_weight > 0:
        train = pack_dse_labels(train_dataset)
    else:
        train = train_dataset.select_columns(["sentence1", "sentence2", "label"])
    evaluator = PairTaskEvaluator(task, eval_dataset) if eval_dataset is not None else None
    has_eval = evaluator is not None
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        learning_rate_mapping=head_learning_rate_mapping(student, head_learning_rate),
        warmup_steps=warmup_ratio,
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=has_eval,
        metric_for_best_model=f"eval_{task.name}_dev_{task.main_metric}" if has_eval else None,
        greater_is_better=True,
        logging_steps=50,
        seed=seed,
        data_seed=seed,
        report_to="none",
        use_cpu=_distributed_cpu_run(),
        # DSELoss calls the PairHead outside the model's forward (on the embeddings it returns); DDP accepts
        # parameters used outside forward only with a static graph, which a DSE training step is.
        ddp_static_graph=True,
        bf16=bf16,
    )
    loss = DSELoss(
        student,
        distillation_weight=distillation_weight,
        symmetric=symmetric,
        teacher_logit_scale=teacher_logit_scale,
    )
    trainer = SentenceTransformerTrainer(model=student, args=args, train_dataset=train, loss=loss, evaluator=evaluator)
    trainer.train(resume_from_checkpoint=_resume_point(resume, output_dir / "checkpoints"))
    return student


def save_student(
    student: SentenceTransformer,
    output_dir: str | os.PathLike,
    task: TaskSpec | str,
    teacher: str | None,
    results: dict[str, Any],
) -> None:
    """Save the student (model card included) and a ``dse.json`` with task, teacher and metrics."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return  # under torchrun every rank holds the same model; one writer avoids racing on the same files
    task = get_task(task)
    output_dir = Path(output_dir)
    head = get_pair_head(student)
    student.model_card_data.model_name = f"DSE student for {task.name.upper()}"
    student.save(str(output_dir))
    (output_dir / "dse.json").write_text(json.dumps({"task": task.name, "teacher": teacher, **results}, indent=2))
    card = output_dir / "README.md"
    section = _model_card_section(task, teacher, head.head_type, results)
    card.write_text((card.read_text(encoding="utf-8") if card.exists() else "") + section, encoding="utf-8")


def _model_card_section(task: TaskSpec, teacher: str | None, head_type: str, results: dict[str, Any]) -> str:
    rows = []
    for system, metrics in results.get("metrics", {}).items():
        values = ", ".join(f"{name} {value:.2f}" for name, value in metrics.items() if name != "main")
        rows.append(f"| {system} | {values} |")
    table = "\n".join(["| system | dev metrics |", "|---|---|", *rows]) if rows else ""
    return f"""

## Distilled Sentence Embedding (st_dse)

This model is a DSE student: a siamese sentence encoder with a `{head_type}` PairHead trained to reproduce the raw
logits of a cross-encoder teacher on **{task.name}** ({task.description}).

- Teacher: `{teacher}`
- Task: {task.name}, {task.problem_type}, {task.num_labels} head output(s), main metric {task.main_metric}

{table}

Load it with its head and score pairs:

```python
import st_dse

model = st_dse.load_student("path/to/this/model")  # or SentenceTransformer(path, trust_remote_code=True)
scores = st_dse.score_pairs(model, ["A man plays guitar."], ["Someone plays a guitar."])
```

`model.encode(...)` returns plain sentence embeddings (compare them with cosine similarity).

### DSE citation

```bibtex{DSE_CITATION}```
"""
