"""Fine-tune a CrossEncoder teacher on a sentence-pair task.

Usage:
    python recipes/finetune_teacher.py --task mrpc --data-dir ../shared/data/glue --output-dir runs/mrpc-teacher
    python recipes/finetune_teacher.py --task stsb --base-model /path/to/all-mpnet-base-v2 --epochs 3

The teacher outputs raw logits (one for binary tasks and regression, k for k-way tasks), which
``recipes/distill.py --teacher runs/mrpc-teacher`` distils into a fast siamese student.
"""

from __future__ import annotations

import argparse
import logging
import time

from st_dse.models import DEFAULT_MODEL
from st_dse.tasks import TASKS, get_task, load_task
from st_dse.training import finetune_teacher


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help=f"one of {sorted(TASKS)}")
    parser.add_argument("--data-dir", help="local GLUE/SentEval data (default: $ST_DSE_DATA_DIR, else the hub)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--base-model", default=DEFAULT_MODEL, help="encoder to fine-tune as a cross-encoder")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (GPU)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    task = get_task(args.task)

    # 1. Load the task's train and dev splits.
    train = load_task(task, "train", args.data_dir, max_samples=args.max_train_samples)
    dev = load_task(task, task.splits[1], args.data_dir)
    logging.info("%s: %d train pairs, %d dev pairs", task.name, len(train), len(dev))

    # 2. Fine-tune, evaluate on dev, save.
    start = time.perf_counter()
    finetune_teacher(
        task,
        train,
        dev,
        args.output_dir,
        base_model=args.base_model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        seed=args.seed,
        resume=args.resume,
        bf16=args.bf16,
    )
    logging.info("Teacher trained in %.0f s and saved to %s", time.perf_counter() - start, args.output_dir)


if __name__ == "__main__":
    main()
