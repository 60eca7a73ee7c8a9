"""GLUE-style pair tasks: teacher, DSE student, gold-only student and the untouched base model, side by side.

Usage:
    python -m evaluation.glue --tasks mrpc --runs-dir runs --data-dir DATA
    python -m evaluation.glue --tasks mrpc stsb rte --runs-dir runs --data-dir DATA --train-missing

For each task it looks in --runs-dir for the outputs of the recipes:

    RUNS/<task>/             the DSE student   (python recipes/distill.py --task <task> --output-dir RUNS/<task>)
    RUNS/<task>-teacher/     its teacher       (fine-tuned by that run unless it was given --teacher)
    RUNS/<task>-gold/        the gold-only student, same architecture and budget (--distillation-weight 0)

With --train-missing, missing runs are made with the recipe's defaults first. Every system is evaluated on the dev
split (STS-B also on its gold-scored test set, SICK on its test set): the teacher and the students from their logits,
the base model by cosine similarity with a decision threshold (binary) or a logistic regression on the cosine (k-way),
fitted on the train split only (correlations need no fit). Prints a table and writes RUNS/glue_results.json, with the
student's relative degradation against the teacher on the main metric (the paper reports 4.6% on average).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sentence_transformers import CrossEncoder
from sklearn.linear_model import LogisticRegression

import st_dse
from evaluation.arguments import int_at_least, task_name
from st_dse.data import TaskSpec, compute_metrics, get_task, load_task
from st_dse.hub import DEFAULT_MODEL
from st_dse.training import evaluate_cross_encoder, evaluate_student, relative_degradation

DISTILL_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "distill.py"
logger = logging.getLogger("glue")


def eval_splits(task: TaskSpec) -> list[str]:
    """Dev split(s), plus test where the test split has gold labels here."""
    return [split for split in task.benchmark.splits if split != "train"]


def cosine(model, sentences1: list[str], sentences2: list[str]) -> np.ndarray:
    u = model.encode(sentences1, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
    v = model.encode(sentences2, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
    return (u * v).sum(axis=1)


def evaluate_base_model(model, task: TaskSpec, train, evaluations: dict) -> dict[str, dict[str, float]]:
    """Cosine similarity of the base model, calibrated on train only where the metric needs a decision."""
    results = {}
    if task.problem_type == "regression":
        for split, dataset in evaluations.items():
            results[split] = compute_metrics(
                task, cosine(model, dataset["sentence1"], dataset["sentence2"]), dataset["label"]
            )
        return results
    train_cosine = cosine(model, train["sentence1"], train["sentence2"])[:, None]
    classifier = LogisticRegression(max_iter=1000).fit(train_cosine, np.asarray(train["label"]))
    for split, dataset in evaluations.items():
        predictions = classifier.predict(cosine(model, dataset["sentence1"], dataset["sentence2"])[:, None])
        results[split] = compute_metrics(task, predictions, dataset["label"])
    return results


def train_missing(task: TaskSpec, runs_dir: Path, data_dir: str | None) -> None:
    """Run recipes/distill.py (its defaults) for the DSE and gold-only students that are not in ``runs_dir`` yet."""
    dse_dir, gold_dir = runs_dir / task.name, runs_dir / f"{task.name}-gold"
    common = [sys.executable, str(DISTILL_RECIPE), "--task", task.name]
    common += ["--data-dir", data_dir] if data_dir else []
    if not (dse_dir / "dse.json").is_file():
        subprocess.run([*common, "--output-dir", str(dse_dir)], check=True)
    if not (gold_dir / "dse.json").is_file():
        subprocess.run([*common, "--output-dir", str(gold_dir), "--distillation-weight", "0"], check=True)


def evaluate_task(
    task: TaskSpec, runs_dir: Path, data_dir: str | None, base_model: str, max_samples: int | None = None
) -> dict:
    train = load_task(task, "train", data_dir, max_samples=max_samples)
    evaluations = {split: load_task(task, split, data_dir, max_samples=max_samples) for split in eval_splits(task)}
    systems: dict[str, dict[str, dict[str, float]]] = {}
    timings: dict[str, float] = {}
    paths = {
        "teacher": runs_dir / f"{task.name}-teacher",
        "DSE student": runs_dir / task.name,
        "gold-only student": runs_dir / f"{task.name}-gold",
    }
    dse_info = runs_dir / task.name / "dse.json"
    given_teacher = json.loads(dse_info.read_text()).get("teacher") if dse_info.is_file() else None
    if given_teacher:
        paths["teacher"] = Path(given_teacher)  # a run given --teacher PATH
    if (paths["teacher"] / "config.json").is_file():
        start = time.perf_counter()
        teacher = CrossEncoder(str(paths["teacher"]))
        systems["teacher"] = {
            split: evaluate_cross_encoder(teacher, task, data) for split, data in evaluations.items()
        }
        timings["teacher"] = time.perf_counter() - start
    for system in ("DSE student", "gold-only student"):
        if (paths[system] / "modules.json").is_file():
            start = time.perf_counter()
            student = st_dse.load_student(str(paths[system]))
            systems[system] = {split: evaluate_student(student, task, data) for split, data in evaluations.items()}
            timings[system] = time.perf_counter() - start
        else:
            logger.warning(
                "No %s for %s in %s (run with --train-missing to make it)", system, task.name, paths[system]
            )
    start = time.perf_counter()
    systems["base model (cosine)"] = evaluate_base_model(st_dse.load_model(base_model), task, train, evaluations)
    timings["base model (cosine)"] = time.perf_counter() - start

    main_metric = task.main_metric
    degradation = {}
    if "teacher" in systems:
        for system in ("DSE student", "gold-only student"):
            if system in systems:
                degradation[system] = {
                    split: relative_degradation(systems["teacher"][split], metrics, main_metric)
                    for split, metrics in systems[system].items()
                }
    return {
        "task": task.name,
        "description": task.description,
        "main_metric": main_metric,
        "systems": systems,
        "relative_degradation_pct": degradation,
        "paths": {name: str(path) for name, path in paths.items()},
        "eval_seconds": timings,
    }


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| task | split | system | metrics | rel. degradation vs teacher (main metric) |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        for system, per_split in result["systems"].items():
            for split, metrics in per_split.items():
                values = ", ".join(f"{name} {value:.2f}" for name, value in metrics.items() if name != "main")
                degradation = result["relative_degradation_pct"].get(system, {}).get(split)
                cell = f"{degradation:.2f}%" if degradation is not None else ""
                lines.append(f"| {result['task']} | {split} | {system} | {values} | {cell} |")
    return "\n".join(lines)


def summary_table(results: list[dict]) -> str:
    """One row per task: each system's main metric on the first evaluation split, and what distillation bought."""
    systems = ("teacher", "DSE student", "gold-only student", "base model (cosine)")
    lines = [
        "| task | split | metric | " + " | ".join(systems) + " | DSE rel. degradation | DSE - gold-only |",
        "|---|---|---|" + "---:|" * (len(systems) + 2),
    ]
    for result in results:
        split = eval_splits(get_task(result["task"]))[0]
        main = result["main_metric"]
        values = {name: result["systems"].get(name, {}).get(split, {}).get(main) for name in systems}
        cells = [f"{values[name]:.2f}" if values[name] is not None else "" for name in systems]
        degradation = result["relative_degradation_pct"].get("DSE student", {}).get(split)
        dse, gold = values["DSE student"], values["gold-only student"]
        gap = f"{dse - gold:+.2f}" if dse is not None and gold is not None else ""
        degradation_cell = f"{degradation:.2f}%" if degradation is not None else ""
        row = [result["task"], split, main, *cells, degradation_cell, gap]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", type=task_name, required=True)
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--data-dir")
    parser.add_argument("--base-model", default=DEFAULT_MODEL)
    parser.add_argument("--train-missing", action="store_true", help="run the recipes for missing students first")
    parser.add_argument("--output", help="JSON path (default RUNS/glue_results.json)")
    parser.add_argument("--max-samples", type=int_at_least(1), help="first N pairs of each split (quick checks only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    runs_dir = Path(args.runs_dir)
    results = []
    for name in args.tasks:
        task = get_task(name)
        if args.train_missing:
            train_missing(task, runs_dir, args.data_dir)
        results.append(evaluate_task(task, runs_dir, args.data_dir, args.base_model, args.max_samples))
    print(markdown_table(results))
    print()
    print(summary_table(results))
    mains = [
        degradation
        for result in results
        for degradation in [
            result["relative_degradation_pct"].get("DSE student", {}).get(eval_splits(get_task(result["task"]))[0])
        ]
        if degradation is not None
    ]
    summary = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()} {platform.processor() or ''} CPU".strip(),
        "tasks": results,
        "average_relative_degradation_pct_dev": float(np.mean(mains)) if mains else None,
    }
    if mains:
        print(f"\nDSE student: average relative degradation vs the teacher (dev, main metric) {np.mean(mains):.2f}%")
    output = Path(args.output) if args.output else runs_dir / "glue_results.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2))
    return results


if __name__ == "__main__":
    main()
