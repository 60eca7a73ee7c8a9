"""STS transfer on pairs a model never trained on: MTEB's STS12-STS16 scored on all pairs and on the unseen ones.

STS Benchmark was compiled from the SemEval STS tasks of 2012-2017, so a model trained on its training split has seen
many of the pairs that MTEB's STS12-STS16 test on. This tool measures that overlap (same pair in either order, case,
punctuation and spacing ignored) and scores each model's embeddings (cosine Spearman x 100, MTEB's main score) on
all of a task's pairs and on the pairs that are not in the training data, so a gain can be read as transfer or as
memory.

Usage:
    python -m evaluation.sts_transfer --train-task stsb --models sentence-transformers/all-MiniLM-L6-v2 runs/stsb \\
        --data-dir DATA --output-dir runs/sts-transfer
    python -m evaluation.sts_transfer --train-file my_train.csv --models runs/my-student

Writes ``sts_transfer.json`` to --output-dir and prints a Markdown table (cells marked * were scored on pairs of
which part was in the training data).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from evaluation.arguments import task_name
from evaluation.mteb_data import SEMEVAL_STS_SOURCES, load_semeval_sts, require_data_dir
from st_dse.data import get_task, load_task
from st_dse.data.pairs import read_pair_file
from st_dse.hub import resolve_model_name
from st_dse.student import load_model

TASKS = tuple(SEMEVAL_STS_SOURCES)
logger = logging.getLogger("sts_transfer")


def normalise(text: str) -> str:
    """Lowercase, letters and digits only, single spaces: the key two copies of a sentence share."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def pair_keys(sentences1: Iterable[str], sentences2: Iterable[str]) -> set[tuple[str, str]]:
    """Normalised pairs, in both orders."""
    keys = set()
    for a, b in zip(sentences1, sentences2):
        a, b = normalise(a), normalise(b)
        keys.update({(a, b), (b, a)})
    return keys


def seen_mask(sentences1: Sequence[str], sentences2: Sequence[str], keys: set[tuple[str, str]]) -> np.ndarray:
    return np.array([(normalise(a), normalise(b)) in keys for a, b in zip(sentences1, sentences2)])


def cosine_spearman(model, sentences1: Sequence[str], sentences2: Sequence[str], scores: Sequence[float]) -> float:
    encode = dict(batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    u, v = model.encode(list(sentences1), **encode), model.encode(list(sentences2), **encode)
    return float(spearmanr((u * v).sum(axis=1), scores).statistic * 100)


def training_pairs(args: argparse.Namespace) -> tuple[list[str], list[str], str]:
    if args.train_file:
        pairs = read_pair_file(args.train_file)
        return pairs["sentence1"], pairs["sentence2"], Path(args.train_file).name
    task = get_task(args.train_task)
    pairs = load_task(task, "train", args.data_dir)
    return pairs["sentence1"], pairs["sentence2"], f"{task.name} train"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    train1, train2, train_name = training_pairs(args)
    keys = pair_keys(train1, train2)
    data_dir = require_data_dir(args.data_dir)
    tasks = {}
    for name in args.tasks:
        columns = load_semeval_sts(
            data_dir / "senteval/data/downstream/STS" / f"{name}-en-test", SEMEVAL_STS_SOURCES[name]
        )
        seen = seen_mask(columns["sentence1"], columns["sentence2"], keys)
        tasks[name] = {"columns": columns, "seen": seen}
        logger.info(
            "%s: %d of %d pairs (%.1f%%) are in %s", name, seen.sum(), len(seen), 100 * seen.mean(), train_name
        )
    results = {
        "training_data": train_name,
        "overlap": {
            name: {
                "pairs": len(task["seen"]),
                "seen": int(task["seen"].sum()),
                "seen_percent": 100 * task["seen"].mean(),
            }
            for name, task in tasks.items()
        },
        "models": {},
    }
    for model_name in args.models:
        model = load_model(resolve_model_name(model_name), device="cpu")
        scores = {}
        for name, task in tasks.items():
            columns, unseen = task["columns"], ~task["seen"]
            scores[name] = {
                "all": cosine_spearman(model, columns["sentence1"], columns["sentence2"], columns["score"]),
                "unseen": cosine_spearman(
                    model,
                    [s for s, keep in zip(columns["sentence1"], unseen) if keep],
                    [s for s, keep in zip(columns["sentence2"], unseen) if keep],
                    [s for s, keep in zip(columns["score"], unseen) if keep],
                ),
            }
        results["models"][model_name] = scores
    results["settings"] = vars(args)
    results["wall_seconds"] = time.perf_counter() - started
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "sts_transfer.json").write_text(json.dumps(results, indent=2))
    print(markdown_table(results))
    return results


def markdown_table(results: dict) -> str:
    """One row per model and pair set; ``*`` marks cells whose pairs include training pairs."""
    names = list(results["overlap"])
    lines = [
        "| model | pairs | " + " | ".join(names) + " | average |",
        "|---|---|" + "---:|" * (len(names) + 1),
        "| (share of pairs in the training data) | | "
        + " | ".join(f"{results['overlap'][n]['seen_percent']:.1f}%" for n in names)
        + " | |",
    ]
    for model, scores in results["models"].items():
        for subset in ("all", "unseen"):
            values = [scores[n][subset] for n in names]
            marks = ["*" if subset == "all" and results["overlap"][n]["seen"] else "" for n in names]
            cells = " | ".join(f"{value:.2f}{mark}" for value, mark in zip(values, marks))
            lines.append(f"| {model} | {subset} | {cells} | {np.mean(values):.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--train-task", type=task_name, help="the task whose train split the models saw, e.g. stsb")
    source.add_argument("--train-file", help="or your own training pairs (.csv, .tsv, .jsonl, .parquet)")
    parser.add_argument("--models", nargs="+", required=True, help="SentenceTransformer folders or Hub ids")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, help="MTEB STS tasks")
    parser.add_argument("--data-dir", help="the data root holding senteval/ (default: $ST_DSE_DATA_DIR)")
    parser.add_argument("--output-dir", default="runs/sts-transfer")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
