"""The DSE student: a SentenceTransformer with a PairHead. Build it, reach its head, save it, load it.

Loading never runs code from the folder. sentence-transformers refuses module classes from outside its package
without ``trust_remote_code``, transformers an ``auto_map`` it cannot replace with its own classes, and torch pickles
that would run code; st_dse says where the folder asks for that code, and refuses what they let through silently: a
``Dense`` activation that is not a torch class (sentence-transformers would swap it for Tanh) and a damaged
``modules.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize, Router
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from sentence_transformers.util import import_from_string, load_file_path
from torch import nn

from st_dse.hub import DEFAULT_MODEL, hub_kwargs, resolve_model_name
from st_dse.integrity import atomic_save_dir, recover_interrupted_save
from st_dse.modules.pair_head import HeadType, PairHead, ProblemType
from st_dse.modules.top_layers import TopLayersConcat

PAIR_HEAD_FOLDER = "pair_head"
# st_dse's own module types, which modules.json may name: TopLayersConcat, and a PairHead that a plain
# SentenceTransformer saved among its modules.
OWN_TYPES = {f"{module.__module__}.{module.__name__}": module for module in (PairHead, TopLayersConcat)}
NO_HEAD = (
    "This model has no PairHead, so it cannot score pairs: a folder without a pair_head/ subfolder holds an encoder "
    "only, and SentenceTransformer(path) loads a student's encoder without its head (load a student with "
    "st_dse.load_student(path)). Make one with st_dse.build_student(...) (or st_dse.add_pair_head(model)) and "
    "st_dse.DSELoss, or distil one with recipes/distill.py."
)
TRUST_REMEDY = (
    "st_dse never runs code from a model folder. Inspect the folder, and if you trust it, load it with "
    "SentenceTransformer(path, trust_remote_code=True)."
)
REPAIR_REMEDY = "Save the model again with model.save(path), or copy modules.json again from the original folder."


def use_top_layers_pooling(model: SentenceTransformer, num_layers: int = 4) -> None:
    """Switch a Transformer + Pooling model to mean pooling over its concatenated last ``num_layers`` layers.

    The original DSE embedding. The Pooling module is rebuilt for the wider token embeddings (its mode is kept) and
    the Transformer is told to return every layer's hidden states, a setting saved in its ``config.json``.
    """
    modules = list(model)
    transformer = next((module for module in modules if isinstance(module, Transformer)), None)
    pooling_index = next((index for index, module in enumerate(modules) if isinstance(module, Pooling)), None)
    depth = getattr(transformer.auto_model.config, "num_hidden_layers", None) if transformer else None
    problem = None
    if transformer is None or pooling_index is None or any(isinstance(module, TopLayersConcat) for module in modules):
        problem = "Top-layers pooling needs a model made of a Transformer followed by a Pooling module (and no "
        problem += f"TopLayersConcat yet); this one has {[type(module).__name__ for module in modules]}."
    elif depth is not None and num_layers > depth:
        problem = f"pooling_layers={num_layers}, but the encoder has only {depth} layers."
    if problem:
        raise ValueError(problem)
    width = num_layers * transformer.get_embedding_dimension()
    concat = TopLayersConcat(num_layers, embedding_dimension=width)  # checks num_layers before the model changes
    transformer.auto_model.config.output_hidden_states = True
    old = modules[pooling_index]
    model[pooling_index] = Pooling(width, pooling_mode=old.pooling_mode, include_prompt=old.include_prompt)
    model.insert(pooling_index, concat)


def get_pair_head(model: nn.Module) -> PairHead:
    """Return the :class:`PairHead` of a student model, with a clear error when there is none."""
    heads = [module for module in model.modules() if isinstance(module, PairHead)]
    if len(heads) != 1:
        raise ValueError(f"The model has {len(heads)} PairHeads; st_dse expects exactly one." if heads else NO_HEAD)
    return heads[0]


def add_pair_head(model: SentenceTransformer, num_labels: int = 1, **head_kwargs) -> PairHead:
    """Append a new :class:`PairHead` to ``model`` (in place) and return it.

    Keyword arguments go to :class:`PairHead`; ``in_features`` defaults to the model's embedding dimension.
    """
    if any(isinstance(module, PairHead) for module in model.modules()):
        raise ValueError("The model already has a PairHead; use st_dse.get_pair_head(model) to reach it.")
    in_features = head_kwargs.pop("in_features", None) or model.get_embedding_dimension()
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
    settings = {"num_labels": num_labels, "problem_type": problem_type, "head_type": head_type, **head_kwargs}
    # Impossible head settings are refused before the encoder loads: the head is built once on the meta device,
    # which takes no memory and draws no random numbers (the real head's initialisation is unchanged).
    with torch.device("meta"):
        PairHead(**{**settings, "in_features": head_kwargs.get("in_features") or 1}, hidden_dim=hidden_dim)
    model = DSEStudent(resolve_model_name(model_name_or_path), device=device)
    if not keep_normalize:
        for index in reversed(range(len(model))):
            if isinstance(model[index], Normalize):
                del model[index]
    if pooling_layers is not None:
        use_top_layers_pooling(model, pooling_layers)
    add_pair_head(model, hidden_dim=hidden_dim, **settings)
    return model


def head_learning_rate_mapping(model: SentenceTransformer, learning_rate: float) -> dict[str, float]:
    """A ``learning_rate_mapping`` for ``SentenceTransformerTrainingArguments`` that gives the PairHead its own rate.

    A freshly initialised head needs a far larger learning rate than the pretrained encoder (1e-3 against 2e-5 to
    5e-5): with one shared rate, a student on MRPC stays at the majority-class floor.
    """
    head = get_pair_head(model)
    name = next(name for name, module in model.named_modules() if module is head)
    return {rf"^(model\.)?{re.escape(name)}\.": learning_rate}  # the trainer names parameters through the loss


class DSEStudent(SentenceTransformer):
    """A SentenceTransformer that keeps its :class:`PairHead` beside its modules: the saved form of a DSE student.

    In memory the head is the model's last module (``encode()`` passes through it unchanged, and the trainer and
    :class:`~st_dse.DSELoss` find it there). On :meth:`save` the folder's ``modules.json`` lists only the encoder's
    modules and the head goes to the ``pair_head/`` subfolder (config, safetensors weights and their checksums), so
    ``SentenceTransformer(path)``, MTEB and embedding servers load the encoder without any flag, and this class (or
    :func:`load_student`) loads both, never running code from the folder (see the module's description); it refuses
    ``trust_remote_code``.
    """

    def __init__(self, model_name_or_path: str | None = None, *args, **kwargs) -> None:
        if kwargs.get("trust_remote_code"):
            raise ValueError(f"trust_remote_code=True is refused: st_dse loads students without it. {TRUST_REMEDY}")
        options, foreign = hub_kwargs(kwargs), []
        if model_name_or_path is not None:
            recover_interrupted_save(model_name_or_path)  # a save over this folder killed between its two renames
            foreign = check_model_folder(model_name_or_path, **options)
        try:
            super().__init__(model_name_or_path, *args, **kwargs)
        except (ValueError, pickle.UnpicklingError) as error:
            # A refusal of code the folder asks for says where the folder asks for it; other errors pass unchanged.
            message = loading_refusal(model_name_or_path, error, foreign)
            raise (error if message is None else ValueError(message)) from None
        if model_name_or_path is None or any(isinstance(module, PairHead) for module in self):
            return  # no folder, or a head saved among the modules
        if PairHead.load_file_path(model_name_or_path, PairHead.config_file_name, PAIR_HEAD_FOLDER, **options):
            self.append(PairHead.load(model_name_or_path, subfolder=PAIR_HEAD_FOLDER, **options).to(self.device))

    def _load_module_class_from_ref(self, class_ref: str, *args, **kwargs) -> type:
        # st_dse's own types resolve to the installed classes; every other type goes through the trust_remote_code
        # gate of sentence-transformers, which offers plugins no public way to name their module classes
        # (huggingface/sentence-transformers#3935 made the gate strict, and `_load_with_module_classes` private).
        return OWN_TYPES.get(class_ref) or super()._load_module_class_from_ref(class_ref, *args, **kwargs)

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
        # The head leaves the module list while the encoder is saved, so that modules.json does not name it.
        heads = [(name, module) for name, module in self.named_children() if isinstance(module, PairHead)]
        for name, _ in heads:
            delattr(self, name)
        try:
            super().save(path, *args, **kwargs)
        finally:
            for name, head in heads:
                self.add_module(name, head)
        for _, head in heads:
            head.save(os.path.join(path, PAIR_HEAD_FOLDER))


def load_student(model_name_or_path: str, **kwargs) -> DSEStudent:
    """Load a saved DSE student, PairHead included, without running any code from its folder.

    ``model_name_or_path`` is a folder written by ``student.save(...)`` (or a recipe) or a Hub id; ``kwargs`` go to
    :class:`~sentence_transformers.SentenceTransformer` (``device``, ``revision``, ...). A folder without a PairHead,
    or one that asks for code from outside sentence-transformers and st_dse, is refused with a ValueError.
    """
    model = load_model(model_name_or_path, **kwargs)
    get_pair_head(model)
    return model


def load_model(model_name_or_path: str = DEFAULT_MODEL, **kwargs) -> DSEStudent:
    """Load any sentence encoder for embedding work: a DSE student (its head included) or a plain model.

    The default model name resolves to its packaged copy when the Hub is unreachable (see
    :func:`st_dse.hub.resolve_model_name`). Evaluation scripts use this so one ``--model`` option takes both.
    """
    return DSEStudent(resolve_model_name(model_name_or_path), **kwargs)


# -- what a model folder names, checked before and explained after sentence-transformers loads it ------------------


def check_model_folder(model_name_or_path: str, **download_options) -> list[str]:
    """Refuse, before anything loads, a damaged ``modules.json`` or a ``Dense`` activation that is not a torch class
    (in a ``Router`` too). Returns where the folder names module classes from outside sentence-transformers and
    st_dse, for :func:`loading_refusal` to name when sentence-transformers refuses them."""
    modules_path = load_file_path(model_name_or_path, "modules.json", **download_options)
    entries, problem = _read_json(modules_path, list, "a JSON list of module entries") if modules_path else ([], None)
    found = ((index, _entry_problem(entry)) for index, entry in enumerate(entries or ()))
    problem = problem or next((f"{modules_path}, entry {index} {wrong}" for index, wrong in found if wrong), None)
    listed, foreign = [], []
    if not problem:  # a well-formed modules.json: its modules, and those of its Routers, are checked too
        listed = [
            (f"{modules_path}, entry {index}", entry["type"], entry["path"]) for index, entry in enumerate(entries)
        ]
    for where, class_ref, subfolder, module_class in _folder_modules(model_name_or_path, listed, download_options):
        if not class_ref.startswith("sentence_transformers.") and class_ref not in OWN_TYPES:
            foreign.append(f"{where} names the module class {class_ref!r}")
        elif isinstance(module_class, type) and issubclass(module_class, Dense):
            problem = problem or _activation_problem(model_name_or_path, subfolder, download_options)
    if problem:
        raise ValueError(problem)
    return foreign


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"is {entry!r}, expected an object with 'name', 'path' and 'type'. {REPAIR_REMEDY}"
    key = next((key for key in ("name", "path", "type") if not isinstance(entry.get(key), str)), None)
    if key is None:
        return None
    found = "has no" if key not in entry else f"has a non-string ({entry[key]!r})"
    return (
        f"({entry}) {found} {key!r} key, expected a string: every module entry needs 'name', 'path' and 'type'. "
        f"{REPAIR_REMEDY}"
    )


def _folder_modules(name: str, listed: list[tuple[str, str, str]], options: dict[str, Any]) -> Iterator[tuple]:
    """``(where named, class name, subfolder, class)`` of each module, the class only for sentence-transformers' own;
    the modules of a Router follow it."""
    for where, class_ref, subfolder in listed:
        module_class = None
        if class_ref.startswith("sentence_transformers."):  # its own package: what it imports anyway
            with contextlib.suppress(ImportError):  # sentence-transformers names an unknown class itself
                module_class = import_from_string(class_ref)
        yield where, class_ref, subfolder, module_class
        if isinstance(module_class, type) and issubclass(module_class, Router):
            path = load_file_path(name, Router.config_file_name, subfolder, **options)
            path = path or load_file_path(name, "config.json", subfolder, **options)
            types = ((_read_json(path, dict, "")[0] if path else None) or {}).get("types")
            routes = types.items() if isinstance(types, dict) else ()
            sub = [(f"{path}, types[{key!r}]", ref, str(PurePosixPath(subfolder, key))) for key, ref in routes]
            yield from _folder_modules(name, [route for route in sub if isinstance(route[1], str)], options)


def _activation_problem(name: str, subfolder: str, options: dict[str, Any]) -> str | None:
    path = load_file_path(name, Dense.config_file_name, subfolder, **options)
    config, problem = _read_json(path, dict, "a JSON object") if path else ({}, None)
    activation = (config or {}).get("activation_function")
    if problem or activation is None or str(activation).startswith("torch."):
        return problem
    return (
        f"{path}: activation_function is {activation!r}, not a torch class. Importing it would run code chosen by "
        "the folder, and sentence-transformers would replace it with Tanh instead, changing the embeddings; st_dse "
        f"does neither. {TRUST_REMEDY} If the model was trained with a torch activation, write its class there (e.g. "
        "'torch.nn.modules.activation.Tanh')."
    )


def _read_json(path: str, kind: type, expected: str) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, what is wrong)`` for a file that is not JSON of the ``kind`` expected."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except ValueError as error:  # not UTF-8, or not JSON
        return None, f"{path} is not valid JSON ({error}); expected {expected}. {REPAIR_REMEDY}"
    if not isinstance(value, kind):
        return None, f"{path} holds a JSON {type(value).__name__}, expected {expected}. {REPAIR_REMEDY}"
    return value, None


def loading_refusal(model_name_or_path: str, error: Exception, foreign: list[str]) -> str | None:
    """The message for a loading error that refused code the folder asks for (None for any other error): it names the
    classes from outside sentence-transformers (``foreign``), the ``.py`` files and ``auto_map`` configs, or the
    pickled weights."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    files = list(_files(model_name_or_path))
    if isinstance(error, pickle.UnpicklingError):  # torch.load(weights_only=True) met a pickle that would run code
        pickles = ", ".join(file for file in files if file.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle")))
        return (
            f"{model_name_or_path!r} holds pickled weights that torch refuses to load safely (unpickling them could "
            f"run code): {pickles or 'a .bin/.pt file'} ({reason}). st_dse never runs code from a model folder. If "
            "you trust the files, convert them to safetensors where you can afford to run them (torch.load(file, "
            "weights_only=False), then safetensors.torch.save_file), or get the model's safetensors version."
        )
    if "trust_remote_code" not in str(error):
        return None
    found = foreign + [file for file in files if file.endswith(".py")]
    for file in (file for file in files if file.endswith("config.json")):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            with open(os.path.join(model_name_or_path, file), encoding="utf-8") as handle:
                auto_map = json.load(handle).get("auto_map")
            found += [f"'auto_map' {json.dumps(auto_map)} in {file}"] if auto_map else []
    what = f": {'; '.join(found)}" if found else ""
    source = f"{model_name_or_path!r} asks for code from outside sentence-transformers and st_dse{what}"
    return f"{source} ({reason}). {TRUST_REMEDY}"


def _files(folder: str) -> Iterator[str]:
    """The files of a local folder (none for a Hub id), relative to it, in a stable order, hidden folders skipped."""
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        yield from (os.path.relpath(os.path.join(root, file), folder) for file in sorted(files))
