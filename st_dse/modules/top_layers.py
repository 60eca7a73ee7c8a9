"""TopLayersConcat: the original DSE sentence embedding, the mean over the concatenated last layers."""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.base.modules import Module
from torch import Tensor


class TopLayersConcat(Module):
    """Replaces the token embeddings with the concatenation of the encoder's last ``num_layers`` layers: before a mean
    Pooling, the original DSE embedding (set up by :func:`build_student` with ``pooling_layers=k``).

    Args:
        num_layers: How many of the last layers to concatenate.
        embedding_dimension: Width of the concatenated token embeddings (``num_layers`` x the encoder's width).
    """

    config_keys = ["num_layers", "embedding_dimension"]

    def __init__(self, num_layers: int = 4, embedding_dimension: int | None = None) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        self.num_layers, self.embedding_dimension = num_layers, embedding_dimension

    def forward(self, features: dict[str, Tensor | Any], **kwargs) -> dict[str, Tensor | Any]:
        layers = features.get("all_layer_embeddings")
        if layers is None:
            raise ValueError(
                "TopLayersConcat needs the hidden states of every layer, but the Transformer returned none. Set "
                "model[0].auto_model.config.output_hidden_states = True, or build the student with "
                "st_dse.build_student(..., pooling_layers=k)."
            )
        features["token_embeddings"] = torch.cat(list(layers[-self.num_layers :]), dim=-1)
        return features

    def get_embedding_dimension(self) -> int | None:
        return self.embedding_dimension

    def save(self, output_path: str, *args, **kwargs) -> None:
        self.save_config(output_path)
