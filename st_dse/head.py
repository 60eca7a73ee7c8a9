"""The DSE pair head: a sentence-transformers module that turns two sentence embeddings into task logits.

The head is the last module of a :class:`~sentence_transformers.SentenceTransformer`. It passes features through
untouched, so ``model.encode()`` returns the same embeddings with or without it, and it is saved inside the model
folder (config + safetensors) so that ``SentenceTransformer(path)`` brings it back. The loss only borrows it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Literal

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

import torch
from safetensors.torch import load_model as load_safetensors_model
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Module
from torch import Tensor, nn

from st_dse.models import DEFAULT_MODEL, resolve_model_name

logger = logging.getLogger(__name__)

HeadType = Literal["concat", "factorized"]
ProblemType = Literal["binary", "multiclass", "regression"]

HEAD_TYPES = ("concat", "factorized")
PROBLEM_TYPES = ("binary", "multiclass", "regression")
# Version of the saved head format. Bump it when the saved config or weights change meaning, and keep loading old ones.
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The Hub download options among a loader's keyword arguments."""
    return {key: kwargs[key] for key in ("token", "cache_folder", "revision", "local_files_only") if key in kwargs}


class PairHead(Module):
    """Maps a pair of sentence embeddings ``(u, v)`` to ``num_labels`` logits.

    Two head types:

    - ``"concat"`` (the DSE paper's): ``[u, v, u*v, |u-v|] -> Linear(hidden_dim) -> ReLU -> Linear(num_labels)``.
      Most accurate, but every (query, candidate) pair runs the MLP.
    - ``"factorized"``: each side goes through its own MLP to a vector per label, and the logit is their inner
      product plus a per-side bias: ``logit_k = <q_k(u), c_k(v)> + b_k(u) + b'_k(v) + bias_k``. Candidate sides can be
      precomputed, and scoring becomes a maximum-inner-product search (see :meth:`query_vectors` and
      :meth:`candidate_vectors`).

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
        format_version: Version of the saved format; set by loading, leave it alone.
    """

    config_keys: list[str] = [
        "in_features",
        "num_labels",
        "head_type",
        "hidden_dim",
        "problem_type",
        "rank",
        "dropout",
        "label_names",
        "format_version",
    ]

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
        format_version: int = FORMAT_VERSION,
    ) -> None:
        super().__init__()
        if format_version > FORMAT_VERSION:
            raise ValueError(
                f"This PairHead was saved in format version {format_version}, newer than the {FORMAT_VERSION} this "
                "st_dse understands. Upgrade st_dse (`pip install -U st_dse`) to load it."
            )
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {head_type!r}.")
        if problem_type is None:
            problem_type = "multiclass" if num_labels > 1 else "binary"
        if problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}.")
        if num_labels < 1 or (problem_type == "multiclass") != (num_labels > 1):
            raise ValueError(
                f"num_labels={num_labels} does not fit problem_type={problem_type!r}: use num_labels=1 for binary "
                "tasks and regression (one logit), and num_labels=k >= 2 for k-way classification."
            )
        if label_names is not None and problem_type != "regression":
            expected = 2 if problem_type == "binary" else num_labels
            if len(label_names) != expected:
                raise ValueError(f"Expected {expected} label_names for a {problem_type} head, got {label_names}.")
        self.in_features = in_features
        self.num_labels = num_labels
        self.head_type = head_type
        self.hidden_dim = hidden_dim
        self.problem_type = problem_type
        self.rank = rank if rank is not None else max(1, hidden_dim // 4)
        self.dropout = dropout
        self.label_names = list(label_names) if label_names is not None else None
        self.format_version = FORMAT_VERSION

        if head_type == "concat":
            self.classifier = nn.Sequential(
                nn.Linear(4 * in_features, hidden_dim),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, num_labels),
            )
        else:
            # Each side outputs, per label, `rank` vector components and one bias term.
            side_out = num_labels * (self.rank + 1)
            self.query_projection = self._side_mlp(in_features, hidden_dim, side_out, dropout)
            self.candidate_projection = self._side_mlp(in_features, hidden_dim, side_out, dropout)
            self.bias = nn.Parameter(torch.zeros(num_labels))

    @staticmethod
    def _side_mlp(in_features: int, hidden_dim: int, out_features: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(in_features, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_features)
        )

    def forward(self, features: dict[str, Tensor | Any], **kwargs) -> dict[str, Tensor | Any]:
        # The head scores pairs, not single sentences: encode() must return the embedding it was given.
        return features

    # -- scoring -------------------------------------------------------------------------------------------------

    def _check_embeddings(self, *embeddings: Tensor) -> None:
        for embedding in embeddings:
            if embedding.shape[-1] != self.in_features:
                raise ValueError(
                    f"The PairHead expects embeddings of dimension {self.in_features}, got {embedding.shape[-1]}. "
                    "Were the embeddings made by another model?"
                )

    def score(self, embeddings1: Tensor, embeddings2: Tensor) -> Tensor:
        """Logits ``(batch, num_labels)`` for row-aligned embedding pairs, each ``(batch, in_features)``."""
        self._check_embeddings(embeddings1, embeddings2)
        if embeddings1.shape != embeddings2.shape:
            raise ValueError(
                f"Embedding pairs must have the same shape, got {embeddings1.shape} and {embeddings2.shape}."
            )
        dtype = self._parameter_dtype()
        u, v = embeddings1.to(dtype), embeddings2.to(dtype)
        if self.head_type == "concat":
            return self.classifier(torch.cat([u, v, u * v, torch.abs(u - v)], dim=-1))
        return (self.query_vectors(u) * self.candidate_vectors(v)).sum(-1)

    def score_all(self, query_embeddings: Tensor, candidate_embeddings: Tensor) -> Tensor:
        """Logits of every query against every candidate: shape ``(num_queries, num_candidates, num_labels)``.

        Vectorised over candidates. The concat head's first layer is split into its four blocks so that the
        ``u`` and ``v`` terms are computed once per query and once per candidate instead of once per pair.
        """
        self._check_embeddings(query_embeddings, candidate_embeddings)
        dtype = self._parameter_dtype()
        queries, candidates = query_embeddings.to(dtype), candidate_embeddings.to(dtype)
        if self.head_type == "factorized":
            return torch.einsum("qkr,nkr->qnk", self.query_vectors(queries), self.candidate_vectors(candidates))
        first, _, dropout, second = self.classifier
        w_u, w_v, w_mul, w_diff = first.weight.split(self.in_features, dim=1)
        query_part = queries @ w_u.T + first.bias  # (Q, H)
        candidate_part = candidates @ w_v.T  # (N, H)
        hidden = query_part[:, None, :] + candidate_part[None, :, :]
        hidden = hidden + torch.einsum("qd,nd,hd->qnh", queries, candidates, w_mul)
        hidden = hidden + torch.abs(queries[:, None, :] - candidates[None, :, :]) @ w_diff.T
        return second(dropout(torch.relu(hidden)))

    def query_vectors(self, embeddings: Tensor) -> Tensor:
        """Factorized head only: query-side vectors ``(batch, num_labels, rank + 2)``.

        Their inner product with :meth:`candidate_vectors` is exactly the logit, bias included, so a
        maximum-inner-product index over candidate vectors ranks candidates by logit.
        """
        projected = self._side("query_projection", embeddings)
        vector, side_bias = projected[..., :-1], projected[..., -1:]
        ones = torch.ones_like(side_bias)
        return torch.cat([vector, ones, side_bias + self.bias[:, None]], dim=-1)

    def candidate_vectors(self, embeddings: Tensor) -> Tensor:
        """Factorized head only: candidate-side vectors ``(batch, num_labels, rank + 2)``; see query_vectors."""
        projected = self._side("candidate_projection", embeddings)
        vector, side_bias = projected[..., :-1], projected[..., -1:]
        return torch.cat([vector, side_bias, torch.ones_like(side_bias)], dim=-1)

    def _side(self, projection_name: str, embeddings: Tensor) -> Tensor:
        if self.head_type != "factorized":
            raise ValueError("query_vectors/candidate_vectors exist only for head_type='factorized'.")
        self._check_embeddings(embeddings)
        out = getattr(self, projection_name)(embeddings.to(self._parameter_dtype()))
        return out.view(*embeddings.shape[:-1], self.num_labels, self.rank + 1)

    def _parameter_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # -- saving and loading -------------------------------------------------------------------------------------

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
        # Always safetensors: a pickled head is code execution on load and breaks across versions.
        self.save_torch_weights(output_path, safe_serialization=True)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs) -> Self:
        hub_kwargs = _hub_kwargs(kwargs)
        where = os.path.join(model_name_or_path, subfolder)
        config_path = cls.load_file_path(model_name_or_path, cls.config_file_name, subfolder=subfolder, **hub_kwargs)
        if config_path is None:
            raise FileNotFoundError(
                f"The PairHead config {os.path.join(where, cls.config_file_name)!r} is missing: the model folder is "
                "incomplete. Save the model again with model.save(path), or copy the whole folder."
            )
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        unknown = set(config) - set(cls.config_keys)
        if unknown:
            logger.warning("Ignoring unknown PairHead config keys %s in %s", sorted(unknown), config_path)
            config = {key: value for key, value in config.items() if key in cls.config_keys}
        head = cls(**config)
        weights_path = cls.load_file_path(model_name_or_path, WEIGHTS_NAME, subfolder=subfolder, **hub_kwargs)
        if weights_path is None:
            raise FileNotFoundError(
                f"The PairHead weights {os.path.join(where, WEIGHTS_NAME)!r} are missing: the model folder is "
                "incomplete. Save the model again with model.save(path), or copy the whole folder."
            )
        try:
            missing, unexpected = load_safetensors_model(head, weights_path, strict=False)
        except Exception as error:  # shape mismatch, truncated or corrupted file
            raise ValueError(
                f"The PairHead weights in {weights_path!r} do not match its config {config_path!r} ({config}): "
                f"{error}. The folder mixes files from different models; save the model again."
            ) from error
        if missing or unexpected:
            raise ValueError(
                f"The PairHead weights in {weights_path!r} do not match its config {config_path!r}: missing "
                f"{sorted(missing)}, unexpected {sorted(unexpected)}. The folder mixes files from different models."
            )
        return head


class TopLayersConcat(Module):
    """Replaces the token embeddings with the concatenation of the encoder's last ``num_layers`` layers.

    Placed between the Transformer and a mean Pooling module it gives the original DSE sentence embedding: the mean
    over tokens of the concatenated top layers (4 in the paper), ``num_layers`` times the encoder's width. It has no
    weights. The Transformer must return its hidden states (``config.output_hidden_states = True``, saved with the
    model); :func:`build_student` with ``pooling_layers=k`` sets this up.

    Args:
        num_layers: How many of the last layers to concatenate.
        embedding_dimension: Width of the concatenated token embeddings (``num_layers`` x the encoder's width).
    """

    config_keys: list[str] = ["num_layers", "embedding_dimension"]

    def __init__(self, num_layers: int = 4, embedding_dimension: int | None = None) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        self.num_layers = num_layers
        self.embedding_dimension = embedding_dimension

    def forward(self, features: dict[str, Tensor | Any], **kwargs) -> dict[str, Tensor | Any]:
        layers = features.get("all_layer_embeddings")
        if layers is None:
            raise ValueError(
                "TopLayersConcat needs the hidden states of every layer, but the Transformer returned none. Set "
                "model[0].auto_model.config.output_hidden_states = True, or build the student with "
                "st_dse.build_student(..., pooling_layers=k)."
            )
        # hidden_states holds the embedding layer's output first, then one entry per transformer layer.
        if len(layers) - 1 < self.num_layers:
            raise ValueError(
                f"TopLayersConcat asks for the last {self.num_layers} layers, but the encoder has {len(layers) - 1}."
            )
        features["token_embeddings"] = torch.cat(list(layers[-self.num_layers :]), dim=-1)
        return features

    def get_embedding_dimension(self) -> int | None:
        return self.embedding_dimension

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs) -> Self:
        hub_kwargs = _hub_kwargs(kwargs)
        return cls(**cls.load_config(model_name_or_path, subfolder=subfolder, **hub_kwargs))


def use_top_layers_pooling(model: SentenceTransformer, num_layers: int = 4) -> None:
    """Switch a Transformer + Pooling model to mean pooling over its concatenated last ``num_layers`` layers.

    The original DSE embedding. The Pooling module is rebuilt for the wider token embeddings (its mode is kept) and
    the Transformer is told to return every layer's hidden states, a setting saved in its ``config.json``.
    """
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    concat = TopLayersConcat(num_layers)  # checks num_layers before the model is touched
    modules = list(model._modules.values())
    transformer = next((m for m in modules if isinstance(m, Transformer)), None)
    pooling_index = next((i for i, m in enumerate(modules) if isinstance(m, Pooling)), None)
    if transformer is None or pooling_index is None or any(isinstance(m, TopLayersConcat) for m in modules):
        raise ValueError(
            "Top-layers pooling needs a model made of a Transformer followed by a Pooling module (and no "
            f"TopLayersConcat yet); this one has {[type(m).__name__ for m in modules]}."
        )
    num_hidden_layers = getattr(transformer.auto_model.config, "num_hidden_layers", None)
    if num_hidden_layers is not None and num_layers > num_hidden_layers:
        raise ValueError(f"pooling_layers={num_layers}, but the encoder has only {num_hidden_layers} layers.")
    transformer.auto_model.config.output_hidden_states = True
    old = modules[pooling_index]
    width = num_layers * transformer.get_embedding_dimension()
    pooling = Pooling(width, pooling_mode=old.pooling_mode, include_prompt=old.include_prompt)
    concat.embedding_dimension = width
    modules[pooling_index : pooling_index + 1] = [concat, pooling]
    for name in list(model._modules):
        del model._modules[name]
    for index, module in enumerate(modules):
        model.add_module(str(index), module)


def get_pair_head(model: nn.Module) -> PairHead:
    """Return the :class:`PairHead` of a student model, with a clear error when there is none."""
    heads = [module for module in model.modules() if isinstance(module, PairHead)]
    if not heads:
        raise ValueError(
            "This model has no PairHead, so it cannot score pairs. Build a student with "
            "st_dse.build_student(...) or add one with st_dse.add_pair_head(model, num_labels=...), train it with "
            "st_dse.DSELoss, and load the saved folder with SentenceTransformer(path)."
        )
    if len(heads) > 1:
        raise ValueError(f"The model has {len(heads)} PairHeads; st_dse expects exactly one.")
    return heads[0]


def add_pair_head(model: SentenceTransformer, num_labels: int = 1, **head_kwargs) -> PairHead:
    """Append a new :class:`PairHead` to ``model`` (in place) and return it.

    Keyword arguments go to :class:`PairHead`; ``in_features`` defaults to the model's embedding dimension.
    """
    if any(isinstance(module, PairHead) for module in model.modules()):
        raise ValueError("The model already has a PairHead; use st_dse.get_pair_head(model) to reach it.")
    in_features = head_kwargs.pop("in_features", None) or model.get_embedding_dimension()
    if in_features is None:
        raise ValueError("Cannot infer the embedding dimension of the model; pass in_features=...")
    head = PairHead(in_features, num_labels=num_labels, **head_kwargs).to(model.device)
    model.append(head)
    return head


def build_student(
    model_name_or_path: str = DEFAULT_MODEL,
    num_labels: int = 1,
    problem_type: ProblemType | None = None,
    head_type: HeadType = "concat",
    hidden_dim: int = 512,
    keep_normalize: bool = False,
    pooling_layers: int | None = None,
    device: str | None = None,
    **head_kwargs,
) -> SentenceTransformer:
    """Load a sentence encoder and append a fresh :class:`PairHead`: the DSE student, ready for :class:`DSELoss`.

    Args:
        model_name_or_path: The student's encoder. The default resolves to a packaged copy when offline.
        num_labels, problem_type, head_type, hidden_dim: See :class:`PairHead`.
        keep_normalize: Keep a trailing ``Normalize`` module. By default it is dropped so that the head sees
            unnormalised embeddings, which trains better; cosine similarity of ``encode()`` output is unaffected.
        pooling_layers: Mean-pool the concatenation of the encoder's last ``pooling_layers`` layers, as the original
            DSE did with 4 (see :class:`TopLayersConcat`); None keeps the base model's pooling.
        device: Where to load the model; sentence-transformers picks one when None.
        **head_kwargs: More :class:`PairHead` arguments (``rank``, ``dropout``, ``label_names``).
    """
    model = SentenceTransformer(resolve_model_name(model_name_or_path), device=device)
    if not keep_normalize:
        from sentence_transformers.base.modules.normalize import Normalize

        for name, module in list(model._modules.items()):
            if isinstance(module, Normalize):
                del model._modules[name]
    if pooling_layers is not None:
        use_top_layers_pooling(model, pooling_layers)
    add_pair_head(
        model,
        num_labels=num_labels,
        problem_type=problem_type,
        head_type=head_type,
        hidden_dim=hidden_dim,
        **head_kwargs,
    )
    return model


def head_learning_rate_mapping(model: SentenceTransformer, learning_rate: float) -> dict[str, float]:
    """A ``learning_rate_mapping`` for ``SentenceTransformerTrainingArguments`` that gives the PairHead its own rate.

    A freshly initialised head needs a far larger learning rate than the pretrained encoder (1e-3 against 2e-5 to
    5e-5): with one shared rate, a student on MRPC stays at the majority-class floor.
    """
    head = get_pair_head(model)
    for name, module in model.named_modules():
        if module is head:
            # The trainer names parameters through the loss, which holds the model as `.model`.
            return {rf"^(model\.)?{re.escape(name)}\.": learning_rate}
    raise ValueError("The PairHead is not a submodule of this model.")


TRUSTED_MODULE_TYPES = frozenset(f"{cls.__module__}.{cls.__qualname__}" for cls in (PairHead, TopLayersConcat))


def load_student(model_name_or_path: str, **kwargs) -> SentenceTransformer:
    """Load a saved DSE student, PairHead included.

    sentence-transformers 6 imports a module class from outside its own package only with
    ``trust_remote_code=True``, even for an installed plugin such as st_dse. Rather than have users pass that flag for
    a whole folder, this function reads the folder's ``modules.json`` and ``config.json`` first and sets it only
    when the only foreign classes are st_dse's own (:class:`PairHead`, :class:`TopLayersConcat`) and the
    transformer config maps no custom code.
    ``SentenceTransformer(path, trust_remote_code=True)`` loads the same model.

    Args:
        model_name_or_path: A folder written by ``model.save(...)`` or a Hub id.
        **kwargs: Passed to :class:`~sentence_transformers.SentenceTransformer` (``device``, ``revision``, ...).
    """
    from sentence_transformers.util import load_file_path

    hub_kwargs = _hub_kwargs(kwargs)
    modules_path = load_file_path(model_name_or_path, "modules.json", **hub_kwargs)
    if modules_path is None:
        raise FileNotFoundError(
            f"{model_name_or_path!r} has no modules.json: it is not a saved SentenceTransformer folder. "
            "Save the student with model.save(path) and load that folder."
        )
    with open(modules_path, encoding="utf-8") as f:
        module_types = {entry["type"] for entry in json.load(f)}
    foreign = {t for t in module_types if not t.startswith("sentence_transformers.")} - TRUSTED_MODULE_TYPES
    config_path = load_file_path(model_name_or_path, "config.json", **hub_kwargs)
    custom_code = False
    if config_path is not None:
        with open(config_path, encoding="utf-8") as f:
            custom_code = "auto_map" in json.load(f)
    if foreign or custom_code:
        raise ValueError(
            f"{model_name_or_path!r} uses code from outside sentence-transformers and st_dse "
            f"({sorted(foreign) or 'a transformers auto_map'}); inspect it and load it with "
            "SentenceTransformer(path, trust_remote_code=True) if you trust it."
        )
    kwargs.pop("trust_remote_code", None)
    return SentenceTransformer(model_name_or_path, trust_remote_code=True, **kwargs)


def load_model(model_name_or_path: str = DEFAULT_MODEL, **kwargs) -> SentenceTransformer:
    """Load any sentence encoder for embedding work: a DSE student (via :func:`load_student`) or a plain model.

    The default model name resolves to its packaged copy when the Hub is unreachable (see
    :func:`st_dse.models.resolve_model_name`). Evaluation scripts use this so one ``--model`` option takes both.
    """
    name = resolve_model_name(model_name_or_path)
    modules_path = os.path.join(name, "modules.json")
    if os.path.isfile(modules_path):
        with open(modules_path, encoding="utf-8") as f:
            if any(entry["type"] in TRUSTED_MODULE_TYPES for entry in json.load(f)):
                return load_student(name, **kwargs)
    return SentenceTransformer(name, **kwargs)
