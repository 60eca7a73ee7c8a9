"""Evaluate a sentence embedding model with the SentEval protocol (CPU, scikit-learn), print a Markdown table.

The protocol and where it differs from Facebook's SentEval are documented in ``st_dse/senteval.py``.

Usage:
    python -m evaluation.senteval                                   # all-MiniLM-L6-v2, all tasks
    python -m evaluation.senteval --relatedness-regressor           # + SentEval's supervised STS-B/SICK-R
    python -m evaluation.senteval --model runs/dse_mrpc/final --tasks MR CR STS12 STS-B \\
        --data-dir DATA/senteval/data --output-dir runs/senteval_dse_mrpc
    python -m evaluation.senteval --tasks STS12 --max-samples 200   # quick check, not comparable numbers

Writes ``senteval_results.json`` (results, arguments, wall time) and ``senteval_results.md`` to --output-dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

from evaluation.arguments import int_at_least
from evaluation.senteval_protocol import ALL_TASKS, DEFAULT_KFOLD, DEFAULT_SEED, results_to_markdown, run_senteval
from st_dse.data import resolve_data_dir
from st_dse.hub import resolve_model_name
from st_dse.student import load_model

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def default_data_dir() -> str | None:
    """SentEval's data folder under $ST_DSE_DATA_DIR, or None."""
    root = resolve_data_dir(None)
    return None if root is None else str(root / "senteval" / "data")


def int_in_range(low: int, high: int):
    """An argparse ``type``: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        value = int_at_least(low)(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}], got {value}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="SentenceTransformer name or local folder")
    parser.add_argument("--data-dir", default=default_data_dir(), help="SentEval's data folder (holds downstream/)")
    parser.add_argument("--tasks", nargs="+", default=list(ALL_TASKS), help=f"default: all ({' '.join(ALL_TASKS)})")
    parser.add_argument("--output-dir", default=None, help="where to write senteval_results.{json,md}")
    parser.add_argument("--batch-size", type=int_at_least(1), default=128)
    # numpy and scikit-learn take seeds in [0, 2**32 - 1].
    parser.add_argument("--seed", type=int_in_range(0, 2**32 - 1), default=DEFAULT_SEED)
    parser.add_argument("--kfold", type=int_at_least(2), default=DEFAULT_KFOLD, help="cross-validation folds (>= 2)")
    parser.add_argument(
        "--max-samples", type=int_at_least(1), default=None, help="first N examples per file (quick checks)"
    )
    parser.add_argument(
        "--relatedness-regressor",
        action="store_true",
        help="also run SentEval's supervised STSBenchmark/SICK-R regressor (the default reports cosine on test)",
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("argument --data-dir: required when $ST_DSE_DATA_DIR is not set (SentEval's data folder).")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    # 1. Load the model (the default name maps to the packaged offline copy when the Hub is unreachable).
    # A DSE student folder loads with its PairHead (st_dse.load_student); any other name or path as usual.
    model = load_model(args.model, device=args.device)
    model_path = resolve_model_name(args.model)
    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir:
        output_dir.mkdir(parents=True, exist_ok=True)

    # 2. Run the tasks, saving partial results after each so a long run that is cut short keeps what it finished.
    start = time.perf_counter()
    report = {"model": args.model, "model_path": model_path, "args": vars(args), "machine": platform.platform()}

    def save(task: str, task_results: dict) -> None:
        logging.info("%s done in %.0f s", task, task_results["seconds"])
        if output_dir:
            report["wall_seconds"] = round(time.perf_counter() - start, 1)
            (output_dir / "senteval_results.json").write_text(json.dumps(report, indent=2, default=float))

    report["results"] = results = {}
    results.update(
        run_senteval(
            model,
            args.data_dir,
            tasks=args.tasks,
            batch_size=args.batch_size,
            seed=args.seed,
            kfold=args.kfold,
            max_samples=args.max_samples,
            relatedness_regressor=args.relatedness_regressor,
            callback=lambda task, task_results: (results.__setitem__(task, task_results), save(task, task_results)),
        )
    )
    report["wall_seconds"] = round(time.perf_counter() - start, 1)

    # 3. Print and save the tables.
    table = results_to_markdown(results, sts_details=True)
    print(f"\nSentEval protocol (st_dse, scikit-learn) for {args.model}, wall time {report['wall_seconds']:.0f} s\n")
    print(table)
    if output_dir:
        (output_dir / "senteval_results.json").write_text(json.dumps(report, indent=2, default=float))
        (output_dir / "senteval_results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
