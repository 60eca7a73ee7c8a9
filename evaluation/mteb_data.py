"""Run official MTEB tasks on local copies of their data: mteb computes every score, without the Hugging Face Hub.

mteb (2.x) normally downloads each task's data from the Hub inside ``task.load_data()``. On an air-gapped machine this
module builds the same evaluation split from local files and hands it to the task the way mteb itself supports for
pre-loaded data: ``task.dataset`` is set and ``task.data_loaded = True`` before ``mteb.evaluate`` runs, so mteb skips
its own loading and scores the pairs with its own evaluators (``AnySTSEvaluator`` for STS, the pair-classification
evaluator for pair classification). Results keep the official task name and metadata and land in MTEB's results
format (``results/<org>__<model>/<revision>/<Task>.json``), for comparing models on the same local pairs. They are
not leaderboard results: the text is a local copy (see below), and a local folder's revision is a hash of its weights,
not a Hub commit. Leaderboard results come from mteb itself, online, on the model pushed to the Hub (see
evaluation/mteb_sts.py).

Because the scores are only comparable when the pairs are the same, every local split is checked against the
statistics mteb ships with each task (``task.metadata.descriptive_stats``):

* a different number of pairs is an error (:class:`LocalDataMismatchError`): the task is not the official one;
* any other difference (total characters, distinct texts, distinct pairs, score range and mean, label counts) is
  returned as a list of human-readable notes and recorded with the run, because it means the text differs somewhere
  (casing, tokenisation, punctuation spacing) even though the pairs are the same.

Which local files match which task (checked against mteb 2.26 descriptive statistics)::

    STS12-STS16   senteval/data/downstream/STS/STS1x-en-test/  SentEval's lowercased, tokenised copy of the SemEval
                  releases. All mteb statistics match exactly (lengths and distinct texts; letter case does not
                  show in them), so this is the tokenisation MTEB evaluates on; the cased raw releases in sts_raw/
                  have other lengths and distinct-text counts and are not used.
    STSBenchmark  stsbenchmark/sts-test.csv (original cased release): every statistic matches.
    SICK-R        senteval/data/downstream/SICK/SICK_{train,trial,test_annotated}.txt: MTEB's SICK-R "test" split
                  is all 9,927 SICK pairs, not only the 4,927 test pairs. Pair count, distinct texts, distinct
                  pairs and scores match; the total text length is 0.12% longer here (1,079 characters), so a few
                  hundred sentences are spaced differently (e.g. " ," or "isn 't"): scores may differ slightly.
    TwitterURLCorpus  only the original test file is here (9,334 usable pairs after the authors' rule); MTEB's
                  "test" split has 51,534 pairs (the 42,200-pair train file is included), so it cannot run.

SprintDuplicateQuestions and TwitterSemEval2015 have no usable local copy (see :data:`UNAVAILABLE_TASKS`).

Example::

    import mteb
    from mteb.cache import ResultCache
    from evaluation.mteb_data import load_local_tasks

    tasks, notes = load_local_tasks(["STS12", "STSBenchmark"], data_dir="DATA")
    results = mteb.evaluate(model, tasks, cache=ResultCache("results_dir"))
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_dse.data.benchmarks import DATA_DIR_ENV, resolve_data_dir

if TYPE_CHECKING:
    from datasets import Dataset
    from mteb.abstasks.abstask import AbsTask

logger = logging.getLogger(__name__)


# SemEval STS test sources per year, in SentEval's order. STS13's SMT pairs are not distributed (licence), and MTEB's
# STS13 (1,500 pairs) leaves them out as well.
SEMEVAL_STS_SOURCES: dict[str, tuple[str, ...]] = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
SENTEVAL_STS_DIR = Path("senteval/data/downstream/STS")
SICK_DIR = Path("senteval/data/downstream/SICK")
SICK_FILES = ("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt")
STS_BENCHMARK_TEST = Path("stsbenchmark/sts-test.csv")
TWITTER_URL_TEST = Path("mteb_sources/TwitterURLCorpus/Twitter_URL_Corpus_test.txt")

# Tasks that run by default: their local pair counts equal MTEB's.
SUPPORTED_TASKS: tuple[str, ...] = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICK-R")

# Tasks asked for but not runnable offline, with the reason shown to the user.
UNAVAILABLE_TASKS: dict[str, str] = {
    "SprintDuplicateQuestions": "no usable local copy of its data was found (see the data MANIFEST.md).",
    "TwitterSemEval2015": "no usable local copy of its data was found (see the data MANIFEST.md).",
}


class LocalDataMismatchError(ValueError):
    """The local copy of a task's data does not have the pairs the official MTEB task evaluates on."""


@dataclass(frozen=True)
class LocalSource:
    """How to build one task's evaluation split from the local data folder, and how its text compares with MTEB's.

    ``matches_mteb_statistics`` is True when every statistic mteb ships for the split matches the local copy (pairs,
    characters, distinct texts, scores), False when the text is known to differ; ``text_note`` says what the local
    text is and how it compares with MTEB's.
    """

    load: Callable[[Path], dict[str, list[Any]]]
    description: str
    matches_mteb_statistics: bool
    text_note: str


# --------------------------------------------------------------------------------------------------------------------
# Readers


def _read_lines(path: Path) -> list[str]:
    """The file's lines without line endings; only "\\n" ends a line (str.splitlines also splits on \\x1c...)."""
    if not path.is_file():
        raise FileNotFoundError(f"Expected data file {path} is missing. Point --data-dir at the shared data root.")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _read_tsv(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"Expected data file {path} is missing. Point --data-dir at the shared data root.")
    with path.open(encoding="utf-8", newline="") as handle:
        # QUOTE_NONE: quotes in these files are part of the text.
        return list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def load_semeval_sts(folder: Path, sources: Sequence[str]) -> dict[str, list[Any]]:
    """Read SemEval STS pairs from ``STS.input.<source>.txt`` / ``STS.gs.<source>.txt`` files.

    Pairs whose gold line is empty have no gold score and are skipped, as SentEval and MTEB do.
    """
    sentence1: list[str] = []
    sentence2: list[str] = []
    scores: list[float] = []
    for source in sources:
        input_path = folder / f"STS.input.{source}.txt"
        gold_path = folder / f"STS.gs.{source}.txt"
        inputs = _read_lines(input_path)
        golds = _read_lines(gold_path)
        if len(inputs) != len(golds):
            raise LocalDataMismatchError(
                f"{input_path} has {len(inputs)} lines but {gold_path} has {len(golds)}: the files do not belong "
                "together. Restore them from the original release."
            )
        for line_number, (line, gold) in enumerate(zip(inputs, golds), start=1):
            if not gold.strip():
                continue
            columns = line.split("\t")
            if len(columns) < 2:
                raise LocalDataMismatchError(f"{input_path}:{line_number} has no tab-separated sentence pair.")
            sentence1.append(columns[0])
            sentence2.append(columns[1])
            scores.append(float(gold))
    return {"sentence1": sentence1, "sentence2": sentence2, "score": scores}


def _semeval_loader(task_name: str) -> Callable[[Path], dict[str, list[Any]]]:
    folder = SENTEVAL_STS_DIR / f"{task_name}-en-test"
    return lambda data_dir: load_semeval_sts(data_dir / folder, SEMEVAL_STS_SOURCES[task_name])


def load_sts_benchmark_test(data_dir: Path) -> dict[str, list[Any]]:
    """STS Benchmark test pairs from the original release (columns: genre, file, year, id, score, s1, s2[, ...])."""
    path = data_dir / STS_BENCHMARK_TEST
    rows = _read_tsv(path)
    for line_number, row in enumerate(rows, start=1):
        if len(row) < 7:
            raise LocalDataMismatchError(f"{path}:{line_number} has {len(row)} columns, expected at least 7.")
    return {
        "sentence1": [row[5] for row in rows],
        "sentence2": [row[6] for row in rows],
        "score": [float(row[4]) for row in rows],
    }


def load_sick_relatedness(data_dir: Path) -> dict[str, list[Any]]:
    """All SICK pairs (train + trial + test) with their relatedness scores, as MTEB's SICK-R "test" split holds."""
    sentence1: list[str] = []
    sentence2: list[str] = []
    scores: list[float] = []
    for file_name in SICK_FILES:
        path = data_dir / SICK_DIR / file_name
        rows = _read_tsv(path)
        header = rows[0] if rows else []
        if header[:4] != ["pair_ID", "sentence_A", "sentence_B", "relatedness_score"]:
            raise LocalDataMismatchError(f"{path} does not start with the SICK header (pair_ID, sentence_A, ...).")
        for row in rows[1:]:
            sentence1.append(row[1])
            sentence2.append(row[2])
            scores.append(float(row[3]))
    return {"sentence1": sentence1, "sentence2": sentence2, "score": scores}


def load_twitter_url_corpus_test(data_dir: Path) -> dict[str, list[Any]]:
    """Twitter URL Corpus test pairs under the authors' rule (Lan et al., 2017).

    Each line holds ``(n,6)``: n of 6 annotators judged the pair a paraphrase. n >= 4 is a paraphrase (1), n <= 2 is
    not (0), n = 3 is discarded; blank lines separate groups.
    """
    path = data_dir / TWITTER_URL_TEST
    sentence1: list[str] = []
    sentence2: list[str] = []
    labels: list[int] = []
    for line_number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        columns = line.split("\t")
        try:
            votes = int(columns[2].strip().strip("()").split(",")[0])
        except (IndexError, ValueError):
            raise LocalDataMismatchError(f"{path}:{line_number} has no '(n,6)' annotation column.") from None
        if votes == 3:
            continue
        sentence1.append(columns[0])
        sentence2.append(columns[1])
        labels.append(int(votes >= 4))
    return {"sentence1": sentence1, "sentence2": sentence2, "labels": labels}


LOCAL_SOURCES: dict[str, LocalSource] = {
    **{
        name: LocalSource(
            _semeval_loader(name),
            f"SentEval copy of the SemEval {name} test release",
            matches_mteb_statistics=True,
            text_note=(
                "SentEval's lowercased, Moses-tokenised copy of the SemEval release, not the cased original: every "
                "statistic mteb ships matches it (lengths, distinct texts, scores), which the original release does "
                "not; statistics do not show letter case"
            ),
        )
        for name in SEMEVAL_STS_SOURCES
    },
    "STSBenchmark": LocalSource(
        load_sts_benchmark_test,
        "original STS Benchmark release, sts-test.csv",
        matches_mteb_statistics=True,
        text_note="the original cased release: every statistic mteb ships matches it exactly",
    ),
    "SICK-R": LocalSource(
        load_sick_relatedness,
        "SICK train + trial + test (SemEval-2014 task 1 files)",
        matches_mteb_statistics=False,
        text_note=(
            "same pairs, distinct texts and scores as MTEB's, but the text is 0.12% longer (1,079 characters): a "
            "few hundred sentences are spaced differently (e.g. ' ,' or \"isn 't\"), so scores may differ slightly"
        ),
    ),
    "TwitterURLCorpus": LocalSource(
        load_twitter_url_corpus_test,
        "original Twitter URL Corpus test file only",
        matches_mteb_statistics=False,
        text_note="only the test file; MTEB's split also holds the train file, so the task is not run",
    ),
}

# Why a task's local copy is known not to match, shown with the count error.
_KNOWN_COUNT_GAPS = {
    "TwitterURLCorpus": (
        "MTEB's 'test' split holds the train and test files of the Twitter URL Corpus (42,200 + 9,334 pairs); only "
        "the test file is available locally."
    ),
}


# --------------------------------------------------------------------------------------------------------------------
# Checks against mteb's descriptive statistics


def split_statistics(columns: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """The statistics mteb records per split, computed the same way (character lengths, exact-string distinct counts).

    Distinct pairs are counted as ordered pairs, which is how the statistics shipped with mteb were computed.
    """
    sentence1 = list(columns["sentence1"])
    sentence2 = list(columns["sentence2"])
    stats: dict[str, Any] = {
        "num_samples": len(sentence1),
        "number_of_characters": sum(map(len, sentence1)) + sum(map(len, sentence2)),
        "unique_pairs": len(set(zip(sentence1, sentence2))),
    }
    for key, texts in (("text1_statistics", sentence1), ("text2_statistics", sentence2)):
        lengths = [len(text) for text in texts]
        stats[key] = {
            "total_text_length": sum(lengths),
            "min_text_length": min(lengths, default=0),
            "max_text_length": max(lengths, default=0),
            "unique_texts": len(set(texts)),
        }
    if "score" in columns:
        scores = [float(score) for score in columns["score"]]
        stats["label_statistics"] = {
            "min_score": min(scores, default=math.nan),
            "avg_score": sum(scores) / len(scores) if scores else math.nan,
            "max_score": max(scores, default=math.nan),
        }
    if "labels" in columns:
        counts = Counter(str(label) for label in columns["labels"])
        stats["labels_statistics"] = {"labels": {label: {"count": count} for label, count in counts.items()}}
    return stats


def _differences(local: Mapping[str, Any], official: Mapping[str, Any], prefix: str = "") -> list[str]:
    notes = []
    for key, local_value in local.items():
        if key not in official or official[key] is None:
            continue
        official_value = official[key]
        if isinstance(local_value, Mapping):
            if isinstance(official_value, Mapping):
                notes.extend(_differences(local_value, official_value, f"{prefix}{key}."))
            continue
        same = (
            math.isclose(float(local_value), float(official_value), rel_tol=1e-9, abs_tol=1e-9)
            if isinstance(local_value, float) or isinstance(official_value, float)
            else local_value == official_value
        )
        if not same:
            notes.append(f"{prefix}{key}: local {local_value} vs MTEB {official_value}")
    return notes


def check_split(
    task_name: str,
    split: str,
    columns: Mapping[str, Sequence[Any]],
    official_stats: Mapping[str, Any] | None,
    expected_num_samples: int | None = None,
) -> list[str]:
    """Compare a local split with the official one; raise on a different pair count, return other differences.

    Args:
        task_name: Name of the task, for messages.
        split: Split name, for messages.
        columns: The local split as columns (``sentence1``, ``sentence2``, ``score`` or ``labels``).
        official_stats: mteb's descriptive statistics of the split, or None when mteb has none.
        expected_num_samples: Pair count to require; defaults to ``official_stats["num_samples"]``.

    Returns:
        One note per statistic that differs from mteb's (empty when the split matches exactly).

    Raises:
        LocalDataMismatchError: the number of pairs differs, or nothing says how many pairs to expect.
    """
    if expected_num_samples is None:
        if not official_stats or "num_samples" not in official_stats:
            raise LocalDataMismatchError(
                f"mteb has no descriptive statistics for {task_name} ({split}), so the local copy cannot be checked. "
                "Pass expected_num_samples explicitly if you know the official pair count."
            )
        expected_num_samples = int(official_stats["num_samples"])
    local_stats = split_statistics(columns)
    if local_stats["num_samples"] != expected_num_samples:
        gap = _KNOWN_COUNT_GAPS.get(task_name, "")
        raise LocalDataMismatchError(
            f"Local data for MTEB task {task_name} ({split}) has {local_stats['num_samples']} pairs but the official "
            f"task has {expected_num_samples}. Scores on it would not be comparable with MTEB's, so it is not run. "
            f"{gap}".rstrip()
        )
    return _differences(local_stats, official_stats or {})


# --------------------------------------------------------------------------------------------------------------------
# Feeding tasks


def attach_local_data(
    task: AbsTask,
    splits: Mapping[str, Mapping[str, Sequence[Any]] | Dataset],
    expected_num_samples: Mapping[str, int] | None = None,
) -> list[str]:
    """Give an mteb task its evaluation data so that ``mteb.evaluate`` does not load it from the Hub.

    Every evaluation split of the task (``task.eval_splits``) must be given, and each is checked with
    :func:`check_split` before anything is attached.

    Args:
        task: An mteb task, e.g. ``mteb.get_task("STS12")``. It must be monolingual (one "default" subset).
        splits: Split name -> columns (a mapping of lists or a ``datasets.Dataset``) in the task's format.
        expected_num_samples: Split -> pair count to require instead of mteb's statistics (for custom tasks).

    Returns:
        Notes on statistics that differ from mteb's, prefixed with the task and split.

    Raises:
        LocalDataMismatchError: a split is missing or has a different number of pairs.
    """
    from datasets import Dataset, DatasetDict

    name = task.metadata.name
    if task.metadata.is_multilingual:
        raise ValueError(f"{name} has several subsets; local feeding supports single-subset tasks only.")
    official = task.metadata.descriptive_stats or {}
    notes: list[str] = []
    datasets = {}
    for split in task.eval_splits:
        if split not in splits:
            raise LocalDataMismatchError(f"No local data given for split {split!r} of {name}; got {sorted(splits)}.")
        columns = splits[split]
        dataset = columns if isinstance(columns, Dataset) else Dataset.from_dict(dict(columns))
        expected = expected_num_samples.get(split) if expected_num_samples else None
        split_notes = check_split(name, split, dataset.to_dict(), official.get(split), expected)
        notes.extend(f"{name} ({split}): {note}" for note in split_notes)
        datasets[split] = dataset
    task.dataset = DatasetDict(datasets)
    task.data_loaded = True
    return notes


def require_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data root (``data_dir``, else ``$ST_DSE_DATA_DIR``); an error when neither names an existing folder."""
    path = resolve_data_dir(data_dir)
    if path is None:
        raise ValueError(f"No data folder given: pass data_dir or set {DATA_DIR_ENV} to the shared data root.")
    if not path.expanduser().is_dir():
        raise FileNotFoundError(f"Data folder {path} does not exist: pass the shared data root (holding MANIFEST.md).")
    return path.expanduser()


def load_local_task(task_name: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[AbsTask, list[str]]:
    """The official mteb task ``task_name`` with its evaluation split read from local files and checked.

    Returns:
        The task, ready for ``mteb.evaluate``, and notes on statistics that differ from mteb's.

    Raises:
        LocalDataMismatchError: the local pairs are not the official ones (different count).
        KeyError: no local copy of this task's data exists.
    """
    import mteb

    if task_name in UNAVAILABLE_TASKS:
        raise KeyError(f"MTEB task {task_name} cannot run offline: {UNAVAILABLE_TASKS[task_name]}")
    if task_name not in LOCAL_SOURCES:
        raise KeyError(
            f"No local data source for MTEB task {task_name!r}. Tasks with local data: {sorted(LOCAL_SOURCES)}."
        )
    root = require_data_dir(data_dir)
    task = mteb.get_task(task_name)
    if list(task.eval_splits) != ["test"]:
        raise LocalDataMismatchError(f"{task_name} evaluates on {list(task.eval_splits)}; only 'test' is built here.")
    columns = LOCAL_SOURCES[task_name].load(root)
    notes = attach_local_data(task, {"test": columns})
    return task, notes


def describe_local_data(task_name: str, notes: Sequence[str] = ()) -> dict[str, Any]:
    """How a task's local copy compares with MTEB's text, for the results summary.

    Args:
        task_name: A task with a local source (:data:`LOCAL_SOURCES`).
        notes: The differences from mteb's statistics found when the data was loaded (see :func:`check_split`).

    Returns:
        ``source`` (the local files), ``matches_mteb_statistics`` (False when the text is known to differ or any
        statistic differed in this run), ``text`` (what the text is, against MTEB's) and ``statistics_differences``
        (``notes``).
    """
    source = LOCAL_SOURCES[task_name]
    return {
        "source": source.description,
        "matches_mteb_statistics": source.matches_mteb_statistics and not notes,
        "text": source.text_note,
        "statistics_differences": list(notes),
    }


def load_local_tasks(
    task_names: Iterable[str] = SUPPORTED_TASKS, data_dir: str | os.PathLike[str] | None = None
) -> tuple[list[AbsTask], dict[str, list[str]]]:
    """:func:`load_local_task` for several tasks; fails on the first task whose local data does not match."""
    tasks = []
    notes = {}
    for name in task_names:
        task, task_notes = load_local_task(name, data_dir)
        tasks.append(task)
        notes[name] = task_notes
        for note in task_notes:
            logger.warning("Local data differs from MTEB's statistics: %s", note)
    return tasks, notes


# --------------------------------------------------------------------------------------------------------------------
# Model metadata


def _known_model_meta(model_name: str) -> Any | None:
    """mteb's own metadata for a model it knows by name (offline: read from the installed package), else None."""
    from mteb.models.model_implementations import MODEL_REGISTRY

    return MODEL_REGISTRY.get(model_name)


# Files a model computes with: weights, and the JSON and text files that configure its modules and tokenizer.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model")
# Files that record a run rather than the model (st_dse's summary, the trainer's state in checkpoint folders).
RUN_RECORD_FILES = frozenset(
    {"dse.json", "trainer_state.json", "training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt"}
)
# Keys of configuration files that record the library versions of the save, not settings of the model.
VERSION_KEYS = ("__version__", "transformers_version")
DSE_SUMMARY_FILE = "dse.json"
# The organisation of results published under a local folder's name (no Hub page, no reference).
LOCAL_ORGANISATION = "local"

# MTEB datasets (mteb's names) that share data with each st_dse task's training split; mteb adds their variants.
DSE_TASK_MTEB_DATASETS: dict[str, frozenset[str]] = {
    "stsb": frozenset({"STSBenchmark"}),  # STS-B train is part of the STS Benchmark release MTEB tests on
    "sick-r": frozenset({"SICK-R"}),  # MTEB's SICK-R test split holds every SICK pair, the training pairs included
    "sick-e": frozenset({"SICK-R"}),
    "qqp": frozenset({"QuoraRetrieval", "NanoQuoraRetrieval"}),  # Quora question pairs, as mteb annotates them
    "qqp-subset": frozenset({"QuoraRetrieval", "NanoQuoraRetrieval"}),
    "rte": frozenset({"RTE3"}),  # GLUE RTE is built from RTE1-3 and RTE5
    "mrpc": frozenset(),
    "mnli": frozenset(),
    "qnli": frozenset(),
}


def _is_model_file(relative: Path) -> bool:
    return (
        relative.suffix in MODEL_FILE_SUFFIXES
        and relative.name not in RUN_RECORD_FILES
        and not relative.name.startswith("rng_state")
        and not any(part.startswith(".") for part in relative.parts)
    )


def weights_revision(folder: str | os.PathLike[str]) -> str:
    """A 40-hex-digit hash of what a model folder computes with, to stand in for a Hub commit id.

    Covers each weight file (``.safetensors``, ``.bin``, ``.pt``) and each configuration or tokenizer file
    (``.json``, ``.txt``, ``.model``: ``modules.json``, module configs, ``pair_head/``), by relative path and contents.
    The library versions written into config files are left out, and so are the model card, ``dse.json`` and
    anything else that describes a run: the same weights give the same revision whatever their README.md or
    dse.json says or which library versions saved them, and any changed weight, setting or vocabulary changes it.
    """
    import hashlib

    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or not _is_model_file(relative):
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        if path.suffix == ".json":
            digest.update(_canonical_json(path))
        else:
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:40]


def _canonical_json(path: Path) -> bytes:
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw
    if isinstance(data, dict):
        data = {key: value for key, value in data.items() if key not in VERSION_KEYS}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def read_dse_summary(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A DSE student's run summary (``dse.json``: task, teacher, settings, metrics), or None for other models."""
    path = Path(folder) / DSE_SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("Ignoring %s: it is not valid JSON (%s).", path, error)
        return None
    return summary if isinstance(summary, dict) else None


def dse_training_datasets(summary: Mapping[str, Any]) -> set[str] | None:
    """The MTEB datasets a DSE student's training data overlaps, from its ``dse.json``; None when unknown.

    A student of a registered st_dse task trained on that task's train split (:data:`DSE_TASK_MTEB_DATASETS`; an
    empty set: no MTEB dataset shares its data). A student of your own pairs (``settings.train_file`` or
    ``settings.dataset``) gives None: what it overlaps is unknown here, so pass ``training_datasets`` yourself.
    """
    settings = summary.get("settings") or {}
    if settings.get("train_file") or settings.get("dataset"):
        return None
    datasets = DSE_TASK_MTEB_DATASETS.get(summary.get("task"))
    return set(datasets) if datasets is not None else None


def read_card_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The YAML metadata block of a model folder's README.md (license, base_model, ...); empty when there is none."""
    from huggingface_hub import metadata_load

    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return {}
    try:
        return metadata_load(readme) or {}
    except Exception as error:  # a hand-edited card with broken YAML must not stop an evaluation
        logger.warning("Ignoring the metadata of %s: %s", readme, error)
        return {}


def _base_model(card: Mapping[str, Any], summary: Mapping[str, Any] | None) -> str | None:
    base = card.get("base_model")
    if isinstance(base, list):
        base = base[0] if base else None
    if isinstance(base, str) and base:
        return base
    if summary and summary.get("student_base"):
        from st_dse.training.model_card import hub_model_id

        return hub_model_id(summary["student_base"])
    return None


def sentence_transformers_loader_kwargs(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """mteb ``loader_kwargs`` with which sentence-transformers loads this folder.

    None for a plain sentence-transformers folder (a DSE student's encoder is one: its head lies beside the
    modules). ``trust_remote_code=True`` only when ``modules.json`` names a module class from outside
    sentence-transformers (e.g. st_dse's TopLayersConcat, which then loads from the installed st_dse).
    """
    path = Path(folder) / "modules.json"
    if not path.is_file():
        return {}
    modules = json.loads(path.read_text(encoding="utf-8"))
    foreign = [
        module.get("type", "") for module in modules if not module.get("type", "").startswith("sentence_transformers.")
    ]
    return {"trust_remote_code": True} if foreign else {}


def folder_release_date(folder: str | os.PathLike[str]) -> str:
    """The UTC date (YYYY-MM-DD) of the newest file in a model folder: when the model was last saved."""
    import datetime

    newest = max((p.stat().st_mtime for p in Path(folder).rglob("*") if p.is_file()), default=None)
    if newest is None:
        raise FileNotFoundError(f"Model folder {folder} holds no files.")
    return datetime.datetime.fromtimestamp(newest, tz=datetime.timezone.utc).date().isoformat()


def count_embedding_parameters(model: Any) -> tuple[int, int]:
    """(parameters used to compute embeddings, parameters of DSE pair heads) of a SentenceTransformer.

    A DSE student carries its pair head as the last module; ``encode()`` passes through it untouched, so its weights
    are not part of the embedding model MTEB evaluates.
    """
    try:
        from st_dse.modules import PairHead
    except ImportError:  # st_dse's head needs nothing exotic, but keep this module usable on its own
        PairHead = ()  # noqa: N806
    embedding, head = 0, 0
    for module in model:
        count = sum(parameter.numel() for parameter in module.parameters())
        if PairHead and isinstance(module, PairHead):
            head += count
        else:
            embedding += count
    return embedding, head


def _embedding_dimension(model: Any) -> int | None:
    # sentence-transformers 6 renamed get_sentence_embedding_dimension (the old name warns).
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return getter()


def build_model_meta(
    model: Any,
    model_name: str,
    *,
    model_folder: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    release_date: str | None = None,
    languages: Sequence[str] | None = ("eng-Latn",),
    license: str | None = None,  # noqa: A002 -- mteb's field name
    open_weights: bool | None = None,
    training_datasets: Iterable[str] | None = None,
    adapted_from: str | None = None,
    reference: str | None = None,
    public_training_code: str | None = None,
) -> Any:
    """mteb ``ModelMeta`` for a SentenceTransformer, so results are saved under the right model name and revision.

    A model mteb knows by name (e.g. ``sentence-transformers/all-MiniLM-L6-v2``) keeps mteb's curated metadata; only
    arguments given explicitly override it. Any other model (a DSE student folder) gets metadata filled from the
    model itself: parameter count (without the DSE pair head), embedding size, maximum tokens, similarity function.
    From a local folder also come:

    - ``revision``: :func:`weights_revision`, a hash of the weight and configuration files (not of README.md or
      dse.json), and ``release_date``: the date of the folder's newest file;
    - ``license`` and ``adapted_from`` (the base model): the model card's metadata, else for a DSE student the
      encoder it was built from (``student_base`` in dse.json, by its public id);
    - ``training_datasets``: for a DSE student, the MTEB datasets its training data overlaps
      (:func:`dse_training_datasets`); mteb adds the base model's own through ``adapted_from``;
    - ``loader`` and ``loader_kwargs``: mteb's SentenceTransformer wrapper and what it needs to load the folder
      (:func:`sentence_transformers_loader_kwargs`: nothing for a plain sentence-transformers folder).

    ``reference`` is the model's Hub page, unless it is published as ``local/<folder name>``.

    Args:
        model: The loaded ``SentenceTransformer``.
        model_name: Name to publish under, ``"organisation/model"`` as on the Hub.
        model_folder: The folder the model was loaded from.
        revision, release_date, languages, license, open_weights, training_datasets, adapted_from, reference,
            public_training_code: mteb ``ModelMeta`` fields; None keeps what is known or derived.

    Returns:
        A ``mteb.models.ModelMeta``.
    """
    from mteb.models import ModelMeta, SentenceTransformerEncoderWrapper
    from mteb.models.model_meta import ScoringFunction

    explicit = {
        "revision": revision,
        "release_date": release_date,
        "license": license,
        "open_weights": open_weights,
        "training_datasets": set(training_datasets) if training_datasets is not None else None,
        "adapted_from": adapted_from,
        "reference": reference,
        "public_training_code": public_training_code,
    }
    explicit = {key: value for key, value in explicit.items() if value is not None}

    known = _known_model_meta(model_name)
    if known is not None:
        return known.model_copy(update=explicit, deep=True) if explicit else known

    embedding_parameters, head_parameters = count_embedding_parameters(model)
    if head_parameters:
        logger.info("Not counting %d DSE pair-head parameters in n_parameters.", head_parameters)
    # fill_missing=None: the default (False) triggers a deprecation warning in mteb 2.26 for no reason.
    meta = ModelMeta.from_sentence_transformer_model(model, fill_missing=None, fetch_from_hf=False)
    similarity = getattr(model, "similarity_fn_name", None) or "cosine"
    folder = Path(model_folder) if model_folder is not None else None
    card = read_card_metadata(folder) if folder is not None else {}
    summary = read_dse_summary(folder) if folder is not None else None
    derived: dict[str, Any] = {
        "name": model_name,
        "revision": weights_revision(folder) if folder is not None else None,
        "release_date": folder_release_date(folder) if folder is not None else None,
        "languages": list(languages) if languages is not None else None,
        "n_parameters": embedding_parameters,
        "memory_usage_mb": round(embedding_parameters * 4 / 2**20, 2),
        "max_tokens": model.max_seq_length,
        "embed_dim": _embedding_dimension(model),
        "similarity_fn_name": ScoringFunction.from_str(similarity),
        "framework": ["Sentence Transformers", "PyTorch"],
        "use_instructions": False,
        "modalities": ["text"],
        "loader": SentenceTransformerEncoderWrapper,
        "loader_kwargs": sentence_transformers_loader_kwargs(folder) if folder is not None else {},
        "license": card.get("license") if isinstance(card.get("license"), str) else None,
        "adapted_from": _base_model(card, summary) or meta.adapted_from,
        "training_datasets": dse_training_datasets(summary) if summary is not None else None,
        "reference": None
        if model_name.startswith(f"{LOCAL_ORGANISATION}/")
        else f"https://huggingface.co/{model_name}",
    }
    derived = {key: value for key, value in derived.items() if value is not None}
    return meta.model_copy(update={**derived, **explicit}, deep=True)


def wrap_for_mteb(model: Any, meta: Any) -> Any:
    """mteb's SentenceTransformer wrapper around ``model``, carrying ``meta`` so results are saved under it."""
    from mteb.models import SentenceTransformerEncoderWrapper

    wrapper = SentenceTransformerEncoderWrapper(model)
    wrapper.mteb_model_meta = meta
    return wrapper
