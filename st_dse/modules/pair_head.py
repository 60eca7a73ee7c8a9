"""PairHead: a sentence-transformers module that turns two sentence embeddings into task logits."""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as load_safetensors_model
from sentence_transformers.base.modules import Module
from torch import Tensor, nn

from st_dse.hub import hub_kwargs
from st_dse.integrity import verify_manifest, write_manifest

HeadType = Literal["concat", "factorized"]
ProblemType = Literal["binary", "multiclass", "regression"]
Output = Literal["logits", "probabilities", "labels"]
WEIGHTS_NAME = "model.safetensors"
RESAVE = "Save the model again with model.save(path), or copy the whole folder again."


class PairHead(Module):
    """Maps a pair of sentence embeddings ``(u, v)`` to ``num_labels`` logits; encode() passes through it unchanged.

    ``"concat"`` (the DSE paper's): ``[u, v, u*v, |u-v|] -> Linear(hidden_dim) -> ReLU -> Linear(num_labels)``.
    ``"factorized"``: ``logit_k = <q_k(u), c_k(v)> + b_k(u) + b'_k(v) + bias_k``, each side its own MLP, so candidate
    sides can be precomputed and scoring is a maximum-inner-product search (see :meth:`query_vectors`).

    Args:
        in_features: Dimension of the sentence embeddings the head receives.
        num_labels: Number of logits: 1 for binary tasks and regression, k for k-way classification.
        head_type: ``"concat"`` or ``"factorized"``.
        hidden_dim: Width of the hidden layer (both head types).
        problem_type: ``"binary"``, ``"multiclass"`` or ``"regression"``; decides the gold loss, probabilities and
            labels. Defaults to ``"multiclass"`` when ``num_labels > 1`` and ``"binary"`` otherwise.
        rank: Size of each side's per-label vector in the factorized head. Defaults to ``hidden_dim // 4``.
        dropout: Dropout on the head's hidden layer during training.
        label_names: Optional names of the classes, saved with the head for users of the model.
    """

    config_keys = ["in_features", "num_labels", "head_type", "hidden_dim", "problem_type", "rank", "dropout"]
    config_keys += ["label_names"]

    def __init__(
        self,
        in_features: int,
        num_labels: int = 1,
        head_type: HeadType = "concat",
        hidden_dim: int = 512,
        problem_type: ProblemType | None = None,
        rank: int | None = None,
        dropout: float = 0.0,
        label_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        many = isinstance(num_labels, numbers.Real) and num_labels > 1
        problem_type = problem_type or ("multiclass" if many else "binary")
        settings = (in_features, num_labels, head_type, hidden_dim, problem_type, rank, dropout, label_names)
        if problem := _setting_problem(*settings):
            raise ValueError(problem)
        self.in_features, self.num_labels, self.hidden_dim, self.dropout = in_features, num_labels, hidden_dim, dropout
        self.head_type, self.problem_type, self.rank = head_type, problem_type, rank or max(1, hidden_dim // 4)
        self.label_names = list(label_names) if label_names is not None else None
        if head_type == "concat":
            self.classifier = _mlp(4 * in_features, hidden_dim, num_labels, dropout)
        else:  # each side outputs, per label, `rank` vector components and one bias term
            self.query_projection = _mlp(in_features, hidden_dim, num_labels * (self.rank + 1), dropout)
            self.candidate_projection = _mlp(in_features, hidden_dim, num_labels * (self.rank + 1), dropout)
            self.bias = nn.Parameter(torch.zeros(num_labels))

    def forward(self, features: dict[str, Tensor | Any], **kwargs) -> dict[str, Tensor | Any]:
        return features

    def _inputs(self, *embeddings: Tensor, paired: bool = False, factorized: bool = False) -> list[Tensor]:
        """The embeddings in the head's dtype, once checked."""
        widths = [embedding.shape[-1] for embedding in embeddings if embedding.shape[-1] != self.in_features]
        if factorized and self.head_type != "factorized":
            raise ValueError("query_vectors/candidate_vectors exist only for head_type='factorized'.")
        if widths:
            raise ValueError(
                f"The PairHead expects embeddings of dimension {self.in_features}, got {widths[0]}. Were the "
                "embeddings made by another model?"
            )
        if paired and embeddings[0].shape != embeddings[1].shape:
            raise ValueError(f"Embedding pairs must have the same shape, got {[e.shape for e in embeddings]}.")
        return [embedding.to(next(self.parameters()).dtype) for embedding in embeddings]

    def score(self, embeddings1: Tensor, embeddings2: Tensor) -> Tensor:
        """Logits ``(batch, num_labels)`` for row-aligned embedding pairs, each ``(batch, in_features)``."""
        u, v = self._inputs(embeddings1, embeddings2, paired=True)
        if self.head_type == "concat":
            return self.classifier(torch.cat([u, v, u * v, torch.abs(u - v)], dim=-1))
        return (self._vectors(u, query=True) * self._vectors(v, query=False)).sum(-1)

    def score_all(self, query_embeddings: Tensor, candidate_embeddings: Tensor) -> Tensor:
        """Logits ``(num_queries, num_candidates, num_labels)`` of every query against every candidate, without
        dropout; the concat head computes the query terms once per query (see :func:`concat_hidden`)."""
        queries, candidates = self._inputs(query_embeddings, candidate_embeddings)
        if self.head_type == "factorized":
            return torch.einsum("qkr,nkr->qnk", self._vectors(queries, True), self._vectors(candidates, False))
        if len(queries) == 0:
            return queries.new_zeros((0, len(candidates), self.num_labels))
        return torch.stack([concat_logits(self, query, candidates) for query in queries])

    def query_vectors(self, embeddings: Tensor) -> Tensor:
        """Factorized head only: ``(batch, num_labels, rank + 2)`` vectors whose inner product with
        :meth:`candidate_vectors` is exactly the logit, bias included."""
        return self._vectors(*self._inputs(embeddings, factorized=True), query=True)

    def candidate_vectors(self, embeddings: Tensor) -> Tensor:
        """Factorized head only: candidate-side vectors ``(batch, num_labels, rank + 2)``; see query_vectors."""
        return self._vectors(*self._inputs(embeddings, factorized=True), query=False)

    def _vectors(self, embeddings: Tensor, query: bool) -> Tensor:
        projection = self.query_projection if query else self.candidate_projection
        out = projection(embeddings).view(*embeddings.shape[:-1], self.num_labels, self.rank + 1)
        vector, side_bias = out[..., :-1], out[..., -1:]
        ones = torch.ones_like(side_bias)
        return torch.cat([vector, ones, side_bias + self.bias[:, None]] if query else [vector, side_bias, ones], -1)

    def save(self, output_path: str, *args, **kwargs) -> None:
        os.makedirs(output_path, exist_ok=True)
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=True)
        write_manifest(output_path, [self.config_file_name, WEIGHTS_NAME])

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs) -> PairHead:
        """Load a head saved by :meth:`save`, checking a local folder's files against their checksums first."""
        download_options, where = hub_kwargs(kwargs), os.path.join(model_name_or_path, subfolder)
        if os.path.isdir(where):
            verify_manifest(where, files=[cls.config_file_name, WEIGHTS_NAME], remedy=RESAVE)
        config_path, weights_path = (
            cls.load_file_path(model_name_or_path, name, subfolder=subfolder, **download_options)
            or os.path.join(where, name)  # missing: opening it names the file
            for name in (cls.config_file_name, WEIGHTS_NAME)
        )
        try:
            config = json.loads(Path(config_path).read_text(encoding="utf-8"))
            with torch.device("meta"):  # the config's shapes, without allocating them
                head = cls(**config)
            expected = {name: list(value.shape) for name, value in head.state_dict().items()}
            with safe_open(weights_path, "pt") as weights:  # the saved shapes, from the file's header only
                saved = {name: weights.get_slice(name).get_shape() for name in weights.keys()}
            if saved != expected:
                raise ValueError("the config's layer sizes are not those of the saved weights")
            head = head.to_empty(device="cpu")
            load_safetensors_model(head, weights_path)  # strict: every weight, in the shapes of the config
        except (TypeError, ValueError, RuntimeError, SafetensorError) as error:
            raise ValueError(
                f"The PairHead config {config_path!r} and weights {weights_path!r} do not match or are damaged "
                f"({error}). {RESAVE}"
            ) from None
        return head


def _mlp(in_features: int, hidden_dim: int, out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_features)
    )


def _setting_problem(
    in_features, num_labels, head_type, hidden_dim, problem_type, rank, dropout, labels
) -> str | None:
    sizes = {"in_features": in_features, "num_labels": num_labels, "hidden_dim": hidden_dim}
    for name, value in {**sizes, "rank": 1 if rank is None else rank}.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return f"PairHead {name} must be an integer, got {value!r}."
        if value < 1 and name != "num_labels":  # num_labels must fit the problem type, below
            return f"PairHead {name} must be an integer >= 1, got {value!r}."
    if head_type not in get_args(HeadType):
        return f"PairHead head_type must be one of {get_args(HeadType)}, got {head_type!r}."
    if problem_type not in get_args(ProblemType):
        return f"PairHead problem_type must be one of {get_args(ProblemType)}, got {problem_type!r}."
    if num_labels < 1 or (problem_type == "multiclass") != (num_labels > 1):
        return (
            f"num_labels={num_labels} does not fit problem_type={problem_type!r}: use num_labels=1 for binary tasks "
            "and regression (one logit), and num_labels=k >= 2 for k-way classification."
        )
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        return f"PairHead dropout must be a number in [0, 1), got {dropout!r}."
    expected = 2 if problem_type == "binary" else num_labels
    if labels is not None and problem_type != "regression" and len(labels) != expected:
        return f"Expected {expected} label_names for a {problem_type} head, got {labels}."
    return None


def concat_weight_blocks(head: PairHead) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The concat head's first-layer weight cut by input block: ``(W_u, W_v, W_mul, W_diff)``, each ``(hidden, d)``."""
    return tuple(head.classifier[0].weight.split(head.in_features, dim=1))


def concat_hidden(
    head: PairHead, query: Tensor, candidates: Tensor, compute_dtype: torch.dtype | None = None
) -> Tensor:
    """Concat-head hidden pre-activations ``(n, hidden)`` of one query ``(d,)`` against candidates ``(n, d)``.

    Computed as ``v @ (W_v + W_mul * u)^T + |u - v| @ W_diff^T + (W_u u + b)``: two ``(n, d) @ (d, hidden)`` products
    per query. ``compute_dtype`` (default: the head's) is theirs; ``torch.bfloat16`` gives a fast, rounded screen.
    """
    first = head.classifier[0]
    dtype = first.weight.dtype
    w_u, w_v, w_mul, w_diff = concat_weight_blocks(head)
    query = query.to(dtype)
    query_bias = torch.addmv(first.bias, w_u, query)
    candidate_weights = (w_v + w_mul * query).T  # (d, hidden)
    compute = compute_dtype or dtype
    candidates, query = candidates.to(compute), query.to(compute)
    hidden = torch.addmm(query_bias.to(compute), candidates, candidate_weights.to(compute))
    return hidden.addmm_(torch.sub(candidates, query).abs_(), w_diff.T.to(compute))


def concat_logits(
    head: PairHead,
    query: Tensor,
    candidates: Tensor,
    label_index: int | None = None,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """Concat-head logits ``(n, num_labels)`` of one query ``(d,)`` against candidates ``(n, d)``, without dropout;
    with ``label_index``, that label's logits ``(n,)`` in float32 (see :func:`concat_hidden`)."""
    second = head.classifier[3]
    hidden = concat_hidden(head, query, candidates, compute_dtype).relu_()
    if label_index is None:
        return torch.addmm(second.bias, hidden.to(second.weight.dtype), second.weight.T)
    weights = second.weight[label_index].to(hidden.dtype)
    return torch.mv(hidden, weights).float() + second.bias[label_index].float()


def logits_to_output(logits: Tensor, problem_type: str, output: Output = "logits") -> Tensor:
    """Head logits ``(n, num_labels)`` as ``"logits"`` (``(n,)`` for one-logit heads), ``"probabilities"`` (sigmoid
    or softmax) or ``"labels"`` (class ids; binary: logit > 0)."""
    if output not in get_args(Output):
        raise ValueError(f"output must be 'logits', 'probabilities' or 'labels', got {output!r}.")
    if problem_type == "regression" and output != "logits":
        raise ValueError(f"A regression head gives scores, not {output}; use output='logits'.")
    if problem_type != "multiclass":
        logits = logits[:, 0]
    if output == "probabilities":
        return torch.softmax(logits, dim=-1) if problem_type == "multiclass" else torch.sigmoid(logits)
    if output == "labels":
        return logits.argmax(dim=-1) if problem_type == "multiclass" else (logits > 0).long()
    return logits
