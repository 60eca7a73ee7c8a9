"""Ranking fidelity of DSE students: how closely each student's top 10 follows the teacher's, and what a cascade
(student shortlist, teacher re-ranking) keeps.

Queries are dev first sentences (200 by default, or all when fewer), the candidates every distinct dev second
sentence (--max-candidates: the queries' gold partners and a random draw of the others, for large dev sets); the
teacher scores every query x candidate pair (cached, like training labels, so a second run costs no teacher time),
each student scores the same grid with its PairHead. Reports overlap@10, NDCG@10 under the teacher's
scores and extrapolated RBO (p=0.9) of the top-10 lists, each with a bootstrap 95% interval over queries (see
``evaluation/ranking_fidelity.py``).

--reference-teachers: teachers of the same recipe with other seeds, scored on the same grid (cached too). Their
fidelity to the main teacher is the ceiling a student can be asked for: each student is also shown as a share of the
ceiling (the references' mean), with the paired bootstrap interval of its NDCG@10 minus the references' mean per query.

The cascade table, for shortlists of 10, 20, 50, 100 and 200 (capped at the pool): the cascade's NDCG@10 under the
teacher's scores, the share of the teacher's exhaustive top 10 inside the student's shortlist (and inside a reseeded
teacher's shortlist of the same size), and the teacher calls saved (pool / shortlist). All from the cached grid.

Usage:
    python -m evaluation.ranking --task mrpc --teacher runs/mrpc-teacher --students runs/mrpc runs/mrpc-gold \\
        --reference-teachers runs/mrpc-teacher-seed1 runs/mrpc-teacher-seed2 --data-dir DATA \\
        --output-dir runs/ranking-mrpc
    python -m evaluation.ranking --dev-file my_dev.csv --teacher my-teacher --students runs/my-student

Writes ``ranking.json`` (per model: the means, intervals and per-query values; the cascade rows; the settings) to
--output-dir, and prints the tables.
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

from evaluation.arguments import int_at_least, task_name
from evaluation.ranking_fidelity import (
    bootstrap_interval,
    cascade_fidelity,
    ranking_fidelity,
    ranking_grid,
    student_grid,
)
from st_dse.data import get_task, load_task
from st_dse.data.pairs import read_pair_file
from st_dse.student import get_pair_head, load_student
from st_dse.teacher import label_with_teacher

logger = logging.getLogger("ranking")

METRICS = ("overlap_at_k", "ndcg_at_k", "rbo_at_k")


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


def cross_encoder_grid(path: str, queries: list[str], candidates: list[str], args: argparse.Namespace) -> np.ndarray:
    """A cross-encoder's (the teacher's or a reference teacher's) cached logits of the ranking label on the grid."""
    teacher = CrossEncoder(path, device="cpu" if args.cpu else None)
    labels = [teacher.config.id2label[i] for i in range(teacher.num_labels)] if teacher.num_labels > 2 else []
    column = logit_column(max(1, len(labels)), labels, args.label, path)
    return teacher_grid(teacher, queries, candidates, column, args.cache_dir)


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
    queries, candidates = ranking_grid(dev_pairs(args), args.queries, args.seed, max_candidates=args.max_candidates)
    exclude = np.array([[query == candidate for candidate in candidates] for query in queries])
    logger.info("%d queries x %d candidates", len(queries), len(candidates))
    start = time.perf_counter()
    teacher_scores = cross_encoder_grid(args.teacher, queries, candidates, args)
    results = {"teacher": args.teacher, "teacher_seconds": time.perf_counter() - start}
    results["reference_teachers"], results["reference_cascade"], ceiling = {}, {}, {}
    for path in args.reference_teachers:
        scores = cross_encoder_grid(path, queries, candidates, args)
        results["reference_teachers"][path] = ranking_fidelity(scores, teacher_scores, k=args.k, exclude=exclude)
        results["reference_cascade"][path] = cascade_fidelity(scores, teacher_scores, args.shortlists, args.k, exclude)
    if args.reference_teachers:
        references = list(results["reference_teachers"].values())
        ceiling = {metric: float(np.mean([reference[metric] for reference in references])) for metric in METRICS}
        ceiling["ndcg_per_query"] = np.mean([reference["ndcg_per_query"] for reference in references], 0).tolist()
        results["ceiling"] = ceiling
    results["students"], results["cascade"] = {}, {}
    for path in args.students:
        student = load_student(path, device="cpu" if args.cpu else None)
        head = get_pair_head(student)
        column = logit_column(head.num_labels, list(head.label_names or []), args.label, path)
        scores = student_grid(student, queries, candidates, column)
        fidelity = ranking_fidelity(scores, teacher_scores, k=args.k, exclude=exclude)
        if ceiling:
            fidelity["share_of_ceiling"] = {metric: fidelity[metric] / ceiling[metric] for metric in METRICS}
            difference = np.subtract(fidelity["ndcg_per_query"], ceiling["ndcg_per_query"])
            fidelity["ndcg_minus_reference"] = {
                "mean": float(difference.mean()),
                "interval": bootstrap_interval(difference),
            }
        results["students"][path] = fidelity
        results["cascade"][path] = cascade_fidelity(scores, teacher_scores, args.shortlists, args.k, exclude)
        logger.info("%s: %s", path, ", ".join(f"{metric} {fidelity[metric]:.3f}" for metric in METRICS))
    results["settings"] = {**vars(args), "num_queries": len(queries), "num_candidates": len(candidates)}
    results["software"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "ranking.json").write_text(json.dumps(results, indent=2))
    print(format_tables(results, args.k))
    return results


def format_tables(results: dict, k: int) -> str:
    """The fidelity table (students and reference teachers) and the cascade table, in Markdown."""

    def cell(fidelity: dict, metric: str) -> str:
        low, high = fidelity["intervals"][metric]
        return f"{fidelity[metric]:.3f} [{low:.3f}, {high:.3f}]"

    references = results["reference_teachers"]
    header = f"| model | overlap@{k} | NDCG@{k} | RBO@{k} (p=0.9) |"
    rule = "|---|---:|---:|---:|"
    if references:
        header += f" share of ceiling (overlap / NDCG / RBO) | NDCG@{k} - reference |"
        rule += "---:|---:|"
    lines = [f"Fidelity to {results['teacher']} (mean [bootstrap 95% interval over queries])", "", header, rule]
    for path, fidelity in results["students"].items():
        line = f"| {path} | " + " | ".join(cell(fidelity, metric) for metric in METRICS) + " |"
        if references:
            share, difference = fidelity["share_of_ceiling"], fidelity["ndcg_minus_reference"]
            low, high = difference["interval"]
            line += " " + " / ".join(f"{share[metric]:.0%}" for metric in METRICS)
            line += f" | {difference['mean']:+.3f} [{low:+.3f}, {high:+.3f}] |"
        lines.append(line)
    for path, fidelity in references.items():
        lines.append(f"| reference: {path} | " + " | ".join(cell(fidelity, metric) for metric in METRICS) + " | | |")
    if references:
        ceiling = results["ceiling"]
        lines.append("| ceiling (mean of references) | " + " | ".join(f"{ceiling[m]:.3f}" for m in METRICS) + " | | |")
    header = f"| student | shortlist | teacher calls saved | cascade NDCG@{k} | teacher's top {k} in shortlist |"
    rule = "|---|---:|---:|---:|---:|"
    reference_rows = list(results["reference_cascade"].values())
    if reference_rows:
        header += " same, reseeded teacher's shortlist |"
        rule += "---:|"
    lines += ["", "Cascade: the student's shortlist re-ranked by the teacher", "", header, rule]
    for path, rows in results["cascade"].items():
        for position, row in enumerate(rows):
            line = f"| {path} | {row['shortlist']} | {row['teacher_calls_saved']:.1f}x | "
            line += f"{cell(row, 'ndcg_at_k')} | {cell(row, 'teacher_top_k_in_shortlist')} |"
            if reference_rows:  # every row list has the same shortlist sizes: they depend on the grid only
                shares = [reference[position]["teacher_top_k_in_shortlist"] for reference in reference_rows]
                line += f" {np.mean(shares):.3f} |"
            lines.append(line)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", type=task_name, help="a registered task; its dev split gives queries and candidates")
    source.add_argument("--dev-file", help="your own pairs (.csv, .tsv, .jsonl, .parquet) instead of --task")
    parser.add_argument("--sentence1-column", help="--dev-file column of the queries")
    parser.add_argument("--sentence2-column", help="--dev-file column of the candidates")
    parser.add_argument("--teacher", required=True, help="the cross-encoder (folder or Hub id)")
    parser.add_argument("--students", nargs="+", required=True, help="DSE student folders or Hub ids")
    parser.add_argument(
        "--reference-teachers",
        nargs="+",
        default=[],
        metavar="PATH",
        help="teachers of the same recipe with other seeds: their fidelity to --teacher is the ceiling",
    )
    parser.add_argument("--data-dir", help="local task data (default: $ST_DSE_DATA_DIR, else the Hub)")
    parser.add_argument("--queries", type=int_at_least(1), default=200, help="dev first sentences used as queries")
    parser.add_argument(
        "--max-candidates",
        type=int_at_least(11),
        help="at most this many candidates: the queries' gold partners and a random draw of the other dev second "
        "sentences (default: every one)",
    )
    parser.add_argument("--k", type=int_at_least(1), default=10, help="the cut-off of overlap@k, NDCG@k and RBO@k")
    parser.add_argument(
        "--shortlists",
        nargs="+",
        type=int_at_least(1),
        default=[10, 20, 50, 100, 200],
        help="the cascade's shortlist sizes (capped at the pool)",
    )
    parser.add_argument("--label", help="for k-way models: the label whose logit ranks the candidates")
    parser.add_argument("--seed", type=int, default=0, help="which queries are drawn")
    parser.add_argument("--cache-dir", help="teacher logit cache (default: st_dse's user cache)")
    parser.add_argument("--cpu", action="store_true", help="run both models on the CPU")
    parser.add_argument("--output-dir", default="runs/ranking")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
