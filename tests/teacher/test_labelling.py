from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder

from st_dse.teacher import TeacherLogitCache, label_with_teacher, pair_key, teacher_fingerprint
from st_dse.teacher import cache as teacher_module

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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


class _Interrupt(Exception):
    """Stands in for an interruption (Ctrl-C, a killed job) after some batches were labelled."""


def _interrupt_after(cross_encoder: CrossEncoder, monkeypatch, calls: int) -> None:
    original = cross_encoder.predict
    seen = []

    def predict(pairs, *args, **kwargs):
        if len(seen) == calls:
            raise _Interrupt
        seen.append(len(pairs))
        return original(pairs, *args, **kwargs)

    monkeypatch.setattr(cross_encoder, "predict", predict)


def test_interrupted_run_loses_at_most_the_batch_in_flight(teacher, tmp_path, monkeypatch):
    reference = label_with_teacher(teacher, PAIRS, use_cache=False, batch_size=2)
    with monkeypatch.context() as patch:
        _interrupt_after(teacher, patch, calls=2)
        with pytest.raises(_Interrupt):
            label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, batch_size=2)
    # The two finished batches are on disk, one file each; the interrupted run merged nothing.
    assert len(list(tmp_path.rglob("logits-*.npz"))) == 2 and not list(tmp_path.rglob("merged-*.npz"))
    counter = _CountingPredict(teacher, monkeypatch)
    resumed = label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, batch_size=2)
    assert counter.pairs_scored == 1  # only the batch that was in flight
    assert resumed["teacher_logits"] == reference["teacher_logits"]


def test_default_chunk_is_one_teacher_batch(teacher, tmp_path, monkeypatch):
    calls = []
    original = teacher.predict
    monkeypatch.setattr(
        teacher, "predict", lambda pairs, **kwargs: calls.append(len(pairs)) or original(pairs, **kwargs)
    )
    label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, batch_size=2)
    assert calls == [2, 2, 1]


def test_batches_are_cut_from_the_pairs_sorted_longest_first(teacher, tmp_path, monkeypatch):
    # One-batch chunks must not cost predict()'s length sorting: pairs are ordered by length before chunking.
    batches = []
    original = teacher.predict
    monkeypatch.setattr(
        teacher, "predict", lambda pairs, **kwargs: batches.append(list(pairs)) or original(pairs, **kwargs)
    )
    labelled = label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, batch_size=2)
    lengths = [[len(a) + len(b) for a, b in batch] for batch in batches]
    assert [length for batch in lengths for length in batch] == sorted(
        (len(a) + len(b) for a, b in zip(PAIRS["sentence1"], PAIRS["sentence2"])), reverse=True
    )
    # The column is still in dataset order.
    reference = teacher.predict(_pairs(PAIRS), activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(np.array(labelled["teacher_logits"])[:, 0], reference, atol=1e-5)


def test_complete_run_leaves_one_merged_file(teacher, tmp_path, monkeypatch):
    first = label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, batch_size=2)
    assert [path.name.split("-")[0] for path in tmp_path.rglob("*.npz")] == ["merged"]
    assert not list(tmp_path.rglob("*.tmp"))
    counter = _CountingPredict(teacher, monkeypatch)
    assert label_with_teacher(teacher, PAIRS, cache_dir=tmp_path)["teacher_logits"] == first["teacher_logits"]
    assert counter.pairs_scored == 0
    # New pairs add batch files; the next complete run folds everything into one file again.
    extra = Dataset.from_dict({"sentence1": ["New one.", "New two."], "sentence2": ["Other.", "Other."]})
    label_with_teacher(teacher, extra, cache_dir=tmp_path, batch_size=1)
    (merged,) = tmp_path.rglob("*.npz")
    with np.load(merged) as stored:
        assert len(stored["keys"]) == len(PAIRS) + 2


def test_long_runs_merge_batch_files_as_they_go(teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_module, "MERGE_EVERY_BATCHES", 2)
    with monkeypatch.context() as patch:
        _interrupt_after(teacher, patch, calls=3)
        with pytest.raises(_Interrupt):
            label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, batch_size=1)
    assert len(list(tmp_path.rglob("merged-*.npz"))) == 1 and len(list(tmp_path.rglob("logits-*.npz"))) == 1
    assert len(TeacherLogitCache(tmp_path, teacher_fingerprint(teacher))) == 3


def test_damaged_cache_file_is_recomputed_not_trusted(teacher, tmp_path, monkeypatch):
    reference = label_with_teacher(teacher, PAIRS, use_cache=False, batch_size=2)
    with monkeypatch.context() as patch:
        _interrupt_after(teacher, patch, calls=2)
        with pytest.raises(_Interrupt):
            label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, batch_size=2)
    damaged = sorted(tmp_path.rglob("logits-*.npz"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated, as by a full disk
    counter = _CountingPredict(teacher, monkeypatch)
    second = label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, batch_size=2)
    assert counter.pairs_scored == 2 + 1  # the damaged batch and the one never finished
    assert second["teacher_logits"] == reference["teacher_logits"]
    assert [path.name for path in tmp_path.rglob("*.corrupt")] == [damaged.with_suffix(".corrupt").name]

    # A damaged merged file is set aside too: everything is relabelled, to the same values.
    (merged,) = tmp_path.rglob("merged-*.npz")
    merged.write_bytes(merged.read_bytes()[:-7])
    third = label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, batch_size=2)
    assert counter.pairs_scored == 3 + len(PAIRS)
    assert third["teacher_logits"] == reference["teacher_logits"]


def test_leftover_temporary_files_are_ignored_then_removed(teacher, tmp_path):
    directory = TeacherLogitCache(tmp_path, teacher_fingerprint(teacher)).directory
    stale, fresh = directory / "logits-killed.tmp", directory / "logits-writing.tmp"
    stale.write_bytes(b"half a file")
    fresh.write_bytes(b"being written by another process")
    an_hour_ago = time.time() - teacher_module.STALE_TEMPORARY_SECONDS - 60
    os.utime(stale, (an_hour_ago, an_hour_ago))
    labelled = label_with_teacher(teacher, PAIRS, cache_dir=tmp_path)
    assert len(labelled) == len(PAIRS)
    assert not stale.exists() and fresh.exists()


def test_cache_of_another_width_is_refused(tmp_path):
    cache = TeacherLogitCache(tmp_path, "f" * 64)
    cache.add([pair_key("a", "b")], np.array([[1.0]]))
    with pytest.raises(ValueError, match="3 logits per pair, but this cache holds 1"):
        cache.add([pair_key("c", "d")], np.array([[1.0, 2.0, 3.0]]))


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


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_teacher_logits_are_refused(teacher, tmp_path, monkeypatch, bad_value):
    monkeypatch.setattr(teacher, "predict", lambda pairs, **kwargs: np.full(len(pairs), bad_value, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        label_with_teacher(teacher, PAIRS, cache_dir=tmp_path)
    assert not list(tmp_path.rglob("*.npz"))


def test_sharded_labelling_merges_into_the_unsharded_result(teacher, tmp_path, monkeypatch):
    # batch_size=1: each pair is scored alone, so logits do not depend on which pairs share a batch and the sharded
    # result must equal the unsharded one exactly.
    reference = label_with_teacher(teacher, PAIRS, use_cache=False, batch_size=1)
    shards = [
        label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, batch_size=1, shard_index=i, num_shards=2)
        for i in range(2)
    ]
    assert all(len(shard) > 0 for shard in shards)
    assert sorted([*shards[0]["sentence1"], *shards[1]["sentence1"]]) == sorted(PAIRS["sentence1"])
    # Assignment follows content: any row order gives the same shards.
    reordered = label_with_teacher(
        teacher, PAIRS.select([4, 3, 2, 1, 0]), use_cache=False, shard_index=0, num_shards=2
    )
    assert sorted(reordered["sentence1"]) == sorted(shards[0]["sentence1"])

    counter = _CountingPredict(teacher, monkeypatch)
    merged = label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, require_cached=True)
    assert counter.pairs_scored == 0
    assert merged["teacher_logits"] == reference["teacher_logits"]
    assert merged["label"] == PAIRS["label"]


def test_require_cached_names_what_is_missing(teacher, tmp_path, monkeypatch):
    label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, shard_index=0, num_shards=2)
    counter = _CountingPredict(teacher, monkeypatch)
    with pytest.raises(ValueError, match=r"\d of 5 pairs have no cached logits for this teacher"):
        label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, require_cached=True)
    assert counter.pairs_scored == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shard_index": 0}, "Pass shard_index and num_shards together"),
        ({"shard_index": 2, "num_shards": 2}, r"shard_index must be in \[0, num_shards - 1\]"),
        ({"shard_index": 0, "num_shards": 0}, "num_shards >= 1"),
        ({"shard_index": "0", "num_shards": 2}, "shard_index must be an integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"chunk_size": -1}, "chunk_size must be a positive integer"),
        ({"require_cached": True, "use_cache": False}, "cannot be combined with use_cache=False"),
    ],
)
def test_bad_labelling_arguments_are_refused(teacher, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        label_with_teacher(teacher, PAIRS, cache_dir=tmp_path, **kwargs)
