"""Distil a cross-encoder teacher into a fast siamese student (DSE) on sentence pairs: a benchmark task or your own.

Usage:
    # A registered task; without --teacher a quick teacher is fine-tuned first (kept in OUTPUT_DIR-teacher).
    python recipes/distill.py --task mrpc --data-dir DATA --output-dir runs/mrpc
    python recipes/distill.py --task stsb --teacher runs/stsb-teacher --output-dir runs/stsb
    python recipes/distill.py --task mrpc --distillation-weight 0 --output-dir runs/mrpc-gold   # gold-only baseline

    # Your own teacher and pairs (CSV, TSV, JSONL or Parquet; the label column is optional).
    python recipes/distill.py --teacher cross-encoder/quora-distilroberta-base --train-file my.csv --output-dir out

The student is saved in OUTPUT_DIR as a standard sentence-transformers folder: ``SentenceTransformer(OUTPUT_DIR)``
loads the encoder, ``st_dse.load_student(OUTPUT_DIR)`` the encoder and its PairHead (in OUTPUT_DIR/pair_head).
OUTPUT_DIR/dse.json holds the settings, the teacher's and student's dev metrics and their agreement. Checkpoints go
to OUTPUT_DIR-checkpoints, a teacher fine-tuned here to OUTPUT_DIR-teacher. Under torchrun the teacher labelling is
split across the processes and the summary is written once.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from sentence_transformers import CrossEncoder

from st_dse.data import augment_pairs, get_task, with_augmented
from st_dse.data.pair_files import HubUnreachableError
from st_dse.data.sources import DataConfig, load_pairs
from st_dse.hub import resolve_model_name
from st_dse.inference import score_pairs
from st_dse.integrity import recover_interrupted_save
from st_dse.losses import check_teacher_logit_scale
from st_dse.student import load_model
from st_dse.teacher import raw_logits
from st_dse.training import distill_student, evaluate_student, finetune_teacher, save_student
from st_dse.training.config import DistillConfig, RunConfig, TeacherConfig, config_fields, parse_config
from st_dse.training.evaluator import agreement_report, format_report, relative_degradation
from st_dse.training.train import barrier, check_output_dir, is_main_process, label_across_ranks, sibling_dir

logger = logging.getLogger("distill")


def parse_args(argv: list[str] | None = None, task: str | None = None):
    data, config, run = parse_config(
        (DataConfig, DistillConfig, RunConfig), argv, description=__doc__, defaults={"task": task} if task else None
    )
    if data.task is not None:
        try:
            check_teacher_logit_scale(config.teacher_logit_scale, get_task(data.task).problem_type)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
    return data, config, run


def load_or_train_teacher(config: DistillConfig, run: RunConfig, task, train, dev) -> tuple[CrossEncoder, str]:
    """The teacher: given, found beside the output folder from an earlier run, or fine-tuned now on the gold labels."""
    if config.teacher:
        return CrossEncoder(resolve_model_name(config.teacher)), config.teacher
    teacher_dir = sibling_dir(run.output_dir, "teacher")
    if is_main_process():  # a teacher save killed between its two renames left the teacher beside its folder
        recover_interrupted_save(teacher_dir)
    barrier()
    if (teacher_dir / "config.json").is_file() and not run.overwrite:
        logger.info("Reusing the teacher fine-tuned earlier in %s", teacher_dir)
        return CrossEncoder(str(teacher_dir)), str(teacher_dir)
    if "label" not in train.column_names:
        raise SystemExit("The pairs have no gold labels to fine-tune a teacher on: pass --teacher (a CrossEncoder).")
    logger.info("No --teacher given: fine-tuning %s as the teacher in %s", config.teacher_base, teacher_dir)
    teacher_config = TeacherConfig(base_model=config.teacher_base, epochs=config.teacher_epochs, seed=config.seed)
    labelled = train.filter(lambda row: row["label"] is not None)
    teacher = finetune_teacher(task, labelled, dev, teacher_dir, teacher_config, resume=run.resume)
    return teacher, str(teacher_dir)


def label_training_pairs(teacher, config: DistillConfig, train, timings: dict):
    """The teacher's logits for every training pair, plus teacher-labelled augmentation pairs when asked for."""
    start = time.perf_counter()
    options = {"batch_size": config.label_batch_size, "cache_dir": config.cache_dir}
    train = label_across_ranks(teacher, train, **options)
    timings["labelling"] = time.perf_counter() - start
    if config.augment > 0:
        start = time.perf_counter()
        needs_model = "neighbours" in config.augment_strategies
        extra = augment_pairs(
            train,
            factor=config.augment,
            strategies=config.augment_strategies,
            model=load_model(config.student) if needs_model else None,
            seed=config.seed,
        )
        train = with_augmented(train, label_across_ranks(teacher, extra, **options))
        timings["augmentation"] = time.perf_counter() - start
        logger.info("Training on %d pairs, %d of them teacher-labelled only", len(train), len(extra))
    return train


def dev_report(student, teacher, task, dev, config: DistillConfig, metrics: dict) -> dict | None:
    """Student against teacher on the dev pairs (and both against gold where the dev pairs have labels)."""
    if dev is None:
        return None
    gold = dev["label"] if "label" in dev.column_names else None
    if teacher is None:
        if gold is not None:
            metrics["student"] = evaluate_student(student, task, dev)
        return None
    # Batches of 64, as evaluate_student and evaluate_cross_encoder score, so the metrics equal theirs exactly.
    student_logits = score_pairs(student, dev["sentence1"], dev["sentence2"], batch_size=64)
    teacher_logits = raw_logits(teacher, list(zip(dev["sentence1"], dev["sentence2"])), batch_size=64)
    report = agreement_report(student_logits, teacher_logits, task, gold=gold)
    if report.get("student_metrics"):
        metrics["student"], metrics["teacher"] = report["student_metrics"], report["teacher_metrics"]
    print(format_report(report))
    return report


def main(argv: list[str] | None = None, task: str | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    data, config, run = parse_args(argv, task)
    try:
        check_output_dir(run.output_dir, run.overwrite, run.resume)
        if not config.teacher:  # the teacher fine-tuned here is saved to OUTPUT_DIR-teacher: refuse a foreign one now
            check_output_dir(sibling_dir(run.output_dir, "teacher"), True, True, kind="teacher")
    except FileExistsError as error:
        raise SystemExit(f"error: {error}") from None
    timings: dict[str, float] = {}
    metrics: dict[str, dict] = {}

    # 1. The pairs and the task they form (with your own pairs: the task's shape comes from the teacher).
    teacher, teacher_name = None, None
    if config.teacher and data.own_pairs:
        teacher, teacher_name = CrossEncoder(resolve_model_name(config.teacher)), config.teacher
    try:
        task, train, dev = load_pairs(data, teacher)
        check_teacher_logit_scale(config.teacher_logit_scale, task.problem_type)
    except (HubUnreachableError, FileNotFoundError, ValueError) as error:  # one line, not a traceback
        raise SystemExit(f"error: {error}") from None
    labelled = "label" in train.column_names and any(label is not None for label in train["label"])
    logger.info("%s: %d train pairs, %s dev pairs", task.name, len(train), len(dev) if dev is not None else "no")
    if not labelled:
        if config.distillation_weight == 0:
            raise SystemExit("error: --distillation-weight 0 trains on gold labels, and the pairs have none.")
        if config.distillation_weight < 1:
            logger.info("The training pairs carry no gold labels: the student learns from the teacher alone.")
            config.distillation_weight = 1.0

    # 2. Teacher: given, found beside the output folder, or fine-tuned now; then label the training pairs.
    if config.distillation_weight > 0:
        start = time.perf_counter()
        if teacher is None:
            teacher, teacher_name = load_or_train_teacher(config, run, task, train, dev)
        timings["teacher"] = time.perf_counter() - start
        train = label_training_pairs(teacher, config, train, timings)

    # 3. Train the student with DSELoss, evaluating on dev each epoch and keeping the best checkpoint.
    start = time.perf_counter()
    dev_with_gold = None  # the dev pairs that carry a gold label pick the best epoch
    if dev is not None and "label" in dev.column_names:
        dev_with_gold = dev.filter(lambda row: row["label"] is not None)
        dev_with_gold = dev_with_gold if len(dev_with_gold) else None
    checkpoints = sibling_dir(run.output_dir, "checkpoints")
    student = distill_student(task, train, dev_with_gold, checkpoints, config, resume=run.resume)
    timings["student"] = time.perf_counter() - start

    # 4. Evaluate the student against the teacher and the gold labels; save it with its head, card and summary.
    barrier()
    if not is_main_process():
        return {}
    report = dev_report(student, teacher, task, dev, config, metrics)
    if "teacher" in metrics and "student" in metrics:
        degradation = relative_degradation(metrics["teacher"], metrics["student"], task.main_metric)
        logger.info("Relative degradation of %s against the teacher: %.2f%%", task.main_metric, degradation)
    results = {
        "distillation_weight": config.distillation_weight,
        "student_base": config.student,
        "settings": {**config_fields(data), **config_fields(config)},
        "metrics": metrics,
        "agreement": report,
        "timings_s": timings,
    }
    save_student(student, run.output_dir, task, teacher_name, results)
    if run.push_to_hub:
        # The saved folder as it is (card, head, dse.json); nothing from beside it (teacher, checkpoints).
        student.push_to_hub(run.push_to_hub, local_model_path=run.output_dir, exist_ok=True)
    print(json.dumps({"task": task.name, "metrics": metrics, "timings_s": timings}, indent=2))
    print(f"Saved the student to {Path(run.output_dir)} (checkpoints in {checkpoints}).")
    return results


if __name__ == "__main__":
    main()
