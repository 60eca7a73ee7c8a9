"""The SentEval evaluation protocol, reimplemented on CPU with scikit-learn.

SentEval (Conneau & Kiela, 2018, https://github.com/facebookresearch/SentEval) is the standard way to compare sentence
embeddings: frozen embeddings are fed to a simple classifier for *transfer* tasks, and cosine similarities are
correlated with human scores for *similarity* tasks. The ``senteval`` package is not on PyPI and no longer runs on
current Python/numpy without CUDA, so this module re-implements its protocol while reading SentEval's own data layout
(``data_dir`` is SentEval's ``data`` folder, the one that holds ``downstream/MR``, ``downstream/STS/...``; it ships
with SentEval's ``data/downstream/get_transfer_data.bash`` and with SimCSE's ``senteval.tar``).

Any model with ``encode(list[str]) -> np.ndarray`` works (a ``SentenceTransformer`` in particular)::

    from sentence_transformers import SentenceTransformer
    from evaluation.senteval_protocol import results_to_markdown, run_senteval

    model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
    results = run_senteval(model, "path/to/SentEval/data", tasks=["MR", "STS12", "STSBenchmark"])
    print(results_to_markdown(results))

What is reproduced from SentEval
--------------------------------
* Data: the same files, splits, encodings (MR/CR/SUBJ/MPQA and TREC are read as latin-1, the rest as UTF-8), the
  same whitespace tokenisation (each line is split on whitespace and re-joined with single spaces, as SentEval's
  example batchers do) and the same example order (SentEval sorts examples by token length, then label, before
  building its folds; the order changes which example lands in which fold, so it is kept).
* MR, CR, SUBJ, MPQA: SentEval's ``InnerKFoldClassifier``: stratified k-fold cross-validation (k=10 as in
  SentEval's example scripts, ``kfold`` argument), and inside each outer training fold an inner stratified k-fold
  to choose the L2 strength over SentEval's scikit-learn grid C in {2^-2, ..., 2^3}; reported accuracy is the mean
  of the outer test folds, "devacc" the mean of the best inner scores.
* TREC and MRPC: SentEval's ``KFoldClassifier``: C in {2^-1, ..., 2^5} chosen by stratified k-fold on the train
  file, then refit on all of train and scored on the test file. MRPC reports accuracy and F1 (positive class =
  paraphrase) and uses SentEval's pair features ``np.c_[np.abs(u - v), u * v]``.
* SST2 and SICK-E: SentEval's ``SplitClassifier``: C in {2^-2, ..., 2^3} chosen on the dev file, the model
  trained on train with that C scored on test. SICK-E uses the same pair features as MRPC (train = SICK_train,
  dev = SICK_trial, test = SICK_test_annotated).
* Per-C scores are rounded to two decimals before the arg-max, so ties go to the smallest C as in SentEval.
* STS12-STS16: cosine similarity (NaN -> 0) of the two embeddings against the gold score, Pearson and Spearman per
  dataset, pairs with an empty gold line skipped, STS13 without the licensed-away SMT subset, and SentEval's "all"
  aggregates: the plain mean over datasets ("mean") and the mean weighted by the number of pairs ("wmean").
* Seed: SentEval's default 1111 for the fold shuffles and the classifier.

Where this differs from SentEval
--------------------------------
* Classifier: scikit-learn ``LogisticRegression`` (lbfgs, multinomial softmax, ``max_iter=1000``), i.e. SentEval's
  ``usepytorch=False`` path and its grids. SentEval's default path trains the same linear softmax model
  (``nhid: 0``) in PyTorch with Adam, early stopping on a held-out 5-10 %, and an L2 grid 10^-5..10^-2; none of that
  (no Adam, no epochs, no early stopping) is reproduced. SentEval's scikit-learn path ran on the scikit-learn of
  its time, whose default was liblinear (one-vs-rest, penalised intercept); current scikit-learn no longer offers
  liblinear for more than two classes, so lbfgs is used for every task and TREC (6 classes) and SICK-E (3 classes)
  get a multinomial model. Numbers can therefore differ slightly from published SentEval tables.
* The inner and outer fold shuffles of ``InnerKFoldClassifier`` both use ``seed``; SentEval hard-codes 1111 there,
  so the folds are identical at the default seed only.
* STSBenchmark and SICK-R: SentEval *trains* a regressor on the pair features and reports its test correlation.
  Here the main number is instead the unsupervised cosine protocol of STS12-16 on the test file only
  (STSBenchmark: ``sts-test.csv``; SICK-R: ``SICK_test_annotated.txt``), comparable to sentence-transformers' and
  MTEB's STS-B cosine Spearman (modulo SentEval's lower-cased, tokenised text). With
  ``relatedness_regressor=True`` SentEval's supervised protocol is run as well (:func:`train_relatedness_regressor`:
  its linear softmax over 5 score classes on ``[|u - v|, u * v]``, Adam, batches of 64, early stopping on dev
  Pearson every 50 epochs; CPU instead of CUDA, so not bit-identical) and reported under ``"regressor"``.
* Embeddings are computed once per distinct sentence within a task (a cache), sorted by length for batching.
* The classifier grids run with one BLAS/OpenMP thread (threadpoolctl), which is 5-10x faster for these many small
  fits on a small CPU machine; results are the same up to floating-point rounding.

Result format (:func:`run_senteval`): one dict per task, each with its wall time in ``seconds``. Transfer tasks:
``acc`` and ``devacc`` (0-100, rounded to two decimals like SentEval), ``ndev``, ``ntest``, the chosen ``C`` (for
MR/CR/SUBJ/MPQA a list with one C per outer fold, next to ``fold_accs``) and ``f1`` for MRPC. STS12-16: one
``{"pearson", "spearman", "nsamples"}`` dict per dataset plus ``"all"``; STSBenchmark/SICKRelatedness:
``pearson``, ``spearman``, ``ntest`` (cosine) and, with the regressor, ``"regressor"``: ``{"pearson", "spearman",
"devpearson", "mse", "ndev", "ntest"}``. Correlations are in [-1, 1] as in SentEval; :func:`results_to_markdown`
prints them x100.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

DEFAULT_SEED = 1111  # SentEval's default seed
DEFAULT_KFOLD = 10  # SentEval's example scripts use kfold=10 (its library default is 5)
MAX_ITER = 1000

# SentEval's scikit-learn grids over the inverse L2 strength C (senteval/tools/validation.py, usepytorch=False).
INNER_KFOLD_C_GRID = tuple(2.0**exponent for exponent in range(-2, 4))
KFOLD_C_GRID = tuple(2.0**exponent for exponent in range(-1, 6))
SPLIT_C_GRID = tuple(2.0**exponent for exponent in range(-2, 4))

TRANSFER_TASKS = ("MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC", "SICKEntailment")
SIMILARITY_TASKS = ("SICKRelatedness", "STSBenchmark", "STS12", "STS13", "STS14", "STS15", "STS16")
# SICK-E and SICK-R are adjacent so the sentence cache serves both.
ALL_TASKS = TRANSFER_TASKS + SIMILARITY_TASKS

TASK_ALIASES = {
    "SST-2": "SST2",
    "SICK-E": "SICKEntailment",
    "SICKE": "SICKEntailment",
    "SICK-R": "SICKRelatedness",
    "SICKR": "SICKRelatedness",
    "STS-B": "STSBenchmark",
    "STSB": "STSBenchmark",
}

# The datasets SentEval reads for each STS year (senteval/sts.py); STS13 has no SMT subset for licence reasons.
STS_DATASETS = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}

TREC_LABELS = {"ABBR": 0, "DESC": 1, "ENTY": 2, "HUM": 3, "LOC": 4, "NUM": 5}
SICK_ENTAILMENT_LABELS = {"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2}


class SentenceEncoder(Protocol):
    """Anything with ``encode(list[str])`` returning an array of shape (n_sentences, dim)."""

    def encode(self, sentences: list[str]) -> Any: ...


def canonical_task_name(name: str) -> str:
    """Map a task name or alias (``"SICK-E"``, ``"sts-b"``, ``"mr"``) to SentEval's name (``"SICKEntailment"``)."""
    by_upper = {task.upper(): task for task in ALL_TASKS}
    by_upper.update({alias.upper(): task for alias, task in TASK_ALIASES.items()})
    task = by_upper.get(name.strip().upper())
    if task is None:
        raise ValueError(f"Unknown SentEval task {name!r}. Known tasks: {', '.join(ALL_TASKS)}.")
    return task


# ---------------------------------------------------------------------------------------------------------------------
# Reading SentEval's files
# ---------------------------------------------------------------------------------------------------------------------


def _downstream_dir(data_dir: str | Path) -> Path:
    """SentEval's ``task_path`` is the folder holding ``downstream/``."""
    return Path(data_dir) / "downstream"


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"SentEval data file not found: {path}. Pass the SentEval `data` folder (the one holding `downstream/`) "
            "as data_dir. The data comes from SentEval (https://github.com/facebookresearch/SentEval, "
            "data/downstream/get_transfer_data.bash) or SimCSE's senteval.tar: pass --data-dir DATA/senteval/data "
            "or set ST_DSE_DATA_DIR to the folder holding senteval/."
        )
    return path


def _read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    # SentEval reads with io.open(...).read().splitlines(); the same is done here so line counts agree.
    try:
        return _require_file(path).read_text(encoding=encoding).splitlines()
    except UnicodeDecodeError as error:
        # SentEval itself would fail on this file too: say which file, rather than guess another encoding.
        raise ValueError(
            f"{path} is not valid {encoding} text ({error.reason} at byte {error.start}); SentEval reads this file as "
            f"{encoding}. Use an unmodified copy of SentEval's data (data/downstream/get_transfer_data.bash)."
        ) from error


def _normalise(text: str) -> str:
    # SentEval splits every sentence on whitespace and its batchers join the tokens back with single spaces.
    return " ".join(text.split())


def _senteval_order(sort_keys: Sequence[tuple]) -> list[int]:
    """Indices in SentEval's order: a stable sort by (token lengths..., label), used before building folds."""
    return sorted(range(len(sort_keys)), key=lambda index: sort_keys[index])


def _truncate(items: list, max_samples: int | None) -> list:
    return items if max_samples is None else items[:max_samples]


@dataclass
class SentenceData:
    """Single sentences with integer labels, in SentEval's order."""

    sentences: list[str]
    labels: np.ndarray

    @classmethod
    def sorted_like_senteval(cls, sentences: list[str], labels: list[int]) -> SentenceData:
        order = _senteval_order([(len(sentence.split()), label) for sentence, label in zip(sentences, labels)])
        return cls([sentences[i] for i in order], np.array([labels[i] for i in order]))


@dataclass
class PairData:
    """Sentence pairs with labels or gold scores, in SentEval's order."""

    first: list[str]
    second: list[str]
    labels: np.ndarray

    @classmethod
    def sorted_like_senteval(cls, first: list[str], second: list[str], labels: list) -> PairData:
        keys = [(len(a.split()), len(b.split()), label) for a, b, label in zip(first, second, labels)]
        order = _senteval_order(keys)
        return cls([first[i] for i in order], [second[i] for i in order], np.array([labels[i] for i in order]))


def load_binary_task(task: str, data_dir: str | Path, max_samples: int | None = None) -> SentenceData:
    """MR, CR, SUBJ or MPQA: label 1 for the first file, 0 for the second (as SentEval's BinaryClassifierEval)."""
    files = {
        "MR": ("MR", "rt-polarity.pos", "rt-polarity.neg"),
        "CR": ("CR", "custrev.pos", "custrev.neg"),
        "SUBJ": ("SUBJ", "subj.objective", "subj.subjective"),
        "MPQA": ("MPQA", "mpqa.pos", "mpqa.neg"),
    }
    folder, positive_file, negative_file = files[task]
    task_dir = _downstream_dir(data_dir) / folder
    positives = _truncate(_read_lines(task_dir / positive_file, "latin-1"), max_samples)
    negatives = _truncate(_read_lines(task_dir / negative_file, "latin-1"), max_samples)
    sentences = [_normalise(line) for line in positives + negatives]
    return SentenceData.sorted_like_senteval(sentences, [1] * len(positives) + [0] * len(negatives))


def _names_malformed_data(loader):
    """Turn a parsing error inside a SentEval loader into a ValueError that names the task folder and the problem."""

    @functools.wraps(loader)
    def load(data_dir, *args, **kwargs):
        try:
            return loader(data_dir, *args, **kwargs)
        except (IndexError, KeyError, ValueError) as error:
            if isinstance(error, ValueError) and str(data_dir) in str(error):
                raise  # already names its file
            raise ValueError(
                f"Malformed SentEval data under {data_dir} ({loader.__name__}: {type(error).__name__}: {error}). "
                "A line has too few fields or an unknown label; use an unmodified copy of SentEval's data "
                "(data/downstream/get_transfer_data.bash)."
            ) from error

    return load


@_names_malformed_data
def load_sst2(data_dir: str | Path, max_samples: int | None = None) -> dict[str, SentenceData]:
    """SST binary: ``sentence<TAB>label`` lines in sentiment-{train,dev,test}."""
    task_dir = _downstream_dir(data_dir) / "SST" / "binary"
    splits = {}
    for split in ("train", "dev", "test"):
        sentences, labels = [], []
        for line in _truncate(_read_lines(task_dir / f"sentiment-{split}"), max_samples):
            text, label = line.strip().split("\t")
            sentences.append(_normalise(text))
            labels.append(int(label))
        splits[split] = SentenceData.sorted_like_senteval(sentences, labels)
    return splits


@_names_malformed_data
def load_trec(data_dir: str | Path, max_samples: int | None = None) -> dict[str, SentenceData]:
    """TREC: ``COARSE:fine question`` lines; train_5500.label is latin-1 (SentEval reads both files as latin-1)."""
    task_dir = _downstream_dir(data_dir) / "TREC"
    splits = {}
    for split, file_name in (("train", "train_5500.label"), ("test", "TREC_10.label")):
        sentences, labels = [], []
        for line in _truncate(_read_lines(task_dir / file_name, "latin-1"), max_samples):
            coarse_label, rest = line.strip().split(":", 1)
            if coarse_label not in TREC_LABELS:
                raise ValueError(f"{task_dir / file_name}: unknown TREC label {coarse_label!r} in line {line!r}")
            sentences.append(_normalise(rest.split(" ", 1)[1]))
            labels.append(TREC_LABELS[coarse_label])
        splits[split] = SentenceData.sorted_like_senteval(sentences, labels)
    return splits


@_names_malformed_data
def load_mrpc(data_dir: str | Path, max_samples: int | None = None) -> dict[str, PairData]:
    """MRPC: tab-separated ``Quality, #1 ID, #2 ID, #1 String, #2 String`` with a header row."""
    task_dir = _downstream_dir(data_dir) / "MRPC"
    splits = {}
    for split in ("train", "test"):
        rows = [line.strip().split("\t") for line in _read_lines(task_dir / f"msr_paraphrase_{split}.txt")[1:]]
        rows = _truncate(rows, max_samples)
        splits[split] = PairData.sorted_like_senteval(
            [_normalise(row[3]) for row in rows], [_normalise(row[4]) for row in rows], [int(row[0]) for row in rows]
        )
    return splits


SICK_FILES = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}


@_names_malformed_data
def load_sick(
    data_dir: str | Path, target: str, splits: Iterable[str] = ("train", "dev", "test"), max_samples: int | None = None
) -> dict[str, PairData]:
    """SICK with ``target="entailment"`` (labels 0/1/2) or ``target="relatedness"`` (gold scores 1-5)."""
    task_dir = _downstream_dir(data_dir) / "SICK"
    loaded = {}
    for split in splits:
        rows = [line.strip().split("\t") for line in _read_lines(task_dir / SICK_FILES[split])[1:]]
        rows = _truncate(rows, max_samples)
        if target == "entailment":
            labels = [SICK_ENTAILMENT_LABELS[row[4]] for row in rows]
        else:
            labels = [float(row[3]) for row in rows]
        loaded[split] = PairData.sorted_like_senteval(
            [_normalise(row[1]) for row in rows], [_normalise(row[2]) for row in rows], labels
        )
    return loaded


@_names_malformed_data
def load_sts_dataset(year_dir: str | Path, dataset: str, max_samples: int | None = None) -> PairData:
    """One STS12-16 dataset: ``STS.input.<name>.txt`` (two tab-separated sentences) and ``STS.gs.<name>.txt``.

    Pairs whose gold line is empty have no gold score and are skipped, as SentEval does.
    """
    year_dir = Path(year_dir)
    input_path, gold_path = year_dir / f"STS.input.{dataset}.txt", year_dir / f"STS.gs.{dataset}.txt"
    pairs = [line.split("\t") for line in _read_lines(input_path)]
    gold_lines = _read_lines(gold_path)
    if len(pairs) != len(gold_lines):
        raise ValueError(f"{input_path} has {len(pairs)} lines but {gold_path} has {len(gold_lines)}; expected equal.")
    kept = [(pair, gold) for pair, gold in zip(pairs, gold_lines) if gold.strip() != ""]
    kept = _truncate(kept, max_samples)
    return PairData(
        [_normalise(pair[0]) for pair, _ in kept],
        [_normalise(pair[1]) for pair, _ in kept],
        np.array([float(gold) for _, gold in kept]),
    )


@_names_malformed_data
def load_stsbenchmark(data_dir: str | Path, split: str = "test", max_samples: int | None = None) -> PairData:
    """SentEval's STSBenchmark copy: tab-separated genre, file, year, id, score, sentence1, sentence2."""
    path = _downstream_dir(data_dir) / "STS" / "STSBenchmark" / f"sts-{split}.csv"
    rows = _truncate([line.strip().split("\t") for line in _read_lines(path)], max_samples)
    return PairData.sorted_like_senteval(
        [_normalise(row[5]) for row in rows], [_normalise(row[6]) for row in rows], [float(row[4]) for row in rows]
    )


# ---------------------------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------------------------


class CachedEncoder:
    """Encodes sentences in length-sorted batches with a progress bar, computing each distinct sentence once.

    Works with any object whose ``encode(list[str])`` returns an array of shape (n, dim); ``batch_size`` and
    ``show_progress_bar`` are forwarded when its ``encode`` accepts them (as ``SentenceTransformer.encode`` does).
    """

    def __init__(self, model: SentenceEncoder, batch_size: int = 128, show_progress_bar: bool = True):
        self.model = model
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.cache: dict[str, np.ndarray] = {}
        # Sentences asked for since the last keep_only_requested(): the current task's sentences.
        self.requested: set[str] = set()
        parameters = inspect.signature(model.encode).parameters
        accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        self._extra_kwargs = {
            key: value
            for key, value in (("show_progress_bar", False), ("convert_to_numpy", True))
            if key in parameters or accepts_kwargs
        }
        self._forward_batch_size = "batch_size" in parameters or accepts_kwargs

    def __call__(self, sentences: Sequence[str], description: str = "encoding") -> np.ndarray:
        self.requested.update(sentences)
        missing = sorted({s for s in sentences if s not in self.cache}, key=lambda s: (len(s), s))
        batches = [missing[start : start + self.batch_size] for start in range(0, len(missing), self.batch_size)]
        for batch in tqdm(batches, desc=description, disable=not self.show_progress_bar or not batches):
            kwargs = dict(self._extra_kwargs)
            if self._forward_batch_size:
                kwargs["batch_size"] = len(batch)
            embeddings = np.asarray(self.model.encode(list(batch), **kwargs), dtype=np.float32)
            if embeddings.ndim != 2 or embeddings.shape[0] != len(batch):
                raise ValueError(
                    f"model.encode returned shape {embeddings.shape} for {len(batch)} sentences; "
                    "expected a 2-D array with one row per sentence."
                )
            self.cache.update(zip(batch, embeddings))
        return np.stack([self.cache[s] for s in sentences]) if sentences else np.zeros((0, 0), np.float32)

    def keep_only_requested(self) -> None:
        """Drop cached embeddings not asked for since the last call, which bounds memory to about one task."""
        self.cache = {s: e for s, e in self.cache.items() if s in self.requested}
        self.requested = set()


def pair_features(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """SentEval's pair features for MRPC and SICK-E: ``np.c_[np.abs(u - v), u * v]``."""
    return np.c_[np.abs(first - second), first * second]


def cosine_similarities(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity; a zero vector gives 0 (SentEval applies np.nan_to_num to the cosine)."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = (first * second).sum(axis=1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))
    return np.nan_to_num(scores)


# ---------------------------------------------------------------------------------------------------------------------
# Classifiers (SentEval's senteval/tools/validation.py, scikit-learn path)
# ---------------------------------------------------------------------------------------------------------------------


def _fit(features: np.ndarray, labels: np.ndarray, c: float, seed: int) -> LogisticRegression:
    return LogisticRegression(C=c, random_state=seed, max_iter=MAX_ITER).fit(features, labels)


def _single_threaded(function: Callable) -> Callable:
    """Run the classifier grid with one BLAS/OpenMP thread.

    The hundreds of small lbfgs fits spend most of their time synchronising BLAS threads: on a 2-core machine one
    thread was 5-10x faster (0.02 s instead of 0.2 s of CPU per fit on 9000 x 384 features).
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with threadpool_limits(limits=1):
            return function(*args, **kwargs)

    return wrapper


def _accuracy(classifier: LogisticRegression, features: np.ndarray, labels: np.ndarray) -> float:
    return round(100 * classifier.score(features, labels), 2)


def _cross_validated_accuracy(features: np.ndarray, labels: np.ndarray, c: float, kfold: int, seed: int) -> float:
    folds = StratifiedKFold(n_splits=kfold, shuffle=True, random_state=seed)
    scores = [
        _fit(features[train], labels[train], c, seed).score(features[held_out], labels[held_out])
        for train, held_out in folds.split(features, labels)
    ]
    return round(100 * float(np.mean(scores)), 2)


def _best_c(grid: Sequence[float], scores: Sequence[float]) -> tuple[float, float]:
    # np.argmax takes the first maximum: ties go to the smallest C, as in SentEval.
    best = int(np.argmax(scores))
    return grid[best], float(scores[best])


@_single_threaded
def inner_kfold_classification(
    features: np.ndarray, labels: np.ndarray, kfold: int = DEFAULT_KFOLD, seed: int = DEFAULT_SEED
) -> dict[str, Any]:
    """SentEval's InnerKFoldClassifier: outer k-fold test accuracy with C chosen by inner k-fold on each train fold."""
    outer_folds = StratifiedKFold(n_splits=kfold, shuffle=True, random_state=seed)
    dev_scores, test_scores, chosen = [], [], []
    for train, test in outer_folds.split(features, labels):
        grid_scores = [
            _cross_validated_accuracy(features[train], labels[train], c, kfold, seed) for c in INNER_KFOLD_C_GRID
        ]
        best_c, best_score = _best_c(INNER_KFOLD_C_GRID, grid_scores)
        logger.info("inner k-fold: C=%s (score %.2f), grid %s", best_c, best_score, grid_scores)
        classifier = _fit(features[train], labels[train], best_c, seed)
        dev_scores.append(best_score)
        test_scores.append(_accuracy(classifier, features[test], labels[test]))
        chosen.append(best_c)
    return {
        "devacc": round(float(np.mean(dev_scores)), 2),
        "acc": round(float(np.mean(test_scores)), 2),
        "fold_accs": test_scores,
        "C": chosen,
    }


@_single_threaded
def kfold_classification(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    kfold: int = DEFAULT_KFOLD,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """SentEval's KFoldClassifier: C chosen by k-fold on train, refit on train, scored on test."""
    grid_scores = [_cross_validated_accuracy(train_features, train_labels, c, kfold, seed) for c in KFOLD_C_GRID]
    best_c, best_score = _best_c(KFOLD_C_GRID, grid_scores)
    logger.info("k-fold: C=%s (score %.2f), grid %s", best_c, best_score, grid_scores)
    classifier = _fit(train_features, train_labels, best_c, seed)
    return {
        "devacc": best_score,
        "acc": _accuracy(classifier, test_features, test_labels),
        "C": best_c,
        "predictions": classifier.predict(test_features),
    }


@_single_threaded
def split_classification(
    train: tuple[np.ndarray, np.ndarray],
    dev: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """SentEval's SplitClassifier: C chosen on dev, the chosen model scored on test."""
    classifiers = [_fit(*train, c, seed) for c in SPLIT_C_GRID]
    grid_scores = [_accuracy(classifier, *dev) for classifier in classifiers]
    best_c, best_score = _best_c(SPLIT_C_GRID, grid_scores)
    logger.info("split: C=%s (dev %.2f), grid %s", best_c, best_score, grid_scores)
    # SentEval refits with the chosen C on the same train data; the deterministic lbfgs fit gives the same model.
    classifier = classifiers[SPLIT_C_GRID.index(best_c)]
    return {"devacc": best_score, "acc": _accuracy(classifier, *test), "C": best_c}


# ---------------------------------------------------------------------------------------------------------------------
# Similarity
# ---------------------------------------------------------------------------------------------------------------------


def correlations(system_scores: np.ndarray, gold_scores: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation (in [-1, 1]) of system scores with gold scores."""
    return {
        "pearson": float(pearsonr(system_scores, gold_scores)[0]),
        "spearman": float(spearmanr(system_scores, gold_scores)[0]),
    }


def aggregate_sts(per_dataset: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """SentEval's "all" entry: mean and pair-count-weighted mean of the per-dataset Pearson and Spearman."""
    weights = [scores["nsamples"] for scores in per_dataset.values()]
    aggregate = {}
    for metric in ("pearson", "spearman"):
        values = [scores[metric] for scores in per_dataset.values()]
        aggregate[metric] = {"mean": float(np.average(values)), "wmean": float(np.average(values, weights=weights))}
    return aggregate


def relatedness_target_distribution(scores: np.ndarray, num_classes: int = 5) -> np.ndarray:
    """Tai et al. (2015)'s sparse target, as SentEval builds it: a score shares its mass between classes 1..5.

    A score of 3.6 puts 0.4 on class 3 and 0.6 on class 4, so the expectation sum_k k * p_k gives back 3.6. SentEval
    applies the same encoding to STS-B's 0-5 scores, where a score below 1 only puts ``score`` on class 1 (the row
    does not sum to 1); that quirk is kept so the supervised STS-B number follows SentEval's protocol.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.zeros((len(scores), num_classes), dtype=np.float32)
    for row, score in enumerate(scores):
        floor = int(np.floor(score))
        for class_value in range(1, num_classes + 1):
            if class_value == floor + 1:
                targets[row, class_value - 1] = score - floor
            if class_value == floor:
                targets[row, class_value - 1] = floor - score + 1
    return targets


def train_relatedness_regressor(
    train: tuple[np.ndarray, np.ndarray],
    dev: tuple[np.ndarray, np.ndarray],
    test_features: np.ndarray,
    seed: int = DEFAULT_SEED,
    max_epochs: int = 1000,
    epochs_per_check: int = 50,
    batch_size: int = 64,
) -> tuple[float, np.ndarray]:
    """SentEval's supervised relatedness model (``RelatednessPytorch``) for STSBenchmark and SICK-R, on CPU.

    A linear layer + softmax over the 5 score classes, trained with Adam (lr 1e-3, no L2) on the summed squared error
    to :func:`relatedness_target_distribution` in mini-batches of 64; every 50 epochs the dev Pearson of the
    predicted expectation is checked, the best model is kept, and training stops at the 4th check without
    improvement (counted over the whole run, as in SentEval) or after 1000 epochs.

    Returns:
        (best dev Pearson, predicted test scores on the 1-5 scale).
    """
    import copy

    import torch

    train_features, train_scores = train
    dev_features, dev_scores = dev
    class_values = np.arange(1, 6, dtype=np.float64)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 5-output linear layer: thread synchronisation costs more than it saves
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = torch.nn.Sequential(torch.nn.Linear(train_features.shape[1], 5), torch.nn.Softmax(dim=-1))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=0.0)
        inputs = torch.from_numpy(np.ascontiguousarray(train_features, dtype=np.float32))
        targets = torch.from_numpy(relatedness_target_distribution(train_scores))
        dev_inputs = torch.from_numpy(np.ascontiguousarray(dev_features, dtype=np.float32))
        test_inputs = torch.from_numpy(np.ascontiguousarray(test_features, dtype=np.float32))
        shuffler = np.random.RandomState(seed)

        def predict(features: torch.Tensor, network: torch.nn.Module) -> np.ndarray:
            with torch.no_grad():
                return network(features).double().numpy() @ class_values

        best_pearson, best_model, checks_without_improvement, epoch = -1.0, copy.deepcopy(model), 0, 0
        while epoch <= max_epochs:
            for _ in range(epochs_per_check):
                permutation = torch.from_numpy(shuffler.permutation(len(inputs)))
                for start in range(0, len(inputs), batch_size):
                    batch = permutation[start : start + batch_size]
                    loss = torch.nn.functional.mse_loss(model(inputs[batch]), targets[batch], reduction="sum")
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            epoch += epochs_per_check
            dev_pearson = float(pearsonr(predict(dev_inputs, model), dev_scores)[0])
            if dev_pearson > best_pearson:
                best_pearson, best_model = dev_pearson, copy.deepcopy(model)
            else:
                if checks_without_improvement >= 3:
                    break
                checks_without_improvement += 1
        logger.info("relatedness regressor: %d epochs, best dev Pearson %.4f", epoch, best_pearson)
        return best_pearson, predict(test_inputs, best_model)
    finally:
        torch.set_num_threads(previous_threads)


def _supervised_relatedness(
    encode: CachedEncoder, splits: dict[str, PairData], task: str, seed: int
) -> dict[str, Any]:
    """SentEval's STSBenchmark/SICK-R protocol: the regressor on pair features, scored on test."""
    features = {
        name: pair_features(encode(d.first, f"{task} {name}: encoding"), encode(d.second, f"{task} {name}: encoding"))
        for name, d in splits.items()
    }
    dev_pearson, predictions = train_relatedness_regressor(
        (features["train"], splits["train"].labels),
        (features["dev"], splits["dev"].labels),
        features["test"],
        seed,
    )
    test_scores = splits["test"].labels
    return {
        **correlations(predictions, test_scores),
        "devpearson": dev_pearson,
        "mse": float(np.mean((predictions - test_scores) ** 2)),
        "ndev": len(splits["dev"].labels),
        "ntest": len(test_scores),
    }


def _cosine_task(encode: CachedEncoder, pairs: PairData, task: str) -> dict[str, Any]:
    first = encode(pairs.first, f"{task}: encoding")
    second = encode(pairs.second, f"{task}: encoding")
    return {**correlations(cosine_similarities(first, second), pairs.labels), "nsamples": len(pairs.labels)}


# ---------------------------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------------------------


def _evaluate_task(
    task: str,
    encode: CachedEncoder,
    data_dir: str | Path,
    kfold: int,
    seed: int,
    max_samples: int | None,
    relatedness_regressor: bool,
) -> dict[str, Any]:
    if task in ("MR", "CR", "SUBJ", "MPQA"):
        data = load_binary_task(task, data_dir, max_samples)
        result = inner_kfold_classification(encode(data.sentences, f"{task}: encoding"), data.labels, kfold, seed)
        return {**result, "ndev": len(data.labels), "ntest": len(data.labels)}

    if task == "SST2":
        splits = load_sst2(data_dir, max_samples)
        arrays = {name: (encode(d.sentences, f"{task} {name}: encoding"), d.labels) for name, d in splits.items()}
        result = split_classification(arrays["train"], arrays["dev"], arrays["test"], seed)
        return {**result, "ndev": len(splits["dev"].labels), "ntest": len(splits["test"].labels)}

    if task == "TREC":
        splits = load_trec(data_dir, max_samples)
        train, test = splits["train"], splits["test"]
        result = kfold_classification(
            encode(train.sentences, f"{task} train: encoding"),
            train.labels,
            encode(test.sentences, f"{task} test: encoding"),
            test.labels,
            kfold,
            seed,
        )
        result.pop("predictions")
        return {**result, "ndev": len(train.labels), "ntest": len(test.labels)}

    if task == "MRPC":
        splits = load_mrpc(data_dir, max_samples)
        features = {
            name: pair_features(
                encode(d.first, f"{task} {name}: encoding"), encode(d.second, f"{task} {name}: encoding")
            )
            for name, d in splits.items()
        }
        train, test = splits["train"], splits["test"]
        result = kfold_classification(features["train"], train.labels, features["test"], test.labels, kfold, seed)
        predictions = result.pop("predictions")
        result["f1"] = round(100 * f1_score(test.labels, predictions), 2)
        return {**result, "ndev": len(train.labels), "ntest": len(test.labels)}

    if task == "SICKEntailment":
        splits = load_sick(data_dir, "entailment", max_samples=max_samples)
        arrays = {
            name: (
                pair_features(
                    encode(d.first, f"{task} {name}: encoding"), encode(d.second, f"{task} {name}: encoding")
                ),
                d.labels,
            )
            for name, d in splits.items()
        }
        result = split_classification(arrays["train"], arrays["dev"], arrays["test"], seed)
        return {**result, "ndev": len(splits["dev"].labels), "ntest": len(splits["test"].labels)}

    if task in ("SICKRelatedness", "STSBenchmark"):
        # The cosine protocol needs only the test file; SentEval's regressor also trains on train and selects on dev.
        needed = ("train", "dev", "test") if relatedness_regressor else ("test",)
        if task == "SICKRelatedness":
            splits = load_sick(data_dir, "relatedness", splits=needed, max_samples=max_samples)
        else:
            splits = {split: load_stsbenchmark(data_dir, split, max_samples) for split in needed}
        scores = _cosine_task(encode, splits["test"], task)
        result = {"pearson": scores["pearson"], "spearman": scores["spearman"], "ntest": scores["nsamples"]}
        if relatedness_regressor:
            result["regressor"] = _supervised_relatedness(encode, splits, task, seed)
        return result

    if task in STS_DATASETS:
        year_dir = _downstream_dir(data_dir) / "STS" / f"{task}-en-test"
        per_dataset = {
            dataset: _cosine_task(encode, load_sts_dataset(year_dir, dataset, max_samples), f"{task} {dataset}")
            for dataset in STS_DATASETS[task]
        }
        return {**per_dataset, "all": aggregate_sts(per_dataset)}

    raise ValueError(f"Unknown SentEval task {task!r}. Known tasks: {', '.join(ALL_TASKS)}.")


def run_senteval(
    model: SentenceEncoder,
    data_dir: str | Path,
    tasks: Sequence[str] | None = None,
    batch_size: int = 128,
    seed: int = DEFAULT_SEED,
    kfold: int = DEFAULT_KFOLD,
    max_samples: int | None = None,
    show_progress_bar: bool = True,
    relatedness_regressor: bool = False,
    callback: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run SentEval's protocol for ``tasks`` (default: all of :data:`ALL_TASKS`) and return ``{task: results}``.

    Args:
        model: anything with ``encode(list[str]) -> array (n, dim)``, e.g. a ``SentenceTransformer``.
        data_dir: SentEval's ``data`` folder (holding ``downstream/``).
        tasks: SentEval task names or aliases ("SICK-E", "STS-B", "SICK-R"); see the module docstring.
        batch_size: sentences per ``model.encode`` call.
        seed: seed for fold shuffles and the classifier (SentEval's default 1111).
        kfold: folds for the cross-validated tasks (10, as in SentEval's example scripts).
        max_samples: keep only the first N examples of each data file (for quick checks; results are then not
            comparable with published numbers).
        show_progress_bar: show a tqdm bar while encoding.
        relatedness_regressor: also run SentEval's own supervised protocol for STSBenchmark and SICKRelatedness
            (:func:`train_relatedness_regressor` on the train/dev files), reported under ``"regressor"``.
        callback: called as ``callback(task, task_results)`` after each task (e.g. to save partial results).

    Raises:
        FileNotFoundError: a task's data file is missing (the message names it and where SentEval data comes from).
        ValueError: an unknown task name.
    """
    task_names = [canonical_task_name(task) for task in (tasks if tasks is not None else ALL_TASKS)]
    encode = CachedEncoder(model, batch_size=batch_size, show_progress_bar=show_progress_bar)
    results: dict[str, dict[str, Any]] = {}
    for task in task_names:
        start = time.perf_counter()
        logger.info("SentEval task %s", task)
        task_results = _evaluate_task(task, encode, data_dir, kfold, seed, max_samples, relatedness_regressor)
        task_results["seconds"] = round(time.perf_counter() - start, 1)
        results[task] = task_results
        # Keep only this task's sentences: the next task reuses them when it shares data (SICK-E then SICK-R).
        encode.keep_only_requested()
        if callback is not None:
            callback(task, task_results)
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------------


def _format(value: float | None, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.2f}"


def results_to_markdown(results: dict[str, dict[str, Any]], sts_details: bool = False) -> str:
    """Markdown tables: transfer accuracies (0-100) and similarity correlations (x100).

    With ``sts_details=True`` a third table lists every STS12-16 dataset.
    """
    sections = []
    transfer = [task for task in results if task in TRANSFER_TASKS]
    if transfer:
        lines = [
            "| Task | Test acc | Dev acc | F1 | C (chosen) | #dev | #test |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
        for task in transfer:
            r = results[task]
            chosen = r["C"]
            chosen_text = "/".join(f"{c:g}" for c in chosen) if isinstance(chosen, list) else f"{chosen:g}"
            lines.append(
                f"| {task} | {_format(r['acc'])} | {_format(r['devacc'])} | {_format(r.get('f1'))} | "
                f"{chosen_text} | {r['ndev']} | {r['ntest']} |"
            )
        average = float(np.mean([results[task]["acc"] for task in transfer]))
        lines.append(f"| **Avg. ({len(transfer)} tasks)** | {average:.2f} | | | | | |")
        sections.append("\n".join(lines))

    similarity = [task for task in results if task in SIMILARITY_TASKS]
    if similarity:
        lines = [
            "| Task | Spearman | Pearson | Spearman (wmean) | Pearson (wmean) | #pairs | Protocol |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        spearmans = []
        for task in similarity:
            r = results[task]
            if task in STS_DATASETS:
                aggregate = r["all"]
                pairs = sum(r[dataset]["nsamples"] for dataset in STS_DATASETS[task])
                spearman = aggregate["spearman"]["mean"]
                lines.append(
                    f"| {task} | {_format(spearman, 100)} | {_format(aggregate['pearson']['mean'], 100)} | "
                    f"{_format(aggregate['spearman']['wmean'], 100)} | {_format(aggregate['pearson']['wmean'], 100)} "
                    f'| {pairs} | cosine, "all" over {len(STS_DATASETS[task])} datasets |'
                )
            else:
                spearman = r["spearman"]
                lines.append(
                    f"| {task} | {_format(spearman, 100)} | {_format(r['pearson'], 100)} | | | {r['ntest']} "
                    "| cosine on test (not SentEval's trained regressor) |"
                )
            spearmans.append(spearman)
            if "regressor" in r:
                regressor = r["regressor"]
                lines.append(
                    f"| {task} (SentEval regressor) | {_format(regressor['spearman'], 100)} | "
                    f"{_format(regressor['pearson'], 100)} | | | {regressor['ntest']} | "
                    "SentEval's supervised protocol: softmax regressor on [abs(u-v), u*v], dev-selected |"
                )
        lines.append(
            f"| **Avg. Spearman, cosine ({len(similarity)} tasks)** | {100 * float(np.mean(spearmans)):.2f} "
            "| | | | | |"
        )
        sections.append("\n".join(lines))

    detailed = [task for task in similarity if task in STS_DATASETS]
    if sts_details and detailed:
        lines = ["| Task | Dataset | Spearman | Pearson | #pairs |", "|---|---|---:|---:|---:|"]
        for task in detailed:
            for dataset in STS_DATASETS[task]:
                r = results[task][dataset]
                lines.append(
                    f"| {task} | {dataset} | {_format(r['spearman'], 100)} | {_format(r['pearson'], 100)} "
                    f"| {r['nsamples']} |"
                )
        sections.append("\n".join(lines))
    return "\n\n".join(sections)
