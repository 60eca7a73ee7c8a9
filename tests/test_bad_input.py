"""Bad input gets a sentence, not a traceback: each refusal names the file, key, row, argument or option at fault.

Damaged model folders, text that is not text (None, lone surrogates, only NUL or zero-width characters), empty
datasets, the wrong container for a dataset, and impossible settings of the library functions and of the evaluation
scripts' options.
"""

from __future__ import annotations

import json
import logging
import math

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder

import st_dse
from st_dse.data import augment_pairs, check_pairs, get_task
from st_dse.losses import DSELoss, pack_dse_labels
from st_dse.modules.pair_head import PairHead
from st_dse.teacher import label_with_teacher
from st_dse.training import distill_student
from st_dse.training.config import DistillConfig
from tests.test_safe_loading import build_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAIRS = {
    "sentence1": ["A man plays a guitar.", "A woman slices onions.", "Kids play soccer."],
    "sentence2": ["Someone plays guitar.", "A dog runs outside.", "Children play football."],
}


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory, minilm_path) -> str:
    return str(build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"), minilm_path))


@pytest.fixture(scope="module")
def student(tiny_encoder):
    torch.manual_seed(0)
    return st_dse.build_student(tiny_encoder, hidden_dim=8, device="cpu")


@pytest.fixture(scope="module")
def teacher(tiny_encoder) -> CrossEncoder:
    torch.manual_seed(0)
    return CrossEncoder(tiny_encoder, num_labels=1, device="cpu")


@pytest.fixture
def saved_student(student, tmp_path):
    student.save(str(tmp_path / "student"))
    return tmp_path / "student"


# ---------------------------------------------------------------- damaged modules.json


def test_modules_json_entry_without_type_names_the_entry_and_key(saved_student):
    modules_path = saved_student / "modules.json"
    modules = json.loads(modules_path.read_text())
    del modules[1]["type"]
    modules_path.write_text(json.dumps(modules))
    for load in (st_dse.load_student, st_dse.load_model, st_dse.DSEStudent):
        with pytest.raises(ValueError, match=r"modules\.json, entry 1 .*has no 'type' key") as error:
            load(str(saved_student), device="cpu")
        assert "Save the model again" in str(error.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"idx": 0, "name": "0", "path": "", "type": ', r"modules\.json is not valid JSON"),
        ("\xff\xfe not text", r"modules\.json is not valid JSON"),
        ('{"0": "sentence_transformers.base.modules.transformer.Transformer"}', r"holds a JSON dict, expected"),
        ('["sentence_transformers.base.modules.transformer.Transformer"]', r"entry 0 is .*expected an object"),
        ('[{"name": "0", "path": 3, "type": "x"}]', r"entry 0 .*non-string \(3\) 'path' key"),
    ],
    ids=["truncated", "not-utf8", "object", "list-of-strings", "path-not-string"],
)
def test_damaged_modules_json_is_named(saved_student, content, message):
    (saved_student / "modules.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(ValueError, match=message):
        st_dse.load_student(str(saved_student), device="cpu")


# ---------------------------------------------------------------- text that is not text


def test_lone_surrogate_in_score_pairs_names_row_and_side(student):
    with pytest.raises(
        ValueError, match=r"Row 1: the second sentence holds a lone surrogate '\\ud800' at character 4"
    ):
        st_dse.score_pairs(student, ["fine", "also fine"], ["fine", "bad \ud800 text"])


def test_lone_surrogate_in_label_with_teacher_names_column_and_row(teacher):
    # A datasets.Dataset cannot hold one (Arrow stores UTF-8), so it arrives in a dict of columns or a list.
    pairs = {"sentence1": ["fine", "bad \udc80"], "sentence2": ["fine", "fine too"]}
    with pytest.raises(ValueError, match=r"column 'sentence1', row 1: .*lone surrogate"):
        label_with_teacher(teacher, pairs, use_cache=False)


@pytest.mark.parametrize("text", ["\x00\x00", "\u200b\u200c", " \ufeff\u2060\t", "\x1f"])
def test_invisible_text_counts_as_empty(text, student):
    with pytest.raises(ValueError, match=r"Row 1: the first sentence is empty \(it holds only whitespace, control"):
        check_pairs(["ok", text], ["ok", "ok"])
    with pytest.raises(ValueError, match="Row 0: the second sentence is empty"):
        st_dse.score_pairs(student, ["ok"], [text])


def test_text_with_some_invisible_characters_is_kept():
    check_pairs(["zero\u200bwidth", "\ufeffBOM first", "tab\tinside"], ["a", "b", "c"])
    check_pairs(["é", "中文"], ["😀", "x"])


def test_none_in_label_with_teacher_names_the_row(teacher):
    pairs = Dataset.from_dict({"sentence1": ["a b", "c d"], "sentence2": ["e f", None]})
    with pytest.raises(ValueError, match=r"Row 1: the second sentence is NoneType \(None\), expected a string"):
        label_with_teacher(teacher, pairs, use_cache=False)


def _labelled(size: int = 3, **overrides) -> Dataset:
    columns = {
        "sentence1": [f"first {i}" for i in range(size)],
        "sentence2": [f"second {i}" for i in range(size)],
        "label": [i % 2 for i in range(size)],
        "teacher_logits": [[0.5 * i] for i in range(size)],
    }
    for column, (row, value) in overrides.items():
        columns[column][row] = value
    return Dataset.from_dict(columns)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sentence1": (1, None)}, r"Row 1: the first sentence is NoneType"),
        ({"sentence2": (2, "\x00")}, r"Row 2: the second sentence is empty"),
        ({"teacher_logits": (1, None)}, r"Row 1: the teacher logits \('teacher_logits'\) are None, expected a non"),
        ({"teacher_logits": (0, [None])}, r"Row 0: the teacher logits .*hold None, expected finite numbers"),
        ({"teacher_logits": (2, [float("nan")])}, r"Row 2: the teacher logits .*hold nan, expected finite"),
        ({"teacher_logits": (1, [0.1, 0.2])}, r"Row 1: 2 teacher logits, but other rows have \[1\]"),
    ],
    ids=["none-text", "nul-text", "none-logits", "none-in-logits", "nan-logit", "ragged-logits"],
)
def test_pack_dse_labels_names_the_bad_row(overrides, message):
    with pytest.raises(ValueError, match=message):
        pack_dse_labels(_labelled(**overrides))


def test_pack_dse_labels_names_a_gold_label_that_is_not_a_number():
    named_labels = _labelled().remove_columns("label").add_column("label", ["paraphrase", "yes", "no"])
    with pytest.raises(ValueError, match=r"Row 0: the gold label \('label'\) is str \('paraphrase'\), expected"):
        pack_dse_labels(named_labels)


def test_pack_dse_labels_row_numbers_count_across_batches():
    with pytest.raises(ValueError, match="Row 1500: the teacher logits"):
        pack_dse_labels(_labelled(1600, teacher_logits=(1500, None)))


def test_pack_dse_labels_keeps_missing_gold_as_nan():
    packed = pack_dse_labels(_labelled(label=(1, None)))["label"]
    assert math.isnan(packed[1][0]) and packed[0] == [0.0, 0.0] and packed[2] == [0.0, 1.0]


# ---------------------------------------------------------------- empty datasets, and the wrong container


def test_empty_dataset_to_label_with_teacher_gives_an_empty_labelled_dataset(teacher, tmp_path, caplog):
    empty = Dataset.from_dict({"sentence1": [], "sentence2": []})
    with caplog.at_level(logging.WARNING, logger="st_dse.teacher.labelling"):
        labelled = label_with_teacher(teacher, empty, cache_dir=tmp_path)
    assert len(labelled) == 0 and labelled.column_names == ["sentence1", "sentence2", "teacher_logits"]
    assert labelled.features["teacher_logits"] == datasets.Sequence(datasets.Value("float64"))
    assert "nothing to label" in caplog.text


def test_empty_dataset_to_pack_and_distill_is_refused(tiny_encoder, tmp_path):
    empty = Dataset.from_dict({"sentence1": [], "sentence2": [], "label": [], "teacher_logits": []})
    with pytest.raises(ValueError, match="The dataset has no rows: there is nothing to train on"):
        pack_dse_labels(empty)
    for weight in (0.5, 0.0):  # gold and teacher, and gold-only
        config = DistillConfig(student=tiny_encoder, hidden_dim=8, epochs=1, distillation_weight=weight)
        with pytest.raises(ValueError, match="The dataset has no rows: there is nothing to train on"):
            distill_student(get_task("mrpc"), empty, None, tmp_path / "checkpoints", config)
    assert not (tmp_path / "checkpoints").exists()


def test_label_with_teacher_takes_a_dict_or_a_dataframe(teacher):
    expected = label_with_teacher(teacher, Dataset.from_dict(PAIRS), use_cache=False)["teacher_logits"]
    from_dict = label_with_teacher(teacher, dict(PAIRS), use_cache=False)
    from_frame = label_with_teacher(teacher, pd.DataFrame(PAIRS), use_cache=False)
    for labelled in (from_dict, from_frame):
        assert isinstance(labelled, Dataset)
        assert labelled.column_names == ["sentence1", "sentence2", "teacher_logits"]
        np.testing.assert_allclose(labelled["teacher_logits"], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([("a", "b")], r"takes a datasets\.Dataset \(or a dict of columns, or a pandas DataFrame\).*got list"),
        (datasets.DatasetDict(train=Dataset.from_dict(PAIRS)), r"got a DatasetDict of splits \['train'\]: pass one"),
        ({"sentence1": ["a", "b"], "sentence2": ["c"]}, r"dict of columns could not be converted: .*length"),
    ],
    ids=["list", "dataset-dict", "uneven-dict"],
)
def test_label_with_teacher_refuses_other_containers(teacher, data, message):
    with pytest.raises(ValueError, match=message):
        label_with_teacher(teacher, data, use_cache=False)


# ---------------------------------------------------------------- settings of the library functions


def test_build_student_checks_head_settings_before_loading_anything():
    missing = "/nonexistent/encoder"  # never reached: the settings are checked first
    with pytest.raises(ValueError, match=r"PairHead hidden_dim must be an integer >= 1, got 0"):
        st_dse.build_student(missing, hidden_dim=0)
    with pytest.raises(ValueError, match=r"num_labels=0 does not fit problem_type"):
        st_dse.build_student(missing, num_labels=0)
    with pytest.raises(ValueError, match=r"PairHead num_labels must be an integer, got 2\.0"):
        st_dse.build_student(missing, num_labels=2.0)
    with pytest.raises(ValueError, match=r"PairHead rank must be an integer >= 1, got 0"):
        st_dse.build_student(missing, head_type="factorized", rank=0)
    with pytest.raises(ValueError, match=r"PairHead dropout must be a number in \[0, 1\), got 1\.0"):
        st_dse.build_student(missing, dropout=1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_features": 0}, r"in_features must be an integer >= 1, got 0"),
        ({"in_features": 8, "hidden_dim": -4}, r"hidden_dim must be an integer >= 1, got -4"),
        ({"in_features": 8, "head_type": "factorized", "rank": 0}, r"rank must be an integer >= 1, got 0"),
        ({"in_features": 8, "dropout": 1.0}, r"dropout must be a number in \[0, 1\), got 1\.0"),
        ({"in_features": 8, "dropout": -0.1}, r"dropout must be a number in \[0, 1\), got -0\.1"),
        ({"in_features": 8, "num_labels": 0}, r"num_labels=0 does not fit"),
        ({"in_features": True}, r"in_features must be an integer, got True"),
    ],
)
def test_pair_head_refuses_impossible_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PairHead(**kwargs)


def test_pair_head_takes_numpy_sizes():
    head = PairHead(np.int64(8), hidden_dim=np.int64(4), dropout=np.float32(0.1))
    assert head.score(torch.zeros(2, 8), torch.zeros(2, 8)).shape == (2, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distillation_weight": 1.5}, r"distillation_weight must be in \[0, 1\], a number.*got 1\.5"),
        ({"distillation_weight": float("nan")}, r"distillation_weight must be in \[0, 1\], a number.*got nan"),
        ({"distillation_weight": "0.5"}, r"distillation_weight must be in \[0, 1\], a number.*got '0\.5'"),
        ({"teacher_logit_scale": 0}, r"teacher_logit_scale must be a positive, finite number, got 0"),
        ({"teacher_logit_scale": float("inf")}, r"teacher_logit_scale must be a positive, finite number, got inf"),
        ({"teacher_logit_scale": "2"}, r"teacher_logit_scale must be a positive, finite number, got '2'"),
        ({"symmetric": "yes"}, r"symmetric must be True or False, got 'yes'"),
    ],
)
def test_dse_loss_refuses_impossible_settings(student, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DSELoss(student, **kwargs)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_score_pairs_refuses_a_bad_batch_size(student, batch_size):
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer"):
        st_dse.score_pairs(student, ["a"], ["b"], batch_size=batch_size)


def test_score_pairs_checks_output_before_encoding(student, monkeypatch):
    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded before the output was checked")

    monkeypatch.setattr(student, "encode", no_encoding)
    with pytest.raises(ValueError, match=r"output must be 'logits', 'probabilities' or 'labels', got 'scores'"):
        st_dse.score_pairs(student, ["a"], ["b"], output="scores")
    regression = PairHead(student.get_embedding_dimension(), problem_type="regression")
    monkeypatch.setattr(st_dse.inference.scoring, "get_pair_head", lambda model: regression)
    with pytest.raises(ValueError, match="A regression head gives scores, not probabilities"):
        st_dse.score_pairs(student, ["a"], ["b"], output="probabilities")


@pytest.mark.parametrize(("name", "value"), [("batch_size", 0), ("chunk_size", 0), ("batch_size", 1.5)])
def test_label_with_teacher_refuses_bad_sizes(teacher, name, value):
    with pytest.raises(ValueError, match=f"{name} must be a positive integer, got {value!r}"):
        label_with_teacher(teacher, Dataset.from_dict(PAIRS), use_cache=False, **{name: value})


@pytest.mark.parametrize("factor", [-1, float("inf"), "2"])
def test_augment_pairs_refuses_a_bad_factor(factor):
    with pytest.raises(ValueError, match=r"factor must be a finite number >= 0"):
        augment_pairs(Dataset.from_dict(PAIRS), factor=factor, strategies=["swap"])


# ---------------------------------------------------------------- evaluation scripts' options


def _refused(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Traceback" not in error
    return error


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
        (["--kfold", "1"], "argument --kfold: must be an integer >= 2, got 1"),
        (["--kfold", "ten"], "argument --kfold: expected an integer >= 2, got 'ten'"),
        (["--max-samples", "0"], "argument --max-samples: must be an integer >= 1, got 0"),
        (["--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
        (["--seed", str(2**32)], f"argument --seed: must be an integer in [0, {2**32 - 1}], got {2**32}"),
    ],
)
def test_senteval_options(argv, message, capsys, tmp_path):
    from evaluation import senteval

    assert message in _refused(senteval.parse_args, ["--data-dir", str(tmp_path), *argv], capsys)


def test_senteval_needs_a_data_dir(monkeypatch, capsys):
    from evaluation import senteval

    monkeypatch.setattr(senteval, "default_data_dir", lambda: None)
    assert "argument --data-dir: required when $ST_DSE_DATA_DIR is not set" in _refused(
        senteval.parse_args, [], capsys
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "mrpc", "--max-samples", "0"], "argument --max-samples: must be an integer >= 1, got 0"),
        (["--tasks", "mrpc", "--max-samples", "-5"], "argument --max-samples: must be an integer >= 1, got -5"),
        (["--tasks", "mrpc", "glue"], "argument --tasks: unknown task 'glue'; known tasks: mrpc, qqp"),
    ],
)
def test_glue_options(argv, message, capsys):
    from evaluation import glue

    assert message in _refused(glue.parse_args, argv, capsys)
    assert glue.parse_args(["--tasks", "mrpc", "stsb", "--max-samples", "10"]).max_samples == 10


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
        (["--batch-size", "many"], "argument --batch-size: expected an integer >= 1, got 'many'"),
        (["--release-date", "2024-13-01"], "argument --release-date: expected a date written YYYY-MM-DD"),
        (["--release-date", "20240101"], "argument --release-date: expected a date written YYYY-MM-DD"),
    ],
)
def test_mteb_sts_options(argv, message, capsys):
    from evaluation import mteb_sts

    assert message in _refused(mteb_sts.parse_args, argv, capsys)
    assert mteb_sts.parse_args(["--release-date", "2024-01-31", "--batch-size", "8"]).batch_size == 8
