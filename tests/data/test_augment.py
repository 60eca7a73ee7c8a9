"""Teacher-labelled augmentation: which pairs are made, that gold pairs are never relabelled, and the recipe path."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder

from st_dse.data.augment import augment_pairs, with_augmented
from st_dse.losses import pack_dse_labels
from st_dse.modules import TopLayersConcat
from st_dse.student import load_student
from st_dse.teacher import TeacherLogitCache, teacher_fingerprint
from tests.conftest import load_recipe

FIRSTS = ["a cat sleeps", "a dog barks", "rain falls", "the sun shines", "kids play", "a man cooks"]
SECONDS = ["a cat naps", "a dog howls", "it is raining", "sunny weather", "children play", "a chef cooks"]
PAIRS = Dataset.from_dict({"sentence1": FIRSTS, "sentence2": SECONDS, "label": [1, 0, 1, 1, 0, 1]})


class _TableModel:
    """A stand-in encoder with fixed embeddings, so nearest neighbours are known in advance."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def encode(self, sentences, normalize_embeddings=False, **kwargs):
        matrix = np.array([self.vectors[s] for s in sentences], dtype=np.float32)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True) if normalize_embeddings else matrix


def test_swap_gives_every_pair_in_the_other_order():
    swapped = augment_pairs(PAIRS, factor=1, strategies=["swap"])
    assert sorted(zip(swapped["sentence1"], swapped["sentence2"])) == sorted(zip(SECONDS, FIRSTS))
    assert set(swapped["augmentation"]) == {"swap"} and "label" not in swapped.column_names


def test_shuffle_never_repeats_or_reverses_a_gold_pair():
    shuffled = augment_pairs(PAIRS, factor=3, strategies=["shuffle"], seed=1)
    made = list(zip(shuffled["sentence1"], shuffled["sentence2"]))
    gold = set(zip(FIRSTS, SECONDS))
    assert len(made) == 18 and len(set(made)) == 18
    assert not gold & set(made) and not gold & {(b, a) for a, b in made}
    assert all(a in FIRSTS and b in SECONDS for a, b in made)
    again = augment_pairs(PAIRS, factor=3, strategies=["shuffle"], seed=1)
    other = augment_pairs(PAIRS, factor=3, strategies=["shuffle"], seed=2)
    assert again["sentence2"] == shuffled["sentence2"] and other["sentence2"] != shuffled["sentence2"]


def test_neighbours_pair_each_sentence_with_its_nearest_other_second_sentence():
    # Each first sentence sits nearest its own partner, then the next pair's second sentence (cyclically).
    vectors = {}
    for i, (first, second) in enumerate(zip(FIRSTS, SECONDS)):
        angle = i * 2 * math.pi / len(FIRSTS)
        vectors[second] = [math.cos(angle), math.sin(angle)]
        vectors[first] = [math.cos(angle + 0.3), math.sin(angle + 0.3)]
    made = augment_pairs(PAIRS, factor=1, strategies=["neighbours"], model=_TableModel(vectors))
    expected = {(FIRSTS[i], SECONDS[(i + 1) % len(FIRSTS)]) for i in range(len(FIRSTS))}
    assert set(zip(made["sentence1"], made["sentence2"])) == expected


def test_factor_is_shared_between_strategies_without_duplicates(minilm_path):
    from sentence_transformers import SentenceTransformer

    made = augment_pairs(PAIRS, factor=2, model=SentenceTransformer(minilm_path, device="cpu"))
    pairs = list(zip(made["sentence1"], made["sentence2"]))
    assert len(pairs) == 12 and len(set(pairs)) == 12
    counts = {s: made["augmentation"].count(s) for s in ("swap", "shuffle", "neighbours")}
    assert counts == {"swap": 4, "shuffle": 4, "neighbours": 4}
    assert len(augment_pairs(PAIRS, factor=0, strategies=["swap"])) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategies": ["paraphrase"]}, "Unknown augmentation strategies"),
        ({"strategies": ["neighbours"]}, "needs an embedding model"),
        ({"factor": -1, "strategies": ["swap"]}, "factor must be a finite number >= 0"),
        ({"factor": float("nan"), "strategies": ["swap"]}, "factor must be a finite number >= 0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        augment_pairs(PAIRS, **kwargs)


def test_augmented_rows_carry_no_gold_label():
    train = PAIRS.add_column("teacher_logits", [[float(i)] for i in range(6)])
    extra = augment_pairs(PAIRS, factor=1, strategies=["swap"]).add_column("teacher_logits", [[9.0]] * 6)
    combined = with_augmented(train, extra)
    assert len(combined) == 12 and combined["label"][:6] == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert all(math.isnan(value) for value in combined["label"][6:])
    packed = pack_dse_labels(combined)["label"]
    assert packed[0] == [1.0, 0.0] and math.isnan(packed[6][0]) and packed[6][1] == 9.0
    with pytest.raises(ValueError, match="lacks the column"):
        with_augmented(train, augment_pairs(PAIRS, factor=1, strategies=["swap"]))


def _distill_recipe():
    return load_recipe("distill")


@pytest.mark.slow
def test_distill_recipe_trains_on_gold_plus_teacher_labelled_pairs(data_dir, minilm_path, tmp_path):
    distill = _distill_recipe()
    torch.manual_seed(0)
    teacher_path = tmp_path / "teacher"
    CrossEncoder(minilm_path, num_labels=1, max_length=64, device="cpu").save(str(teacher_path))
    common = ["--task", "mrpc", "--data-dir", str(data_dir), "--teacher", str(teacher_path), "--cache-dir"]
    common += [str(tmp_path / "cache"), "--max-train-samples", "16", "--epochs", "1", "--batch-size", "8"]
    # Also the original DSE pooling (last 2 layers here, to stay small): it must come back with the saved student.
    distill.main([*common, "--output-dir", str(tmp_path / "student"), "--augment", "1", "--pooling-layers", "2"])
    saved = json.loads((tmp_path / "student" / "dse.json").read_text())
    assert "augmentation" in saved["timings_s"] and saved["settings"]["augment"] == 1
    student = load_student(str(tmp_path / "student"))
    assert isinstance(student[1], TopLayersConcat) and student.get_embedding_dimension() == 2 * 384
    # 16 gold pairs and 16 new ones were labelled by the teacher, all cached under its fingerprint.
    fingerprint = teacher_fingerprint(CrossEncoder(str(teacher_path), device="cpu"))
    assert len(TeacherLogitCache(tmp_path / "cache", fingerprint)) == 32
    with pytest.raises(SystemExit):
        distill.main([*common, "--output-dir", str(tmp_path / "gold"), "--augment", "1", "--distillation-weight", "0"])


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--teacher", "runs/mrpc-teacher"], 2.0),  # a trained teacher: augmentation on by default
        ([], 0.0),  # the recipe fine-tunes its own quick teacher: off
        (["--teacher", "runs/mrpc-teacher", "--distillation-weight", "0"], 0.0),  # gold-only: nothing to label
        (["--teacher", "runs/mrpc-teacher", "--augment", "0"], 0.0),  # an explicit factor always wins
        (["--augment", "1"], 1.0),
    ],
)
def test_augmentation_default_follows_the_teacher(extra, expected):
    _, config, _ = _distill_recipe().parse_args(["--task", "mrpc", "--output-dir", "out", *extra])
    assert config.augment == expected


def test_teacher_logit_scale_is_refused_for_regression_tasks():
    recipe = _distill_recipe()
    assert recipe.parse_args(["--task", "mrpc", "--output-dir", "out", "--teacher-logit-scale", "0.5"])
    with pytest.raises(SystemExit, match="regression task"):
        recipe.parse_args(["--task", "stsb", "--output-dir", "out", "--teacher-logit-scale", "0.5"])


def test_pooling_layers_below_one_are_refused_before_any_work(capsys):
    with pytest.raises(SystemExit):
        _distill_recipe().parse_args(["--task", "mrpc", "--output-dir", "out", "--pooling-layers", "0"])
    assert "--pooling-layers must be a positive integer, got 0" in capsys.readouterr().err
