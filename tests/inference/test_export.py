"""ONNX export: the exported encoder and pair head reproduce the torch student."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from st_dse.inference import score_pairs
from st_dse.integrity import CorruptFileError
from st_dse.student import build_student

pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")

from st_dse.inference.export import OnnxStudent, export_onnx  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENTENCES1 = [
    "Hi.",
    "How do I learn Python quickly?",
    "A man plays a guitar on the street while a small crowd gathers to listen to him.",
    "The stock market fell sharply on Monday after the central bank raised interest rates again.",
    "Python",
    "How do I learn Python quickly?",
]
SENTENCES2 = [
    "Hello there, how are you doing today?",
    "What is the best way to learn Python?",
    "Someone plays guitar.",
    "Shares dropped.",
    "Is Python a good first programming language for someone who has never written any code? " * 20,
    "How do I cook rice?",
]


@pytest.fixture(scope="module")
def exported(minilm_path, tmp_path_factory):
    torch.manual_seed(0)
    student = build_student(minilm_path, num_labels=1)
    folder = export_onnx(student, tmp_path_factory.mktemp("onnx") / "student")
    return student, folder


def test_export_writes_the_folder(exported):
    student, folder = exported
    for name in ("encoder.onnx", "pair_head.onnx", "onnx_config.json", "tokenizer_config.json", "checksums.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "onnx_config.json").read_text())
    assert config["max_seq_length"] == student.max_seq_length
    assert config["encoder"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert config["head"]["num_labels"] == 1 and config["head"]["head_type"] == "concat"
    assert config["normalized"] is False


def test_onnx_student_matches_torch(exported):
    student, folder = exported
    onnx_student = OnnxStudent(folder, providers=["CPUExecutionProvider"])
    sentences = SENTENCES1 + SENTENCES2
    np.testing.assert_allclose(onnx_student.encode(sentences, batch_size=4), student.encode(sentences), atol=1e-4)
    logits = onnx_student.score_pairs(SENTENCES1, SENTENCES2)
    assert logits.shape == (len(SENTENCES1),)
    np.testing.assert_allclose(logits, score_pairs(student, SENTENCES1, SENTENCES2), atol=1e-4)
    # Cached candidates scored by the head alone: one query against many embeddings.
    candidates = onnx_student.encode(SENTENCES2)
    query = onnx_student.encode(SENTENCES1[1])
    np.testing.assert_allclose(
        onnx_student.score_embeddings(query, candidates),
        score_pairs(student, [SENTENCES1[1]] * len(SENTENCES2), SENTENCES2),
        atol=1e-4,
    )


def test_normalize_and_multiclass_export(minilm_path, tmp_path, exported):
    torch.manual_seed(1)
    student = build_student(minilm_path, num_labels=3, keep_normalize=True, head_type="factorized", hidden_dim=64)
    folder = export_onnx(student, tmp_path / "student")
    assert json.loads((folder / "onnx_config.json").read_text())["normalized"] is True
    onnx_student = OnnxStudent(folder)  # default providers
    embeddings = onnx_student.encode(SENTENCES1)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    logits = onnx_student.score_pairs(SENTENCES1, SENTENCES2)
    assert logits.shape == (len(SENTENCES1), 3)
    np.testing.assert_allclose(logits, score_pairs(student, SENTENCES1, SENTENCES2), atol=1e-4)

    # A graph copied in from another export is named on load, not run with the wrong head or encoder.
    for name in ("pair_head.onnx", "encoder.onnx"):
        mixed = shutil.copytree(exported[1], tmp_path / f"mixed-{name}")
        shutil.copy(folder / name, mixed / name)
        with pytest.raises(CorruptFileError, match=f"{name}.*comes from another save"):
            OnnxStudent(mixed)


def test_int8_export(exported, tmp_path):
    student, float_folder = exported
    folder = export_onnx(student, tmp_path / "int8", quantize=True)
    assert sorted(path.name for path in folder.iterdir() if path.suffix == ".onnx") == [
        "encoder.onnx",
        "pair_head.onnx",
    ]  # the float32 graph it was quantised from is not left behind
    assert json.loads((folder / "onnx_config.json").read_text())["quantized"] is True
    assert (folder / "encoder.onnx").stat().st_size < 0.3 * (float_folder / "encoder.onnx").stat().st_size
    # The head is not quantised: the same embeddings give the same logits as the float export's head.
    int8_student, float_student = OnnxStudent(folder), OnnxStudent(float_folder)
    embeddings = float_student.encode(SENTENCES1 + SENTENCES2)
    np.testing.assert_allclose(
        int8_student.score_embeddings(embeddings[:6], embeddings[6:]),
        float_student.score_embeddings(embeddings[:6], embeddings[6:]),
        atol=1e-5,
    )
    # The encoder's embeddings move a little (per-channel int8 weights), and stay close to float32's.
    quantized = int8_student.encode(SENTENCES1 + SENTENCES2)
    cosine = (quantized * embeddings).sum(1) / np.linalg.norm(quantized, axis=1) / np.linalg.norm(embeddings, axis=1)
    assert cosine.min() > 0.95 and cosine.mean() > 0.99
    assert not np.allclose(quantized, embeddings, atol=1e-4)
