from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score

from st_dse.data import (
    TASKS,
    benchmarks,
    compute_metrics,
    get_task,
    load_task,
    logits_to_predictions,
    standardize_hub_dataset,
)
from tests.conftest import REPO_ROOT

REAL_DATA_DIR = Path(os.environ.get("ST_DSE_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
needs_real_data = pytest.mark.skipif(
    not (REAL_DATA_DIR / "glue").is_dir(),
    reason=f"real benchmark data not found at {REAL_DATA_DIR} (set ST_DSE_DATA_DIR to the data root)",
)


def write_tsv(path: Path, lines: list[str], encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(newline.join(lines).encode(encoding) + newline.encode())
    return path


@pytest.fixture(autouse=True)
def no_data_dir_env(monkeypatch):
    # Tests decide the data folder themselves; a user's ST_DSE_DATA_DIR must not change what they load.
    monkeypatch.delenv(benchmarks.DATA_DIR_ENV, raising=False)


# ---------------------------------------------------------------- registry


def test_registry_holds_the_requested_tasks_with_consistent_specs():
    assert {"mrpc", "qqp", "qqp-subset", "stsb", "mnli", "qnli", "rte", "sick-e", "sick-r"} <= set(TASKS)
    for spec in TASKS.values():
        assert spec.main_metric in spec.metrics
        assert set(spec.benchmark.hub_splits) <= set(spec.benchmark.splits) == set(spec.benchmark.local_files)
        if spec.problem_type == "regression":
            assert spec.num_labels == 1 and spec.label_names == () and spec.metrics == ("pearson", "spearman")
        elif spec.problem_type == "binary":
            assert spec.num_labels == 1 and len(spec.label_names) == 2
        else:
            assert spec.problem_type == "multiclass" and spec.num_labels == len(spec.label_names) >= 3


def test_official_metrics_and_splits():
    assert get_task("mrpc").metrics == get_task("qqp").metrics == ("accuracy", "f1")
    assert get_task("stsb").main_metric == get_task("sick-r").main_metric == "spearman"
    assert get_task("mnli").benchmark.splits == ("train", "validation_matched", "validation_mismatched")
    assert get_task("sick-e").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("sick-r").problem_type == "regression" and "test" in get_task("stsb").benchmark.splits
    # The subset must never pass for GLUE dev.
    assert "not glue dev" in get_task("qqp-subset").description.lower()
    assert get_task("qqp-subset").benchmark.hub_dataset is None


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("MRPC", "mrpc"),
        ("sts-b", "stsb"),
        ("STS_B", "stsb"),
        ("sickr", "sick-r"),
        ("SICK-E", "sick-e"),
        ("qqp_subset", "qqp-subset"),
    ],
)
def test_get_task_accepts_aliases(alias, name):
    assert get_task(alias) is TASKS[name]
    assert get_task(TASKS[name]) is TASKS[name]


def test_unknown_task_lists_known_names():
    with pytest.raises(ValueError, match="Unknown task 'cola'") as error:
        get_task("cola")
    for name in TASKS:
        assert name in str(error.value)


def test_unknown_split_lists_available_splits(tmp_path):
    with pytest.raises(ValueError, match="validation_matched, validation_mismatched"):
        load_task(get_task("mnli"), "validation", tmp_path)


# ---------------------------------------------------------------- GLUE TSV reading


MRPC_LINES = [
    "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
    '1\t1\t2\tHe called him "the witness", twice.\tHe said "the witness" twice.',
    '0\t3\t4\tAn unmatched " quote.\tNo quote here.',
    "1\t5\t6\tThird left.\tThird right.",
]


@pytest.fixture
def glue_root(tmp_path) -> Path:
    """A small data root laid out like the real one: <root>/glue/<TASK>/..., <root>/stsbenchmark/..."""
    glue = tmp_path / "data" / "glue"
    write_tsv(glue / "MRPC" / "train.tsv", MRPC_LINES)
    write_tsv(
        glue / "STS-B" / "dev.tsv",
        [
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
            "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man dances.\tA man is dancing.\t5.000",
            "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA child rides.\tA dog sleeps.\t0.250",
        ],
    )
    write_tsv(
        glue / "RTE" / "train.tsv",
        [
            "index\tsentence1\tsentence2\tlabel",
            "0\tA dog barks.\tAn animal makes noise.\tentailment",
            "1\tA cat sleeps.\tThe cat runs.\tnot_entailment",
        ],
    )
    write_tsv(
        tmp_path / "data" / "stsbenchmark" / "sts-test.csv",
        [
            "main-captions\tMSRvid\t2012test\t0024\t2.500\tA girl styles hair.\tA girl brushes hair.",
            "main-news\theadlines\t2015\t0001\t1.000\tStocks fall.\tIt rains.\tsource-a\tsource-b",
        ],
    )
    return tmp_path / "data"


def test_mrpc_keeps_quote_characters_and_file_order(glue_root):
    dataset = load_task(get_task("mrpc"), "train", glue_root)
    assert dataset.column_names == ["sentence1", "sentence2", "label"]
    assert dataset.features["label"].dtype == "int64"
    assert dataset["sentence1"] == ['He called him "the witness", twice.', 'An unmatched " quote.', "Third left."]
    assert dataset["sentence2"][0] == 'He said "the witness" twice.'
    assert dataset["label"] == [1, 0, 1]


def test_data_dir_may_be_the_glue_folder_and_max_samples_takes_the_first_rows(glue_root):
    from_glue_folder = load_task(get_task("mrpc"), "train", glue_root / "glue", max_samples=2)
    assert from_glue_folder["sentence1"] == load_task(get_task("mrpc"), "train", glue_root)["sentence1"][:2]


def test_stsb_scores_are_floats(glue_root):
    dataset = load_task(get_task("STS-B"), "dev", glue_root)
    assert dataset.features["label"].dtype == "float64"
    assert dataset["label"] == [5.0, 0.25]
    assert dataset["sentence2"] == ["A man is dancing.", "A dog sleeps."]


@pytest.mark.parametrize("folder", ["", "glue"])
def test_stsb_test_comes_from_stsbenchmark_with_7_or_9_columns(glue_root, folder):
    dataset = load_task(get_task("stsb"), "test", glue_root / folder)
    assert dataset["label"] == [2.5, 1.0]
    assert dataset["sentence1"] == ["A girl styles hair.", "Stocks fall."]
    assert dataset["sentence2"] == ["A girl brushes hair.", "It rains."]


def test_rte_string_labels_map_to_hub_class_ids(glue_root):
    assert load_task(get_task("rte"), "train", glue_root)["label"] == [0, 1]  # entailment = 0 as on the hub


def test_a_bad_label_names_file_and_line(tmp_path):
    path = write_tsv(
        tmp_path / "glue" / "RTE" / "dev.tsv",
        ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment", "1\ta\tb\tmaybe"],
    )
    with pytest.raises(ValueError, match=r"line 3: label 'maybe'") as error:
        load_task(get_task("rte"), "validation", tmp_path)
    assert str(path) in str(error.value)


def test_a_bad_score_and_a_wrong_column_count_name_the_line(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    write_tsv(tmp_path / "STS-B" / "train.tsv", [header, "0\tg\tf\ty\to\ts\ts\ta\tb\thigh"])
    with pytest.raises(ValueError, match=r"train.tsv, line 2: score 'high'"):
        load_task(get_task("stsb"), "train", tmp_path)
    write_tsv(tmp_path / "MRPC" / "dev.tsv", [MRPC_LINES[0], "1\t1\t2\tonly one sentence"])
    with pytest.raises(ValueError, match=r"dev.tsv, line 2: 4 tab-separated columns, expected 5"):
        load_task(get_task("mrpc"), "validation", tmp_path)


def test_a_missing_file_names_the_file_the_task_and_the_source(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_task(get_task("qnli"), "train", tmp_path)
    message = str(error.value)
    assert "glue/QNLI/train.tsv" in message and "qnli" in message
    assert "GLUE" in message and "--data-dir" in message
    with pytest.raises(FileNotFoundError, match="SentEval"):
        load_task(get_task("sick-r"), "test", tmp_path)
    with pytest.raises(FileNotFoundError, match="qqp-subset"):
        load_task(get_task("qqp"), "validation", tmp_path)
    with pytest.raises(FileNotFoundError, match="STS Benchmark release") as error:
        load_task(get_task("stsb"), "test", tmp_path)
    assert "stsbenchmark/sts-test.csv" in str(error.value)


def test_latin1_file_is_read_with_a_warning(tmp_path, caplog):
    write_tsv(
        tmp_path / "glue" / "RTE" / "train.tsv",
        ["index\tsentence1\tsentence2\tlabel", "0\tLe café est chaud.\tIl fait froid à Zürich.\tnot_entailment"],
        encoding="latin-1",
    )
    with caplog.at_level(logging.WARNING, logger="st_dse.data.benchmarks"):
        dataset = load_task(get_task("rte"), "train", tmp_path)
    assert dataset["sentence1"] == ["Le café est chaud."]
    assert dataset["sentence2"] == ["Il fait froid à Zürich."]
    assert "latin-1" in caplog.text


def test_sick_uppercase_labels_and_crlf_lines(tmp_path):
    sick = tmp_path / "senteval" / "data" / "downstream" / "SICK"
    lines = [
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment",
        "1\tA boy plays.\tA kid plays.\t4.5\tENTAILMENT",
        "2\tA boy plays.\tNobody plays.\t2.1\tCONTRADICTION",
        "3\tA boy plays.\tA man sings.\t1.8\tNEUTRAL",
    ]
    write_tsv(sick / "SICK_test_annotated.txt", lines, newline="\r\n")
    entailment = load_task(get_task("sick-e"), "test", tmp_path)
    assert entailment["label"] == [0, 2, 1]
    assert entailment["sentence2"] == ["A kid plays.", "Nobody plays.", "A man sings."]
    assert load_task(get_task("sickr"), "test", tmp_path)["label"] == [4.5, 2.1, 1.8]


def test_path_override_reads_one_file_with_the_split_layout(tmp_path):
    path = write_tsv(
        tmp_path / "k-shot" / "dev_matched.tsv",
        ["index\tgenre\tsentence1\tsentence2\tlabel1\tgold_label", "7\tfiction\tP.\tH.\tneutral\tcontradiction"],
    )
    dataset = load_task(get_task("mnli"), "validation_matched", path=path)
    assert dataset[0] == {"sentence1": "P.", "sentence2": "H.", "label": 2}
    # The same file is found when its folder is given as data_dir.
    assert load_task(get_task("mnli"), "dev_matched", tmp_path / "k-shot")[0] == dataset[0]


# ---------------------------------------------------------------- QQP subset


@pytest.fixture
def qqp_subset_root(tmp_path) -> Path:
    lines = ["100\t1\t2\tFirst question?\tSecond question? 0"]  # the malformed first line, as in the real file
    lines += [f"{101 + i}\t{i}\t{i + 1}\tQuestion {i}?\tQuestion {i} again?\t{i % 2}" for i in range(39)]
    write_tsv(tmp_path / "glue" / "QQP" / "train_subset" / "new_dev.tsv", lines)
    return tmp_path


def test_qqp_subset_repairs_the_malformed_first_line(qqp_subset_root):
    rows = load_task(get_task("qqp-subset"), "train", qqp_subset_root).to_list()
    rows += load_task(get_task("qqp-subset"), "validation", qqp_subset_root).to_list()
    assert len(rows) == 40
    assert {"sentence1": "First question?", "sentence2": "Second question?", "label": 0} in rows


def test_qqp_subset_split_is_deterministic_disjoint_and_ten_percent(qqp_subset_root):
    train = load_task(get_task("qqp-subset"), "train", qqp_subset_root)
    validation = load_task(get_task("qqp-subset"), "validation", qqp_subset_root)
    assert (len(train), len(validation)) == (36, 4)
    assert set(train["sentence1"]).isdisjoint(validation["sentence1"])
    assert load_task(get_task("qqp-subset"), "validation", qqp_subset_root).to_list() == validation.to_list()
    # Each part keeps the file order, and max_samples takes the first rows of the part.
    order = [int(text.split()[1].rstrip("?")) for text in train["sentence1"] if text.startswith("Question")]
    assert order == sorted(order)
    assert load_task(get_task("qqp-subset"), "train", qqp_subset_root, max_samples=5).to_list() == train.to_list()[:5]


def test_other_malformed_lines_are_not_repaired(tmp_path):
    write_tsv(tmp_path / "glue" / "QQP" / "train_subset" / "new_dev.tsv", ["1\t2\t3\tQ?\tR?\tmaybe"])
    with pytest.raises(ValueError, match="line 1: label 'maybe'"):
        load_task(get_task("qqp-subset"), "train", tmp_path)
    write_tsv(tmp_path / "MRPC" / "train.tsv", [MRPC_LINES[0], "1\t2\tA.\tB. 1"])
    with pytest.raises(ValueError, match="line 2: 4 tab-separated columns"):
        load_task(get_task("mrpc"), "train", tmp_path)


# ---------------------------------------------------------------- hub (no network: the column mapping only)


@pytest.mark.parametrize(
    ("task", "text_columns", "label_feature"),
    [
        ("qqp", ("question1", "question2"), datasets.ClassLabel(names=["not_duplicate", "duplicate"])),
        ("mnli", ("premise", "hypothesis"), datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])),
        ("qnli", ("question", "sentence"), datasets.ClassLabel(names=["entailment", "not_entailment"])),
        ("stsb", ("sentence1", "sentence2"), datasets.Value("float32")),
    ],
)
def test_hub_columns_are_renamed_to_sentence1_sentence2_label(task, text_columns, label_feature):
    features = datasets.Features(
        {
            "idx": datasets.Value("int32"),
            text_columns[0]: datasets.Value("string"),
            text_columns[1]: datasets.Value("string"),
            "label": label_feature,
        }
    )
    hub_like = datasets.Dataset.from_dict(
        {"idx": [0, 1], text_columns[0]: ["a", "b"], text_columns[1]: ["c", "d"], "label": [1, 0]}, features=features
    )
    dataset = standardize_hub_dataset(hub_like, get_task(task))
    assert dataset.column_names == ["sentence1", "sentence2", "label"]
    assert dataset.to_list() == [
        {"sentence1": "a", "sentence2": "c", "label": 1},
        {"sentence1": "b", "sentence2": "d", "label": 0},
    ]


def test_without_data_dir_glue_tasks_load_from_the_hub(monkeypatch):
    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"premise": ["p"] * 3, "hypothesis": ["h"] * 3, "label": [2, 0, 1]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset = load_task(get_task("mnli"), "dev_mismatched", max_samples=2)
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert dataset.to_list() == [
        {"sentence1": "p", "sentence2": "h", "label": 2},
        {"sentence1": "p", "sentence2": "h", "label": 0},
    ]
    with pytest.raises(ValueError, match="unlabelled"):
        standardize_hub_dataset(
            datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [-1]}), get_task("rte")
        )


def test_local_only_tasks_without_data_dir_say_where_the_data_comes_from():
    with pytest.raises(ValueError, match="SentEval"):
        load_task(get_task("sick-e"), "train")
    with pytest.raises(ValueError, match="sts-test.csv"):
        load_task(get_task("stsb"), "test")


# ---------------------------------------------------------------- metrics


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=200)
    predictions = np.where(rng.random(200) < 0.8, labels, 1 - labels)
    metrics = compute_metrics(get_task("mrpc"), predictions, labels)
    assert metrics["accuracy"] == pytest.approx(100 * accuracy_score(labels, predictions))
    assert metrics["f1"] == pytest.approx(100 * f1_score(labels, predictions))
    assert metrics["main"] == metrics["accuracy"]
    three_way = rng.integers(0, 3, size=50)
    assert compute_metrics(get_task("mnli"), three_way, rng.integers(0, 3, size=50)).keys() == {"accuracy", "main"}
    assert compute_metrics(get_task("sick-e"), three_way, three_way)["accuracy"] == 100.0


def test_regression_metrics_match_scipy():
    rng = np.random.default_rng(1)
    labels = rng.uniform(0, 5, size=100)
    predictions = labels + rng.normal(0, 1.0, size=100)
    metrics = compute_metrics(get_task("stsb"), predictions, labels)
    assert metrics["pearson"] == pytest.approx(100 * pearsonr(predictions, labels)[0])
    assert metrics["spearman"] == pytest.approx(100 * spearmanr(predictions, labels)[0])
    assert metrics["main"] == metrics["spearman"]


def test_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        compute_metrics(get_task("rte"), [0, 1], [0, 1, 1])


def test_logits_to_predictions():
    torch = pytest.importorskip("torch")
    assert logits_to_predictions(get_task("mrpc"), [[-0.5], [0.0], [2.0]]).tolist() == [0, 0, 1]
    assert logits_to_predictions(get_task("rte"), torch.tensor([0.1, -3.0])).tolist() == [1, 0]
    assert logits_to_predictions(get_task("stsb"), np.array([[4.2], [0.5]])).tolist() == [4.2, 0.5]
    assert logits_to_predictions(get_task("mnli"), [[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]]).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        logits_to_predictions(get_task("mnli"), [[0.1, 2.0]])
    with pytest.raises(ValueError, match=r"\(n,\) or \(n, 1\)"):
        logits_to_predictions(get_task("qqp"), [[0.1, 2.0]])


# ---------------------------------------------------------------- the real data (when present)


@needs_real_data
@pytest.mark.parametrize(
    ("task", "split", "num_rows"),
    [
        ("mrpc", "train", 3668),
        ("mrpc", "validation", 408),
        ("stsb", "train", 5749),
        ("stsb", "validation", 1500),
        ("stsb", "test", 1379),
        ("rte", "train", 2490),
        ("rte", "validation", 277),
        ("qnli", "validation", 5463),
        ("sick-e", "train", 4500),
        ("sick-r", "validation", 500),
        ("sick-e", "test", 4927),
    ],
)
def test_real_row_counts(task, split, num_rows):
    dataset = load_task(get_task(task), split, REAL_DATA_DIR)
    assert len(dataset) == num_rows
    assert all(dataset["sentence1"]) and all(dataset["sentence2"])


@needs_real_data
def test_real_qqp_subset_keeps_every_row():
    train = load_task(get_task("qqp-subset"), "train", REAL_DATA_DIR)
    validation = load_task(get_task("qqp-subset"), "validation", REAL_DATA_DIR)
    # All 23,497 lines, the repaired first one included; 10% (2,350) held out.
    assert (len(train), len(validation)) == (21147, 2350)
    assert sum(train["label"]) + sum(validation["label"]) == 8747


@needs_real_data
def test_real_lmbff_k_shot_files_load():
    mnli = REAL_DATA_DIR / "glue" / "MNLI" / "lmbff_k-shot" / "16-42"
    assert len(load_task(get_task("mnli"), "train", mnli)) == 48
    matched = load_task(get_task("mnli"), "validation_matched", path=mnli / "dev_matched.tsv")
    assert sorted(set(matched["label"])) == [0, 1, 2]
    qnli = REAL_DATA_DIR / "glue" / "QNLI" / "lmbff_k-shot" / "16-42"
    assert sorted(load_task(get_task("qnli"), "train", path=qnli / "train.tsv")["label"]) == [0] * 16 + [1] * 16
