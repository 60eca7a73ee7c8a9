"""Export a DSE student to ONNX as two graphs, the sentence encoder and the pair head, and run them with onnxruntime.

Two graphs keep DSE's point: candidates are encoded once, a query costs one encoder run plus the head.
Needs ``pip install "st_dse[onnx]"``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from st_dse.data import check_pairs
from st_dse.inference.scoring import encode_unique
from st_dse.integrity import VerifyMode, atomic_save_dir, recover_interrupted_save, verify_manifest
from st_dse.student import get_pair_head

__all__ = ["ENCODER_NAME", "ONNX_CONFIG_NAME", "PAIR_HEAD_NAME", "OnnxStudent", "export_onnx"]

ENCODER_NAME = "encoder.onnx"
PAIR_HEAD_NAME = "pair_head.onnx"
ONNX_CONFIG_NAME = "onnx_config.json"
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EMBEDDING_OUTPUT = "sentence_embedding"
HEAD_INPUTS = ("embeddings1", "embeddings2")
HEAD_OUTPUT = "logits"
REEXPORT = "Export the student again with st_dse.inference.export.export_onnx(model, path)."


class _Encoder(nn.Module):
    def __init__(self, modules: list[nn.Module], input_names: Sequence[str]) -> None:
        super().__init__()
        self.encoder_modules = nn.ModuleList(modules)
        self.input_names = list(input_names)

    def forward(self, *tensors: Tensor) -> Tensor:
        features: dict[str, Any] = {**dict(zip(self.input_names, tensors)), "modality": "text"}
        for module in self.encoder_modules:
            features = module(features)
        return features[EMBEDDING_OUTPUT]


class _Head(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, embeddings1: Tensor, embeddings2: Tensor) -> Tensor:
        return self.head.score(embeddings1, embeddings2)


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, input_names, output_name, axes, opset) -> None:
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated (dynamo needs onnxscript) but exports these graphs exactly.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            input_names=list(input_names),
            output_names=[output_name],
            dynamic_axes={**axes, output_name: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )


def _quantize(float_path: Path, path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The graph's shapes are dynamic (batch, sequence): onnx's own shape inference is enough for the pre-processing.
    quant_pre_process(float_path, float_path, skip_symbolic_shape=True)
    # Per-channel scales keep embeddings at a cosine of about 0.99 to float32's (per-tensor: 0.97), at the same speed.
    quantize_dynamic(float_path, path, per_channel=True, weight_type=QuantType.QInt8)
    float_path.unlink()


def export_onnx(
    model: SentenceTransformer, output_dir: str | os.PathLike, opset: int = 17, quantize: bool = False
) -> Path:
    """Write ``encoder.onnx`` (token ids -> ``sentence_embedding``), ``pair_head.onnx`` (``embeddings1``,
    ``embeddings2`` -> ``logits``), the tokenizer and ``onnx_config.json`` into ``output_dir``; return the folder.

    Exporting over an earlier export is all or nothing (a run killed at any moment leaves the old export or the new
    one), and the folder's ``checksums.json`` lets :class:`OnnxStudent` refuse a graph from another export.
    Prompts are not applied by the graphs: prepend them to the text.

    Args:
        model: A student with a PairHead.
        output_dir: The folder to write.
        opset: The ONNX opset version.
        quantize: Store the encoder's weights as int8 (onnxruntime's dynamic quantisation: activations are quantised
            per batch at run time). The encoder runs faster on CPUs with int8 instructions and its embeddings move
            slightly; the pair head stays float32. Measure the cost on your task before serving it.
    """
    head = get_pair_head(model)
    modules = [module for module in model if module is not head]
    if getattr(model, "default_prompt_name", None):
        warnings.warn(
            f"The model encodes with the default prompt {model.default_prompt_name!r}; the exported encoder "
            "does not add it: prepend it to the text you encode with OnnxStudent.",
            stacklevel=2,
        )

    def write(folder: Path) -> None:
        features = model.preprocess(["A short one.", "A somewhat longer sentence, to have padding in the batch."])
        input_names = [name for name in TOKEN_INPUTS if name in features]
        encoder = _Encoder(modules, input_names).eval()
        token_args = tuple(features[name].to(model.device) for name in input_names)
        with torch.no_grad():
            embeddings = encoder(*token_args)
        token_axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
        encoder_path = folder / (f"float-{ENCODER_NAME}" if quantize else ENCODER_NAME)
        _export(encoder, token_args, encoder_path, input_names, EMBEDDING_OUTPUT, token_axes, opset)
        if quantize:
            _quantize(encoder_path, folder / ENCODER_NAME)
        head_axes = {name: {0: "batch"} for name in HEAD_INPUTS}
        head_args = (embeddings, embeddings.flip(0))
        _export(_Head(head).eval(), head_args, folder / PAIR_HEAD_NAME, HEAD_INPUTS, HEAD_OUTPUT, head_axes, opset)
        model.tokenizer.save_pretrained(str(folder))
        config = {
            "opset": opset,
            "max_seq_length": model.max_seq_length,
            "embedding_dimension": head.in_features,
            "normalized": any(type(module).__name__ == "Normalize" for module in modules),
            "quantized": quantize,
            "encoder": {"file": ENCODER_NAME, "inputs": input_names, "output": EMBEDDING_OUTPUT},
            "pair_head": {"file": PAIR_HEAD_NAME, "inputs": list(HEAD_INPUTS), "output": HEAD_OUTPUT},
            "head": {key: getattr(head, key) for key in head.config_keys},
        }
        (folder / ONNX_CONFIG_NAME).write_text(json.dumps(config, indent=2))

    was_training = model.training
    model.eval()
    try:
        return atomic_save_dir(output_dir, write, kind="onnx")
    finally:
        model.train(was_training)


class OnnxStudent:
    """Run a folder written by :func:`export_onnx` with onnxruntime and the saved tokenizer.

    Args:
        output_dir: The exported folder.
        providers: onnxruntime execution providers; None takes every available local one.
        session_options: ``onnxruntime.SessionOptions`` for both sessions (e.g. ``intra_op_num_threads``).
        verify: Check every file against the folder's ``checksums.json``: ``"full"`` (sizes and SHA-256), ``"size"``
            or ``"none"``. A missing, damaged or mismatched file (say, an ``encoder.onnx`` of another export)
            raises a :class:`~st_dse.integrity.CorruptFileError` naming it.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        providers: Sequence[Any] | None = None,
        session_options: Any = None,
        verify: VerifyMode = "full",
    ) -> None:
        import onnxruntime
        from transformers import AutoTokenizer

        self.output_dir = Path(output_dir)
        recover_interrupted_save(self.output_dir)  # an export over it may have been killed mid-swap
        verify_manifest(self.output_dir, verify=verify, remedy=REEXPORT)
        self.config = json.loads((self.output_dir / ONNX_CONFIG_NAME).read_text())
        if providers is None:
            # Every local provider; the Azure one calls a remote endpoint and computes nothing here.
            providers = [p for p in onnxruntime.get_available_providers() if p != "AzureExecutionProvider"]
        self.encoder_session, self.head_session = (
            onnxruntime.InferenceSession(
                str(self.output_dir / self.config[name]["file"]), sess_options=session_options, providers=providers
            )
            for name in ("encoder", "pair_head")
        )
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.output_dir))
        self.max_seq_length = self.config["max_seq_length"]
        self.input_names = self.config["encoder"]["inputs"]
        self.num_labels = self.config["head"]["num_labels"]

    def encode(self, sentences: str | Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings ``(n, dim)`` float32 (``(dim,)`` for one string), as ``model.encode()`` gives them."""
        if isinstance(sentences, str):
            return self.encode([sentences], batch_size=batch_size)[0]
        sentences = list(sentences)
        embeddings = np.empty((len(sentences), self.config["embedding_dimension"]), dtype=np.float32)
        # Longest first, as sentence-transformers does: less padding.
        order = np.argsort([-len(sentence) for sentence in sentences], kind="stable")
        for start in range(0, len(sentences), batch_size):
            rows = order[start : start + batch_size]
            tokens = self.tokenizer(
                [sentences[row] for row in rows],
                padding=True,
                truncation="longest_first",
                max_length=self.max_seq_length,
                return_tensors="np",
            )
            feed = {name: tokens[name].astype(np.int64) for name in self.input_names}
            embeddings[rows] = self.encoder_session.run(None, feed)[0]
        return embeddings

    def score_embeddings(
        self, embeddings1: np.ndarray, embeddings2: np.ndarray, batch_size: int = 16384
    ) -> np.ndarray:
        """Head logits of embedding pairs, ``(n,)`` or ``(n, k)``; a single embedding on one side meets every row."""
        first = np.atleast_2d(np.asarray(embeddings1, dtype=np.float32))
        second = np.atleast_2d(np.asarray(embeddings2, dtype=np.float32))
        rows = max(len(first), len(second))
        first, second = (np.broadcast_to(side, (rows, side.shape[1])) for side in (first, second))
        logits = np.empty((rows, self.num_labels), dtype=np.float32)
        names = self.config["pair_head"]["inputs"]
        for start in range(0, rows, batch_size):
            pair = (np.ascontiguousarray(side[start : start + batch_size]) for side in (first, second))
            logits[start : start + batch_size] = self.head_session.run(None, dict(zip(names, pair)))[0]
        return logits[:, 0] if self.num_labels == 1 else logits

    def score_pairs(self, sentences1: Sequence[str], sentences2: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Logits of row-aligned sentence pairs, shaped as :func:`st_dse.score_pairs` returns them."""
        sentences1, sentences2 = list(sentences1), list(sentences2)
        check_pairs(sentences1, sentences2)
        embeddings, rows = encode_unique(lambda texts: self.encode(texts, batch_size), sentences1 + sentences2)
        return self.score_embeddings(embeddings[rows[: len(sentences1)]], embeddings[rows[len(sentences1) :]])
