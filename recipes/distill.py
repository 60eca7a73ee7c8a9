"""Distil a cross-encoder teacher into a fast siamese student (DSE) on a sentence-pair task.

Usage:
    python recipes/distill.py --task mrpc --data-dir ../shared/data/glue --output-dir runs/mrpc
    python recipes/distill.py --task stsb --teacher runs/stsb-teacher --output-dir runs/stsb
    python recipes/distill.py --task mrpc --distillation-weight 0 --output-dir runs/mrpc-gold   # gold-only baseline

Without --teacher, a teacher is first fine-tuned from --teacher-base (recipes/finetune_teacher.py) and kept in
OUTPUT_DIR/teacher, where a rerun finds it. The student is saved in OUTPUT_DIR: load it with
``st_dse.load_student(OUTPUT_DIR)`` (or ``SentenceTransformer(OUTPUT_DIR, trust_remote_code=True)``) and score pairs
with ``st_dse.score_pairs``. OUTPUT_DIR/dse.json holds the teacher's and student's dev metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from sentence_transformers import CrossEncoder

from st_dse.augment import STRATEGIES, augment_pairs, with_augmented
from st_dse.head import load_model
from st_dse.models import DEFAULT_MODEL, resolve_model_name
from st_dse.tasks import TASKS, get_task, load_task
from st_dse.teacher import label_with_teacher
from st_dse.training import (
    distill_student,
    evaluate_cross_encoder,
    evaluate_student,
    finetune_teacher,
    relative_degradation,
    save_student,
)

logger = logging.getLogger("distill")

DEFAULT_AUGMENT = 2.0  # new pairs per train pair when a trained teacher is given (see parse_args)


def parse_args(argv: list[str] | None = None, task: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=task is None, default=task, help=f"one of {sorted(TASKS)}")
    parser.add_argument("--data-dir", help="local GLUE/SentEval data (default: $ST_DSE_DATA_DIR, else the hub)")
    parser.add_argument("--output-dir", required=True, help="where the student (and a fine-tuned teacher) go")
    parser.add_argument("--teacher", help="a fine-tuned CrossEncoder id or path; default: fine-tune one first")
    parser.add_argument("--teacher-base", default=DEFAULT_MODEL, help="base model when fine-tuning the teacher")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--student", default=DEFAULT_MODEL, help="the student's sentence encoder")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--label-batch-size", type=int, default=32, help="teacher batch size for labelling (larger is faster on a GPU)"
    )
    parser.add_argument("--lr", type=float, default=5e-5, help="encoder learning rate")
    parser.add_argument("--head-lr", type=float, default=1e-3, help="PairHead learning rate")
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--distillation-weight", type=float, default=0.5, help="0 = gold-only, 1 = teacher-only")
    parser.add_argument("--head", choices=["concat", "factorized"], default="concat")
    parser.add_argument("--hidden-dim", type=int, default=512)
    parser.add_argument("--symmetric", action="store_true", help="also train on each pair in the other order")
    parser.add_argument(
        "--keep-normalize", action="store_true", help="keep the base model's Normalize layer (dropped by default)"
    )
    parser.add_argument(
        "--pooling-layers",
        type=int,
        metavar="K",
        help="mean-pool the concatenated last K layers (the original DSE used 4); default: the base model's pooling",
    )
    parser.add_argument(
        "--teacher-logit-scale",
        type=float,
        default=1.0,
        help="multiply the teacher's logits by this in the distillation term (classification tasks)",
    )
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps with a rising learning rate")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (GPU); teacher stays float32")
    parser.add_argument(
        "--augment",
        type=float,
        default=None,
        metavar="FACTOR",
        help=(
            "add FACTOR x (train size) teacher-labelled pairs made of the train sentences (st_dse.augment); default "
            f"{DEFAULT_AUGMENT:g} with a trained --teacher, 0 when the recipe fine-tunes its own quick teacher or "
            "trains gold-only (RESULTS.md, issue 7)"
        ),
    )
    parser.add_argument(
        "--augment-strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES), metavar="STRATEGY"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cache-dir", help="teacher-logit cache (default: $ST_DSE_CACHE or ~/.cache/st_dse)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the student to this Hub repository")
    args = parser.parse_args(argv)
    if args.augment is None:
        # Augmentation pays off with a strong teacher (mpnet: +2.7 accuracy on MRPC, +3.0 on SICK-E); the quick
        # teacher a bare run fine-tunes from the student's own base is no better than gold labels, and labelling
        # plus 3x the training steps would about double the one-command run.
        args.augment = DEFAULT_AUGMENT if args.teacher and args.distillation_weight > 0 else 0.0
    if args.teacher_logit_scale != 1.0 and get_task(args.task).problem_type == "regression":
        parser.error(
            f"--teacher-logit-scale applies to classification teachers; {args.task} is a regression task, whose "
            "teacher predicts the label itself. Drop --teacher-logit-scale."
        )
    if args.pooling_layers is not None and args.pooling_layers < 1:
        parser.error(
            f"--pooling-layers must be >= 1 (how many of the last layers to concatenate), got {args.pooling_layers}."
        )
    if args.augment < 0:
        parser.error(f"--augment must be >= 0 (new pairs per train pair), got {args.augment}.")
    if args.augment > 0 and args.distillation_weight == 0:
        parser.error(
            "--augment adds pairs that only the teacher labels; a gold-only run (--distillation-weight 0) cannot "
            "learn from them. Drop --augment, or give the run a teacher (--distillation-weight > 0)."
        )
    return args


def load_or_train_teacher(args: argparse.Namespace, task, train, dev) -> tuple[CrossEncoder, str]:
    if args.teacher:
        return CrossEncoder(resolve_model_name(args.teacher)), args.teacher
    teacher_dir = Path(args.output_dir) / "teacher"
    if (teacher_dir / "config.json").is_file():
        logger.info("Reusing the teacher fine-tuned earlier in %s", teacher_dir)
        return CrossEncoder(str(teacher_dir)), str(teacher_dir)
    logger.info("No --teacher given: fine-tuning %s as the teacher", args.teacher_base)
    teacher = finetune_teacher(
        task,
        train,
        dev,
        teacher_dir,
        base_model=args.teacher_base,
        epochs=args.teacher_epochs,
        seed=args.seed,
        resume=args.resume,
    )
    return teacher, str(teacher_dir)


def main(argv: list[str] | None = None, task: str | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv, task)
    task = get_task(args.task)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    metrics: dict[str, dict] = {}

    # 1. Load the task's train and dev splits.
    train = load_task(task, "train", args.data_dir, max_samples=args.max_train_samples)
    dev = load_task(task, task.splits[1], args.data_dir)
    logger.info("%s: %d train pairs, %d dev pairs", task.name, len(train), len(dev))

    # 2. Teacher: given, found in the output folder, or fine-tuned now; then label the train split with its logits.
    teacher_name = None
    if args.distillation_weight > 0:
        start = time.perf_counter()
        teacher, teacher_name = load_or_train_teacher(args, task, train, dev)
        timings["teacher"] = time.perf_counter() - start
        metrics["teacher"] = evaluate_cross_encoder(teacher, task, dev)
        logger.info("Teacher dev metrics: %s", metrics["teacher"])
        start = time.perf_counter()
        train = label_with_teacher(teacher, train, batch_size=args.label_batch_size, cache_dir=args.cache_dir)
        timings["labelling"] = time.perf_counter() - start
        if args.augment > 0:
            start = time.perf_counter()
            needs_model = "neighbours" in args.augment_strategies
            extra = augment_pairs(
                train,
                factor=args.augment,
                strategies=args.augment_strategies,
                model=load_model(args.student) if needs_model else None,
                seed=args.seed,
            )
            extra = label_with_teacher(teacher, extra, batch_size=args.label_batch_size, cache_dir=args.cache_dir)
            train = with_augmented(train, extra)
            timings["augmentation"] = time.perf_counter() - start
            logger.info("Training on %d pairs, %d of them teacher-labelled only", len(train), len(extra))
        del teacher

    # 3. Train the student with DSELoss, evaluating on dev each epoch and keeping the best checkpoint.
    start = time.perf_counter()
    student = distill_student(
        task,
        train,
        dev,
        output_dir,
        student_model=args.student,
        distillation_weight=args.distillation_weight,
        head_type=args.head,
        hidden_dim=args.hidden_dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        head_learning_rate=args.head_lr,
        symmetric=args.symmetric,
        keep_normalize=args.keep_normalize,
        pooling_layers=args.pooling_layers,
        teacher_logit_scale=args.teacher_logit_scale,
        warmup_ratio=args.warmup_ratio,
        seed=args.seed,
        resume=args.resume,
        bf16=args.bf16,
    )
    timings["student"] = time.perf_counter() - start

    # 4. Evaluate the student after training and save it with its head, model card and metrics.
    metrics["student"] = evaluate_student(student, task, dev)
    logger.info("Student dev metrics: %s", metrics["student"])
    if "teacher" in metrics:
        degradation = relative_degradation(metrics["teacher"], metrics["student"], task.main_metric)
        logger.info("Relative degradation of %s against the teacher: %.2f%%", task.main_metric, degradation)
    results = {
        "distillation_weight": args.distillation_weight,
        "student_base": args.student,
        "settings": {k: v for k, v in vars(args).items() if k not in ("push_to_hub",)},
        "metrics": metrics,
        "timings_s": timings,
    }
    save_student(student, output_dir, task, teacher_name, results)
    logger.info("Saved the student to %s", output_dir)
    if args.push_to_hub:
        student.push_to_hub(args.push_to_hub)
    print(json.dumps({"task": task.name, "metrics": metrics, "timings_s": timings}, indent=2))
    return results


if __name__ == "__main__":
    main()
