"""The DSE student: a SentenceTransformer with a PairHead. Build it, reach its head, load a saved one."""

from __future__ import annotations

import logging
import os
import pickle
import re

from sentence_transformers import SentenceTransformer
from torch import nn

from st_dse.hub import DEFAULT_MODEL, hub_kwargs, resolve_model_name
from st_dse.integrity import atomic_save_dir, recover_interrupted_save
from st_dse.model_folder import OWN_MODULE_TYPES, check_model_folder, code_refusal, pickle_files
from st_dse.modules.pair_head import HeadType, PairHead, ProblemType, check_head_arguments
from st_dse.modules.top_layers import TopLayersConcat

logger = logging.getLogger(__name__)


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
            "This model has no PairHead, so it cannot score pairs. A saved student loaded with "
            "SentenceTransformer(path) is its encoder only: load it with st_dse.load_student(path) to get its head. "
            "To make a student, use st_dse.build_student(...) (or st_dse.add_pair_head(model, num_labels=...)) and "
            "train it with st_dse.DSELoss."
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
    # Refuse impossible head settings before the encoder is loaded.
    head_settings = {key: head_kwargs[key] for key in ("rank", "dropout") if key in head_kwargs}
    check_head_arguments(
        head_kwargs.get("in_features"), num_labels, head_type, hidden_dim, problem_type, **head_settings
    )
    model = DSEStudent(resolve_model_name(model_name_or_path), device=device)
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


PAIR_HEAD_FOLDER = "pair_head"


class DSEStudent(SentenceTransformer):
    """A SentenceTransformer that keeps its :class:`PairHead` beside its modules: the saved form of a DSE student.

    In memory the head is the model's last module (``encode()`` passes through it unchanged, and the trainer and
    :class:`~st_dse.DSELoss` find it there). On :meth:`save` the folder's ``modules.json`` lists only the encoder's
    modules and the head goes to the ``pair_head/`` subfolder (config, safetensors weights and their checksums), so
    ``SentenceTransformer(path)``, MTEB and embedding servers load the encoder without any flag, and this class (or
    :func:`load_student`) loads the encoder and the head. Loading never runs code from the folder: st_dse's own
    module types resolve to its installed classes, any other class the folder names (in ``modules.json``, a Router's
    config, a Dense activation, a transformers ``auto_map`` that cannot be ignored) or a pickle is refused with an
    error naming it (see :func:`check_model_folder`), and ``trust_remote_code`` is refused.
    """

    def __init__(self, model_name_or_path: str | None = None, *args, **kwargs) -> None:
        if kwargs.get("trust_remote_code"):
            raise ValueError(
                "st_dse loads students without running code from the model folder; trust_remote_code=True is "
                "refused. Inspect the folder and load it with SentenceTransformer(path, trust_remote_code=True) if "
                "you trust it."
            )
        self._module_classes = {**OWN_MODULE_TYPES, **self._module_classes}
        if model_name_or_path is not None and os.path.isdir(os.path.dirname(os.path.abspath(model_name_or_path))):
            recover_interrupted_save(model_name_or_path)  # a save over this folder killed between its two renames
        if model_name_or_path is not None:
            check_model_folder(model_name_or_path, **hub_kwargs(kwargs))
        self._head_source = (model_name_or_path, hub_kwargs(kwargs))
        try:
            super().__init__(model_name_or_path, *args, **kwargs)
        except ValueError as error:
            # sentence-transformers and transformers refuse code the folder asks for (a class outside
            # sentence-transformers, an auto_map the installed transformers cannot replace): say what it was.
            if "trust_remote_code" not in str(error):
                raise
            raise ValueError(code_refusal(model_name_or_path, error)) from None
        except pickle.UnpicklingError as error:  # torch.load(weights_only=True) met a pickle that would run code
            raise ValueError(
                f"{model_name_or_path!r} holds pickled weights that torch refuses to load safely (unpickling them "
                f"could run code): {', '.join(pickle_files(model_name_or_path)) or 'a .bin/.pt file'} "
                f"({str(error).splitlines()[0]}). st_dse never runs code from a model folder. If you trust the "
                "files, convert them to safetensors where you can afford to run them (torch.load(file, "
                "weights_only=False), then safetensors.torch.save_file), or get the model's safetensors version."
            ) from None

    def _post_init(self) -> None:
        name_or_path, download_options = self._head_source
        if name_or_path is not None and not _has_pair_head(self):
            head = PairHead.load_beside(name_or_path, PAIR_HEAD_FOLDER, **download_options)
            if head is not None:
                self.append(head.to(self.device))
        super()._post_init()

    def save(self, path: str, *args, **kwargs) -> None:
        """Save the encoder as a standard sentence-transformers folder and the head in its ``pair_head/`` subfolder.

        Saving over an existing model folder is all or nothing: the new folder is written beside it and swapped in
        whole, so a run killed at any moment leaves the old model or the new one.
        """
        if os.path.isfile(os.path.join(path, "modules.json")):
            atomic_save_dir(path, lambda folder: self._save_into(str(folder), *args, **kwargs))
        else:
            self._save_into(path, *args, **kwargs)

    def _save_into(self, path: str, *args, **kwargs) -> None:
        head_name = next((name for name, module in self._modules.items() if isinstance(module, PairHead)), None)
        if head_name is None:
            super().save(path, *args, **kwargs)
            return
        head = self._modules.pop(head_name)
        try:
            super().save(path, *args, **kwargs)
        finally:
            self._modules[head_name] = head
        head.save(os.path.join(path, PAIR_HEAD_FOLDER))

    def save_pretrained(self, path: str, *args, **kwargs) -> None:
        self.save(path, *args, **kwargs)


def _has_pair_head(model: nn.Module) -> bool:
    return any(isinstance(module, PairHead) for module in model.modules())


def load_student(model_name_or_path: str, **kwargs) -> DSEStudent:
    """Load a saved DSE student, PairHead included, without running any code from its folder.

    Args:
        model_name_or_path: A folder written by ``student.save(...)`` (or a recipe), or a Hub id.
        **kwargs: Passed to :class:`~sentence_transformers.SentenceTransformer` (``device``, ``revision``, ...).

    Raises:
        ValueError: the folder holds no PairHead, or asks for code from outside sentence-transformers and st_dse.
    """
    model = load_model(model_name_or_path, **kwargs)
    if not _has_pair_head(model):
        raise ValueError(
            f"{model_name_or_path!r} holds a sentence encoder but no PairHead (no {PAIR_HEAD_FOLDER}/ folder): it "
            "cannot score pairs. Load it with SentenceTransformer(path) for embeddings, or distil a student with "
            "recipes/distill.py."
        )
    return model


def load_model(model_name_or_path: str = DEFAULT_MODEL, **kwargs) -> DSEStudent:
    """Load any sentence encoder for embedding work: a DSE student (its head included) or a plain model.

    The default model name resolves to its packaged copy when the Hub is unreachable (see
    :func:`st_dse.hub.resolve_model_name`). Evaluation scripts use this so one ``--model`` option takes both.
    """
    return DSEStudent(resolve_model_name(model_name_or_path), **kwargs)


# -- loading without running code from the folder -------------------------------------------------------------------
