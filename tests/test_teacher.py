from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder

from st_dse.teacher import TeacherLogitCache, label_with_teacher, pair_key, teacher_fingerprint

PAIRS = Dataset.from_dict(
    {
        "sentence1": [
            "A man plays a guitar.",
            "A woman slices onions.",
            "Kids play soccer.",
            "The cat sleeps.",
            "Hi.",
        ],
        "sentence2": [
            "Someone plays guitar.",
            "A dog runs outside.",
            "Children play football.",
            "A car drives.",
            "Hey.",
        ],
        "label": [1, 0, 1, 0, 1],
    }
)


def _cross_encoder(path: str, num_labels: int, seed: int = 0) -> CrossEncoder:
    torch.manual_seed(seed)  # the classifier on top of the packaged encoder is freshly initialised
    return CrossEncoder(path, num_labels=num_labels, device="cpu")


@pytest.fixture(scope="module")
def teacher(minilm_path) -> CrossEncoder:
    return _cross_encoder(minilm_path, num_labels=1)


class _CountingPredict:
    """Wraps CrossEncoder.predict to record how many pairs the teacher actually scored."""

    def __init__(self, cross_encoder: CrossEncoder, monkeypatch) -> None:
        self.pairs_scored = 0
        original = cross_encoder.predict

        def predict(pairs, *args, **kwargs):
            self.pairs_scored += len(pairs)
            return original(pairs, *args, **kwargs)

        monkeypatch.setattr(cross_encoder, "predict", predict)


def _pairs(dataset: Dataset) -> list[list[str]]:
    return [[a, b] for a, b in zip(dataset["sentence1"], dataset["sentence2"])]


def test_column_holds_raw_logits(teacher, tmp_path):
    labelled = label_with_teacher(teacher, PAIRS, cache_dir=tmp_path)
    raw = teacher.predict(_pairs(PAIRS), activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(np.array(labelled["teacher_logits"])[:, 0], raw, atol=1e-5)
    # Not the sigmoid scores CrossEncoder.predict gives by default (what AugSBERT labels with).
    assert not np.allclose(np.array(labelled["teacher_logits"])[:, 0], teacher.predict(_pairs(PAIRS)), atol=1e-3)
    assert labelled.column_names == ["sentence1", "sentence2", "label", "teacher_logits"]


def test_two_logit_teacher_is_reduced_to_l1_minus_l0(minilm_path, tmp_path):
    two_way = _cross_encoder(minilm_path, num_labels=2)
    labelled = label_with_teacher(two_way, PAIRS, cache_dir=tmp_path)
    raw = two_way.predict(_pairs(PAIRS), activation_fn=torch.nn.Identity())
    assert raw.shape == (5, 2)
    np.testing.assert_allclose(np.array(labelled["teacher_logits"])[:, 0], raw[:, 1] - raw[:, 0], atol=1e-5)


def test_k_way_teacher_keeps_all_logits(minilm_path, tmp_path):
    three_way = _cross_encoder(minilm_path, num_labels=3)
    labelled = label_with_teacher(three_way, PAIRS, cache_dir=tmp_path)
    raw = three_way.predict(_pairs(PAIRS), activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(np.array(labelled["teacher_logits"]), raw, atol=1e-5)


def test_cache_is_aligned_by_content_not_row_order(teacher, tmp_path, monkeypatch):
    first = label_with_teacher(teacher, PAIRS, cache_dir=tmp_path)
    expected = {
        (a, b): logits for a, b, logits in zip(first["sentence1"], first["sentence2"], first["teacher_logits"])
    }
    counter = _CountingPredict(teacher, monkeypatch)

    reordered = PAIRS.select([4, 2, 0, 3, 1]).filter(lambda row: row["sentence1"] != "The cat sleeps.")
    relabelled = label_with_teacher(teacher, reordered, cache_dir=tmp_path)
    assert counter.pairs_scored == 0
    for a, b, logits in zip(relabelled["sentence1"], relabelled["sentence2"], relabelled["teacher_logits"]):
        assert logits == expected[(a, b)]

    # A swapped pair is a different input to a cross-encoder: it must be labelled, not looked up.
    swapped = Dataset.from_dict({"sentence1": [PAIRS[0]["sentence2"]], "sentence2": [PAIRS[0]["sentence1"]]})
    label_with_teacher(teacher, swapped, cache_dir=tmp_path)
    assert counter.pairs_scored == 1


def test_only_new_and_distinct_pairs_are_labelled(teacher, tmp_path, monkeypatch):
    label_with_teacher(teacher, PAIRS.select(range(3)), cache_dir=tmp_path)
    counter = _CountingPredict(teacher, monkeypatch)
    doubled = Dataset.from_dict({name: list(PAIRS[name]) * 2 for name in PAIRS.column_names})
    labelled = label_with_teacher(teacher, doubled, cache_dir=tmp_path, chunk_size=1)
    assert counter.pairs_scored == 2
    assert labelled["teacher_logits"][:5] == labelled["teacher_logits"][5:]


def test_another_teacher_never_reuses_logits(teacher, minilm_path, tmp_path, monkeypatch):
    label_with_teacher(teacher, PAIRS, cache_dir=tmp_path)
    other = _cross_encoder(minilm_path, num_labels=1, seed=1)
    assert teacher_fingerprint(other) != teacher_fingerprint(teacher)
    counter = _CountingPredict(other, monkeypatch)
    labelled = label_with_teacher(other, PAIRS, cache_dir=tmp_path)
    assert counter.pairs_scored == len(PAIRS)
    raw = other.predict(_pairs(PAIRS), activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(np.array(labelled["teacher_logits"])[:, 0], raw, atol=1e-5)


def test_damaged_cache_file_is_recomputed_not_trusted(teacher, tmp_path, monkeypatch):
    first = label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, chunk_size=2)
    shards = sorted(tmp_path.rglob("logits-*.npz"))
    assert len(shards) == 3
    shards[0].write_bytes(shards[0].read_bytes()[:100])  # truncated, as by a full disk
    counter = _CountingPredict(teacher, monkeypatch)
    second = label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, chunk_size=2)
    assert 0 < counter.pairs_scored <= 2
    assert second["teacher_logits"] == first["teacher_logits"]
    assert list(tmp_path.rglob("*.corrupt"))


def test_cache_detects_tampered_values(tmp_path):
    cache = TeacherLogitCache(tmp_path, "f" * 64)
    cache.add([pair_key("a", "b")], np.array([[1.0]]))
    shard = next(tmp_path.rglob("logits-*.npz"))
    with np.load(shard) as data:
        arrays = dict(data)
    arrays["logits"] = np.array([[9.0]], dtype=np.float32)
    with open(shard, "wb") as handle:
        np.savez(handle, **arrays)
    assert pair_key("a", "b") not in TeacherLogitCache(tmp_path, "f" * 64)


def test_pair_key_separates_boundaries_and_order():
    assert pair_key("ab", "c") != pair_key("a", "bc")
    assert pair_key("a", "b") != pair_key("b", "a")


def test_no_cache_mode_writes_nothing(teacher, tmp_path):
    label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, use_cache=False)
    assert not list(tmp_path.rglob("*.npz"))


@pytest.mark.parametrize(
    ("sentence1", "message"),
    [
        (None, r"Row 1: the first sentence is NoneType"),
        ("", "Row 1: the first sentence is empty"),
        ("   ", "Row 1: the first sentence is empty"),
    ],
)
def test_bad_sentences_are_refused(teacher, tmp_path, sentence1, message):
    bad = Dataset.from_dict({"sentence1": ["fine", sentence1], "sentence2": ["ok", "ok"]})
    with pytest.raises(ValueError, match=message):
        label_with_teacher(teacher, bad, cache_dir=tmp_path)


def test_missing_column_is_named(teacher, tmp_path):
    with pytest.raises(ValueError, match=r"no column\(s\) \['question2'\]"):
        label_with_teacher(teacher, PAIRS, sentence2_column="question2", cache_dir=tmp_path)


def test_non_finite_teacher_logits_are_refused(teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher, "predict", lambda pairs, **kwargs: np.full(len(pairs), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        label_with_teacher(teacher, PAIRS, cache_dir=tmp_path)
    assert not list(tmp_path.rglob("*.npz"))
