from __future__ import annotations

import csv
import json
import logging
import math
import time

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sentence_transformers import CrossEncoder

from st_dse.data import pairs
from st_dse.data.pairs import (
    HUB_UNREACHABLE_MESSAGE,
    HubUnreachableError,
    load_hub_pairs,
    read_pair_file,
    resolve_pair_columns,
)
from st_dse.data.tasks import compute_metrics, encode_labels, logits_to_predictions, task_from_teacher
from st_dse.losses import pack_dse_labels
from st_dse.teacher import raw_logits
from st_dse.training.evaluator import agreement_report, format_report

LOGGER = "st_dse.data.pairs"
ROWS = [
    {"sentence1": 'He said "hi", then left.', "sentence2": "He greeted and went.", "label": 1},
    {"sentence1": "A cat, a dog.", "sentence2": "Two pets", "label": 0},
    {"sentence1": "It's 5' tall", "sentence2": 'A "tall" thing', "label": 1},
]
NLI_NAMES = {0: "contradiction", 1: "entailment", 2: "neutral"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_csv(path, rows, delimiter=",", quoting=csv.QUOTE_MINIMAL):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter, quoting=quoting)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_tsv(path, rows):
    lines = ["\t".join(rows[0])] + ["\t".join("" if v is None else str(v) for v in row.values()) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _write(path, rows):
    writers = {".csv": _write_csv, ".tsv": _write_tsv, ".jsonl": _write_jsonl, ".parquet": _write_parquet}
    return writers[path.suffix](path, rows)


def _cross_encoder(path, num_labels, id2label=None):
    torch.manual_seed(0)
    teacher = CrossEncoder(path, num_labels=num_labels, device="cpu")
    if id2label is not None:
        teacher.config.id2label = dict(id2label)
        teacher.config.label2id = {name: index for index, name in id2label.items()}
    return teacher


@pytest.fixture(scope="module")
def nli_teacher(minilm_path, tmp_path_factory):
    """A 3-label teacher with label names, saved and reloaded (as a user's fine-tuned teacher would be)."""
    folder = tmp_path_factory.mktemp("nli_teacher")
    _cross_encoder(minilm_path, 3, NLI_NAMES).save_pretrained(str(folder))
    return CrossEncoder(str(folder), device="cpu")


@pytest.fixture(scope="module")
def score_teacher(minilm_path):
    return _cross_encoder(minilm_path, 1)


# ---------------------------------------------------------------------------------------------------------------
# File formats


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_reads_the_same_pairs(tmp_path, suffix):
    dataset = read_pair_file(_write(tmp_path / f"pairs{suffix}", ROWS))
    assert dataset.column_names == ["sentence1", "sentence2", "label"]
    assert dataset.to_list() == ROWS
    assert dataset.features["label"] == datasets.Value("int64")


def test_json_lines_and_json_array(tmp_path):
    lines = _write_jsonl(tmp_path / "pairs.json", ROWS)
    assert read_pair_file(lines).to_list() == ROWS
    array = tmp_path / "array.json"
    array.write_text(json.dumps(ROWS), encoding="utf-8")
    assert read_pair_file(array).to_list() == ROWS


def test_tsv_keeps_bare_quotes_and_skips_blank_lines(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text('sentence1\tsentence2\n"Hi" she said\the said "bye\n\n', encoding="utf-8")
    assert read_pair_file(path).to_list() == [{"sentence1": '"Hi" she said', "sentence2": 'he said "bye'}]


def test_extra_columns_are_dropped_and_a_bom_is_ignored(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("\ufeffid,sentence1,sentence2,label\n7,a b,c d,1\n", encoding="utf-8")
    assert read_pair_file(path).to_list() == [{"sentence1": "a b", "sentence2": "c d", "label": 1}]


def test_unknown_extension(tmp_path):
    path = tmp_path / "pairs.xlsx"
    path.write_text("x")
    with pytest.raises(ValueError, match=r"pairs\.xlsx.*unknown file type '\.xlsx'.*\.csv.*\.tsv.*\.jsonl.*\.parquet"):
        read_pair_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_pair_file(tmp_path / "nowhere.csv")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("binary.csv", b"\xff\xfe\x00\x81garbage\x00\x9c", "not UTF-8"),
        ("garbled.parquet", b"PAR1 this is not parquet", "cannot be read as parquet"),
        ("bad.jsonl", b'{"sentence1": "a", "sentence2": "b"}\n{"sentence1": \n', r"JSON parse error.* in row 1"),
        ("list.jsonl", b'["a", "b"]\n', r"no first sentence column.*Columns found: 'text'"),
        ("ragged.csv", b"sentence1,sentence2\na,b\nc,d,e\n", r"Expected 2 fields in line 3, saw 3"),
        ("quote.csv", b'sentence1,sentence2\n"a,b\n', "cannot be read as csv"),
        ("empty.tsv", b"", "the file has no data rows"),
        ("header_only.csv", b"sentence1,sentence2\n", "no data rows"),
    ],
)
def test_unreadable_files_give_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        read_pair_file(path)
    assert name in str(error.value)


# ---------------------------------------------------------------------------------------------------------------
# Column mapping


def test_default_columns_need_no_note(caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert resolve_pair_columns(["sentence1", "sentence2", "label"]) == ("sentence1", "sentence2", "label", None)
    assert caplog.records == []


def test_recognised_names_are_logged_once(tmp_path, caplog):
    rows = [{"pairID": "1", "premise": "A man sleeps.", "hypothesis": "A man naps.", "gold_label": "entailment"}]
    path = _write_jsonl(tmp_path / "snli.jsonl", rows)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        dataset = read_pair_file(path)
    assert dataset.to_list() == [{"sentence1": "A man sleeps.", "sentence2": "A man naps.", "label": "entailment"}]
    notes = [record for record in caplog.records if record.name == LOGGER]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    assert "'premise' as sentence1" in notes[0].message and "'hypothesis' as sentence2" in notes[0].message
    assert "'gold_label' as label" in notes[0].message and "--sentence1-column" in notes[0].message


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["question1", "question2", "query", "document"], ("question1", "question2", None)),
        (["query", "document", "score"], ("query", "document", "score")),
        (["anchor", "positive"], ("anchor", "positive", None)),
        (["sentence_A", "sentence_B", "relatedness_score", "labels"], ("sentence_A", "sentence_B", "labels")),
        (["sentence_a", "sentence_b", "is_duplicate"], ("sentence_a", "sentence_b", "is_duplicate")),
        (["text1", "text2", "sentence1", "sentence2", "label"], ("sentence1", "sentence2", "label")),
    ],
)
def test_recognised_pairs_in_order(columns, expected):
    first, second, label, note = resolve_pair_columns(columns)
    assert (first, second, label) == expected
    assert (note is None) == (expected == ("sentence1", "sentence2", "label"))


def test_explicit_columns_win(tmp_path, caplog):
    rows = [{"q": "Where?", "a": "Here.", "premise": "x", "hypothesis": "y", "label": 1, "grade": 0.5}]
    path = _write_csv(tmp_path / "pairs.csv", rows)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        dataset = read_pair_file(path, sentence1_column="q", sentence2_column="a", label_column="grade")
    assert dataset.to_list() == [{"sentence1": "Where?", "sentence2": "Here.", "label": 0.5}]
    assert caplog.records == []
    # One side given: the other comes from the recognised names.
    assert resolve_pair_columns(["q", "sentence2"], sentence1_column="q")[:3] == ("q", "sentence2", None)


def test_missing_columns_list_what_was_found():
    with pytest.raises(ValueError) as error:
        resolve_pair_columns(["left", "right", "gold"])
    message = str(error.value)
    assert "no first sentence column" in message and "no second sentence column" in message
    assert "Columns found: 'left', 'right', 'gold'" in message
    assert "--sentence1-column" in message and "--sentence2-column" in message and "--label-column" in message
    with pytest.raises(ValueError, match=r"no column 'grade' \(given with --label-column\).*Columns found: 's"):
        resolve_pair_columns(["sentence1", "sentence2"], label_column="grade")
    with pytest.raises(ValueError, match="must differ"):
        resolve_pair_columns(["a", "b"], sentence1_column="a", sentence2_column="a")


def test_missing_column_in_a_file_names_the_options(tmp_path):
    path = _write_csv(tmp_path / "pairs.csv", [{"left": "a", "right": "b"}])
    with pytest.raises(ValueError, match=r"Columns found: 'left', 'right'.*--sentence1-column"):
        read_pair_file(path)


# ---------------------------------------------------------------------------------------------------------------
# Labels


def test_unlabelled_file_has_no_label_column(tmp_path):
    path = _write_csv(tmp_path / "pairs.csv", [{"sentence1": "a", "sentence2": "b"}])
    assert read_pair_file(path).column_names == ["sentence1", "sentence2"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_mixed_labelled_and_unlabelled_rows(tmp_path, suffix):
    labels = [1, None, 0, None]
    rows = [{"sentence1": f"s{i}", "sentence2": f"t{i}", "label": label} for i, label in enumerate(labels)]
    if suffix == ".jsonl":
        rows[3]["label"] = math.nan  # JSON lines written by pandas may hold NaN
    dataset = read_pair_file(_write(tmp_path / f"pairs{suffix}", rows))
    assert dataset["label"] == labels
    assert dataset.features["label"] == datasets.Value("int64")
    packed = pack_dse_labels(dataset.add_column("teacher_logits", [[0.5]] * 4))
    golds = [row[0] for row in packed["label"]]
    assert golds[0] == 1.0 and golds[2] == 0.0 and math.isnan(golds[1]) and math.isnan(golds[3])


def test_graded_labels_are_floats_and_dash_is_missing(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("sentence1\tsentence2\tscore\na\tb\t4.25\nc\td\t-\ne\tf\t 2 \n", encoding="utf-8")
    dataset = read_pair_file(path)
    assert dataset["label"] == [4.25, None, 2.0]
    assert dataset.features["label"] == datasets.Value("float64")


def test_string_labels_stay_names_until_encoded(tmp_path, nli_teacher):
    rows = [
        {"sentence1": "a", "sentence2": "b", "label": "Entailment"},
        {"sentence1": "c", "sentence2": "d", "label": "CONTRADICTION"},
        {"sentence1": "e", "sentence2": "f", "label": ""},
        {"sentence1": "g", "sentence2": "h", "label": "2"},
    ]
    dataset = read_pair_file(_write_csv(tmp_path / "pairs.csv", rows))
    assert dataset["label"] == ["Entailment", "CONTRADICTION", None, "2"]
    task = task_from_teacher(nli_teacher, labels=dataset["label"])
    encoded = encode_labels(dataset, task)
    assert encoded["label"] == [1, 0, None, 2]
    assert encoded.features["label"] == datasets.Value("int64")


def test_unknown_label_name_and_out_of_range_ids(nli_teacher, score_teacher):
    nli = task_from_teacher(nli_teacher)
    bad = datasets.Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": ["neutral", "maybe"]})
    with pytest.raises(ValueError, match="Row 2: unknown label 'maybe'; expected one of contradiction, entailment"):
        encode_labels(bad, nli)
    with pytest.raises(ValueError, match=r"Row 1: the label 3 is not a class id .*0 to 2"):
        encode_labels(bad.remove_columns("label").add_column("label", [3, 0]), nli)
    binary = task_from_teacher(score_teacher)
    with pytest.raises(ValueError, match="the teacher has no label names"):
        encode_labels(bad, binary)
    with pytest.raises(ValueError, match=r"Row 1: the label 2\.5 is not a class id.*regression"):
        encode_labels(bad.remove_columns("label").add_column("label", [2.5, 1.0]), binary)
    regression = task_from_teacher(score_teacher, problem_type="regression")
    graded = bad.remove_columns("label").add_column("label", [2, None])
    assert encode_labels(graded, regression)["label"] == [2.0, None]


@pytest.mark.parametrize(
    ("rows", "where"),
    [
        (
            [{"sentence1": "ok", "sentence2": "fine"}, {"sentence1": "  ", "sentence2": "x"}],
            "data row 2, column 'sentence1'",
        ),
        ([{"premise": "ok", "hypothesis": ""}], "data row 1, column 'hypothesis'"),
    ],
)
def test_empty_sentences_name_the_row_and_column(tmp_path, rows, where):
    with pytest.raises(ValueError, match=where):
        read_pair_file(_write_csv(tmp_path / "pairs.csv", rows))


def test_null_and_non_text_sentences(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [{"sentence1": "a", "sentence2": "b"}, {"sentence1": None}])
    with pytest.raises(ValueError, match=r"data row 2, column 'sentence1': the sentence is empty \(None\)"):
        read_pair_file(path)
    path = _write_jsonl(tmp_path / "numbers.jsonl", [{"sentence1": "a", "sentence2": 42}])
    with pytest.raises(ValueError, match=r"data row 1, column 'sentence2': the sentence is int, not text"):
        read_pair_file(path)


# ---------------------------------------------------------------------------------------------------------------
# The task, from the teacher


def test_three_label_teacher_with_names(nli_teacher):
    task = task_from_teacher(nli_teacher, name="my-nli")
    assert (task.name, task.problem_type, task.num_labels) == ("my-nli", "multiclass", 3)
    assert task.label_names == ("contradiction", "entailment", "neutral")
    assert task.metrics == ("accuracy",) and task.main_metric == "accuracy"
    logits = raw_logits(nli_teacher, [("A man sleeps.", "A man naps."), ("Cats purr.", "Dogs bark.")])
    assert logits.shape == (2, task.num_labels)
    predictions = logits_to_predictions(task, logits)
    assert compute_metrics(task, predictions, predictions)["main"] == 100.0


def test_one_logit_teacher_binary_regression_and_override(score_teacher):
    binary = task_from_teacher(score_teacher, labels=[1, 0, None, 1.0])
    assert (binary.problem_type, binary.num_labels, binary.label_names) == ("binary", 1, ())
    assert binary.metrics == ("accuracy", "f1") and binary.main_metric == "accuracy"
    graded = task_from_teacher(score_teacher, labels=[0, 1, 3.5, None])
    assert (graded.problem_type, graded.num_labels) == ("regression", 1)
    assert graded.metrics == ("spearman", "pearson") and graded.main_metric == "spearman"
    forced = task_from_teacher(score_teacher, problem_type="regression")
    assert forced.problem_type == "regression" and forced.label_names == ()
    # Whole numbers beyond 0/1 could be classes or integer scores: the user says which.
    for labels in ([0, 1, 2], [0, -1]):
        with pytest.raises(ValueError, match="whole numbers other than 0 and 1.*--problem-type regression"):
            task_from_teacher(score_teacher, labels=labels)
    assert task_from_teacher(score_teacher, labels=[0, 1, 2], problem_type="regression").problem_type == "regression"
    scores = compute_metrics(forced, logits_to_predictions(forced, [[0.1], [0.5], [0.3]]), [1.0, 3.0, 2.0])
    assert scores["main"] == pytest.approx(100.0)


def test_two_logit_teacher_becomes_one_binary_logit(minilm_path):
    teacher = _cross_encoder(minilm_path, 2, {0: "not_duplicate", 1: "duplicate"})
    task = task_from_teacher(teacher)
    assert (task.problem_type, task.num_labels, task.label_names) == ("binary", 1, ("not_duplicate", "duplicate"))
    assert raw_logits(teacher, [("a b", "c d")]).shape == (1, task.num_labels)  # what label_with_teacher stores
    as_two_way = task_from_teacher(teacher, problem_type="multiclass")
    assert (as_two_way.problem_type, as_two_way.num_labels) == ("multiclass", 2)


def test_generic_label_names_count_as_none(minilm_path):
    teacher = _cross_encoder(minilm_path, 3)  # id2label LABEL_0 .. LABEL_2
    assert task_from_teacher(teacher).label_names == ()


def test_impossible_problem_types(nli_teacher, score_teacher):
    with pytest.raises(ValueError, match="problem_type must be one of .*'ranking'"):
        task_from_teacher(score_teacher, problem_type="ranking")
    with pytest.raises(ValueError, match="3 logit"):
        task_from_teacher(nli_teacher, problem_type="regression")
    with pytest.raises(ValueError, match="1 logit"):
        task_from_teacher(score_teacher, problem_type="multiclass")


# ---------------------------------------------------------------------------------------------------------------
# Student vs. teacher


def test_agreement_report_binary_by_hand(score_teacher):
    task = task_from_teacher(score_teacher)
    student = np.array([2.0, -1.0, 0.5, -0.2, 1.5])
    teacher = np.array([[1.0], [-2.0], [-0.1], [-0.3], [3.0]])
    gold = [1, 0, None, 1, float("nan")]
    report = agreement_report(student, teacher, task, gold=gold)
    assert report["num_pairs"] == 5
    assert report["spearman"] == pytest.approx(spearmanr(student, teacher[:, 0]).statistic)
    assert report["label_agreement"] == pytest.approx(4 / 5)  # row 3: student 1, teacher 0
    assert report["num_gold"] == 3
    # Rows 0, 1, 3: student predicts 1, 0, 0 against gold 1, 0, 1; the teacher the same.
    assert report["student_metrics"]["accuracy"] == pytest.approx(200 / 3)
    assert report["student_metrics"]["f1"] == pytest.approx(100 * 2 / 3)
    assert report["teacher_metrics"] == report["student_metrics"]
    text = format_report(report)
    assert "5 pairs" in text and "Spearman" in text and "80.0%" in text and "3 pairs with gold" in text


def test_agreement_report_three_way_by_hand(nli_teacher):
    task = task_from_teacher(nli_teacher)
    student = torch.tensor([[2.0, 0.1, -1.0], [0.0, 1.0, 0.5], [0.3, 0.2, 0.9], [1.0, -1.0, 0.0]])
    teacher = np.array([[1.5, 0.0, -0.5], [0.2, 0.8, 0.9], [0.1, 0.3, 1.2], [-1.0, 2.0, 0.0]])
    report = agreement_report(student, teacher, task, gold=[0, 2, None, 1])
    per_logit = [spearmanr(student[:, j].numpy(), teacher[:, j]).statistic for j in range(3)]
    assert report["spearman_per_logit"] == pytest.approx(per_logit)
    assert report["spearman"] == pytest.approx(np.mean(per_logit))
    # Predictions: student 0, 1, 2, 0; teacher 0, 2, 2, 1.
    assert report["label_agreement"] == pytest.approx(2 / 4)
    assert report["student_metrics"]["accuracy"] == pytest.approx(100 / 3)
    assert report["teacher_metrics"]["accuracy"] == pytest.approx(100.0)  # rows 0, 1, 3: 0, 2, 1 = gold
    assert "per logit" in format_report(report)


def test_agreement_report_regression_and_no_gold(score_teacher):
    task = task_from_teacher(score_teacher, problem_type="regression")
    student, teacher = [0.1, 0.4, 0.2, 0.9], [1.0, 2.5, 3.0, 4.0]
    report = agreement_report(student, teacher, task, gold=[1.0, 2.0, 2.5, 3.5])
    assert "label_agreement" not in report
    assert report["student_metrics"]["pearson"] == pytest.approx(100 * pearsonr(student, [1.0, 2.0, 2.5, 3.5])[0])
    assert report["student_metrics"]["spearman"] == pytest.approx(100 * 0.8)
    unlabelled = agreement_report(student, teacher, task, gold=[None] * 4)
    assert unlabelled["num_gold"] == 0 and unlabelled["student_metrics"] is None
    assert "no pair has a gold label" in format_report(unlabelled)
    with pytest.raises(ValueError, match="differ in shape"):
        agreement_report(student, [[1.0, 2.0]] * 4, task)


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face Hub


def test_offline_hub_gives_one_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(HubUnreachableError) as error:
        load_hub_pairs("st-dse-tests/no-such-pairs", split="train")
    assert time.monotonic() - start < 30
    assert str(error.value) == HUB_UNREACHABLE_MESSAGE
    assert error.value.__cause__ is None and error.value.__suppress_context__
    assert isinstance(error.value, ConnectionError)


@pytest.mark.parametrize("error", ["connection", "transport", "local-entry"])
def test_unreachable_hub_without_offline_mode(monkeypatch, error):
    from huggingface_hub.errors import LocalEntryNotFoundError

    errors = {
        "connection": ConnectionError("Couldn't reach 'x' on the Hub (LocalEntryNotFoundError)"),
        "transport": TimeoutError("timed out"),
        "local-entry": LocalEntryNotFoundError("no cached file"),
    }

    def unreachable(*args, **kwargs):
        raise errors[error]

    monkeypatch.setattr(pairs.datasets, "load_dataset", unreachable)
    with pytest.raises(HubUnreachableError, match="^the Hugging Face Hub is unreachable: pass --data-dir DIR"):
        load_hub_pairs("someone/pairs")


def test_hub_pairs_map_columns_and_class_ids(monkeypatch, nli_teacher, caplog):
    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
        }
    )
    hub = datasets.Dataset.from_dict(
        {"premise": ["a", "b", "c"], "hypothesis": ["d", "e", "f"], "label": [0, 2, -1]}, features=features
    )
    calls = []

    def load_dataset(name, config, split, **kwargs):
        calls.append((name, config, split, kwargs))
        return hub

    monkeypatch.setattr(pairs.datasets, "load_dataset", load_dataset)
    plain = load_hub_pairs("nyu-mll/glue", "mnli", split="validation_matched", revision="main")
    assert calls[0] == ("nyu-mll/glue", "mnli", "validation_matched", {"revision": "main"})
    assert plain.to_list() == [
        {"sentence1": "a", "sentence2": "d", "label": 0},
        {"sentence1": "b", "sentence2": "e", "label": 2},
        {"sentence1": "c", "sentence2": "f", "label": None},
    ]
    task = task_from_teacher(nli_teacher)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        mapped = load_hub_pairs("nyu-mll/glue", "mnli", label_names=task.label_names)
    assert mapped["label"] == [1, 0, None]  # the teacher's ids: contradiction 0, entailment 1, neutral 2
    assert "by name" in caplog.text


def test_a_label_too_large_for_any_number_type_names_its_row(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"sentence1": "a", "sentence2": "b", "label": 0}, {"sentence1": "c", "sentence2": "d", "label": 10**40}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    with pytest.raises(ValueError, match="data row 2, column 'label': the label .* is too large a number"):
        read_pair_file(path)
