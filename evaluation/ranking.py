"""Ranking fidelity of DSE students: how much of the teacher's top 10 each student's top 10 recovers.

Queries are dev first sentences, the candidates every distinct dev second sentence; the teacher scores every query x
candidate pair (cached, like training labels, so a second student costs no teacher time), each student scores the
same grid with its PairHead. Reports overlap@10 and NDCG@10 under the teacher's scores (see
``evaluation/ranking_fidelity.py``).

Usage:
    python -m evaluation.ranking --task mrpc --teacher runs/mrpc-teacher --students runs/mrpc runs/mrpc-gold \\
        --data-dir DATA --output-dir runs/ranking-mrpc
    python -m evaluation.ranking --dev-file my_dev.csv --teacher my-teacher --students runs/my-student

Writes ``ranking.json`` (per student: the averages and the per-query values; the settings) to --output-dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import datasets
import numpy as np
import sentence_transformers
import torch
from sentence_transformers import CrossEncoder

from evaluation.arguments import task_name
from evaluation.ranking_fidelity import ranking_fidelity, ranking_grid, student_grid
from st_dse.data import get_task, load_task
from st_dse.data.pair_files import read_pair_file
from st_dse.student import get_pair_head, load_student
from st_dse.teacher import label_with_teacher

logger = logging.getLogger("ranking")


def teacher_grid(
    teacher: CrossEncoder, queries: list[str], candidates: list[str], column: int, cache_dir: str | None
) -> np.ndarray:
    """The teacher's raw logits for every query x candidate pair, ``(len(queries), len(candidates))``."""
    grid = datasets.Dataset.from_dict(
        {
            "sentence1": [query for query in queries for _ in candidates],
            "sentence2": [candidate for _ in queries for candidate in candidates],
        }
    )
    labelled = label_with_teacher(teacher, grid, cache_dir=cache_dir, show_progress_bar=False)
    logits = np.asarray(labelled["teacher_logits"], dtype=np.float32)
    return logits[:, column].reshape(len(queries), len(candidates))


def dev_pairs(args: argparse.Namespace) -> datasets.Dataset:
    if args.dev_file:
        return read_pair_file(args.dev_file, args.sentence1_column, args.sentence2_column)
    task = get_task(args.task)
    return load_task(task, task.benchmark.dev_split, args.data_dir)


def logit_column(num_labels: int, label_names: list[str], label: str | None, who: str) -> int:
    """Which logit ranks candidates: the only one, or the named label's of a k-way model."""
    if num_labels == 1:
        return 0
    if label is None or label not in label_names:
        raise SystemExit(
            f"{who} has {num_labels} logits ({label_names}): pass --label NAME to say which label's logit ranks."
        )
    return label_names.index(label)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    queries, candidates = ranking_grid(dev_pairs(args), args.queries, args.seed)
    exclude = np.array([[query == candidate for candidate in candidates] for query in queries])
    logger.info("%d queries x %d candidates", len(queries), len(candidates))
    teacher = CrossEncoder(args.teacher, device="cpu" if args.cpu else None)
    labels = [teacher.config.id2label[i] for i in range(teacher.num_labels)] if teacher.num_labels > 2 else []
    start = time.perf_counter()
    teacher_scores = teacher_grid(
        teacher,
        queries,
        candidates,
        logit_column(max(1, len(labels)), labels, args.label, "the teacher"),
        args.cache_dir,
    )
    results = {"teacher": args.teacher, "teacher_seconds": time.perf_counter() - start, "students": {}}
    for path in args.students:
        student = load_student(path, device="cpu" if args.cpu else None)
        head = get_pair_head(student)
        column = logit_column(head.num_labels, list(head.label_names or []), args.label, path)
        scores = student_grid(student, queries, candidates, column)
        fidelity = ranking_fidelity(scores, teacher_scores, k=args.k, exclude=exclude)
        results["students"][path] = fidelity
        logger.info(
            "%s: overlap@%d %.3f, NDCG@%d %.3f", path, args.k, fidelity["overlap_at_k"], args.k, fidelity["ndcg_at_k"]
        )
    results["settings"] = {**vars(args), "num_queries": len(queries), "num_candidates": len(candidates)}
    results["software"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "ranking.json").write_text(json.dumps(results, indent=2))
    print(f"| student | overlap@{args.k} | NDCG@{args.k} |\n|---|---:|---:|")
    for path, fidelity in results["students"].items():
        print(f"| {path} | {fidelity['overlap_at_k']:.3f} | {fidelity['ndcg_at_k']:.3f} |")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", type=task_name, help="a registered task; its dev split gives queries and candidates")
    source.add_argument("--dev-file", help="your own pairs (.csv, .tsv, .jsonl, .parquet) instead of --task")
    parser.add_argument("--sentence1-column", help="--dev-file column of the queries")
    parser.add_argument("--sentence2-column", help="--dev-file column of the candidates")
    parser.add_argument("--teacher", required=True, help="the cross-encoder (folder or Hub id)")
    parser.add_argument("--students", nargs="+", required=True, help="DSE student folders or Hub ids")
    parser.add_argument("--data-dir", help="local task data (default: $ST_DSE_DATA_DIR, else the Hub)")
    parser.add_argument("--queries", type=int, default=40, help="dev first sentences used as queries")
    parser.add_argument("--k", type=int, default=10, help="the cut-off of overlap@k and NDCG@k")
    parser.add_argument("--label", help="for k-way models: the label whose logit ranks the candidates")
    parser.add_argument("--seed", type=int, default=0, help="which queries are drawn")
    parser.add_argument("--cache-dir", help="teacher logit cache (default: st_dse's user cache)")
    parser.add_argument("--cpu", action="store_true", help="run both models on the CPU")
    parser.add_argument("--output-dir", default="runs/ranking")
    args = parser.parse_args(argv)
    if args.queries < 1 or args.k < 1:
        parser.error("--queries and --k must be >= 1")
    return args


if __name__ == "__main__":
    main()
