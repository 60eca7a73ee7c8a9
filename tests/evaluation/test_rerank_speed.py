"""evaluation.rerank_speed on tiny saved models: every path timed in every situation, the int8 path's accuracy."""

from __future__ import annotations

import json

import pytest
import torch
from sentence_transformers import CrossEncoder

import st_dse
from st_dse.data import get_task
from st_dse.training import save_student
from tests.test_reliability import build_tiny_encoder

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")

from evaluation import rerank_speed  # noqa: E402


def test_rerank_speed_report(tmp_path, minilm_path, data_dir):
    tiny = str(build_tiny_encoder(tmp_path / "tiny", minilm_path))
    torch.manual_seed(0)
    CrossEncoder(tiny, num_labels=1, max_length=32).save(str(tmp_path / "teacher"))
    save_student(st_dse.build_student(tiny, hidden_dim=8), tmp_path / "student", get_task("mrpc"), None, {})
    argv = ["--student", str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"), "--task", "mrpc"]
    argv += ["--data-dir", str(data_dir), "--output-dir", str(tmp_path / "out"), "--documents", "5", "--queries", "3"]
    results = rerank_speed.main([*argv, "--repeats", "1"])

    assert json.loads((tmp_path / "out" / "rerank_speed.json").read_text()) == json.loads(json.dumps(results))
    assert list(results["timing"]) == [
        "teacher CrossEncoder.rank",
        "DSEReranker.rank (torch)",
        "onnx float32",
        "onnx int8",
    ]
    for times in results["timing"].values():
        assert sorted(times) == sorted(rerank_speed.SITUATIONS) and all(t > 0 for t in times.values())
    assert results["data"] == {"task": "mrpc", "documents": 5, "queries": 3, "dev_pairs": 408}
    accuracy = results["accuracy"]
    assert accuracy["onnx float32"]["max_abs_logit_difference_vs_torch"] < 1e-3
    assert set(accuracy["onnx int8"]) == {"accuracy", "f1", "main", "max_abs_logit_difference_vs_torch"}
    assert results["encoder_onnx_bytes"]["onnx int8"] < results["encoder_onnx_bytes"]["onnx float32"]


def test_refuses_too_few_texts(tmp_path, data_dir):
    argv = ["--student", "s", "--teacher", "t", "--data-dir", str(data_dir), "--output-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="mrpc dev has 403 distinct documents: pass --documents 403"):
        rerank_speed.main([*argv, "--documents", "100000"])
    with pytest.raises(SystemExit, match="distinct queries: pass --queries"):
        rerank_speed.main([*argv, "--queries", "100000"])
