"""The DSE student: a SentenceTransformer with a PairHead. Build it, reach its head, save it, load it (never running
code from the folder)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize, Router
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from sentence_transformers.util import import_from_string, load_file_path
from torch import nn

from st_dse.hub import DEFAULT_MODEL, hub_kwargs, resolve_model_name
from st_dse.integrity import VerifyMode, atomic_save_dir, read_manifest, recover_interrupted_save, verify_manifest
from st_dse.modules.pair_head import RESAVE, HeadType, PairHead, ProblemType
from st_dse.modules.top_layers import TopLayersConcat

PAIR_HEAD_FOLDER = "pair_head"
OWN_TYPES = {f"{module.__module__}.{module.__name__}": module for module in (PairHead, TopLayersConcat)}
NO_HEAD = (
    "has no PairHead, so it cannot score pairs: a folder without a pair_head/ subfolder holds an encoder only, and "
    "SentenceTransformer(path) loads a student's encoder without its head (load a student with "
    "st_dse.load_student(path)). Make one with st_dse.build_student(...) (or st_dse.add_pair_head(model)) and "
    "st_dse.DSELoss, or distil one with recipes/distill.py."
)
TRUST_REMEDY = (
    "st_dse never runs code from a model folder. Inspect the folder, and if you trust it, load it with "
    "SentenceTransformer(path, trust_remote_code=True)."
)
REPAIR_REMEDY = "Save the model again with model.save(path), or copy modules.json again from the original folder."


def _pair_heads(model: nn.Module, expected: int, source: str = "This model") -> list[PairHead]:
    heads = [module for module in model.modules() if isinstance(module, PairHead)]
    if len(heads) != expected:
        problem = f"{source} {NO_HEAD}"
        if heads and expected:
            problem = f"The model has {len(heads)} PairHeads; st_dse expects exactly one."
        elif heads:
            problem = "The model already has a PairHead; use st_dse.get_pair_head(model) to reach it."
        raise ValueError(problem)
    return heads


def get_pair_head(model: nn.Module) -> PairHead:
    """Return the :class:`PairHead` of a student model, with a clear error when there is none."""
    return _pair_heads(model, 1)[0]


def add_pair_head(model: SentenceTransformer, num_labels: int = 1, **head_kwargs) -> PairHead:
    """Append a new :class:`PairHead` to ``model`` (in place) and return it.

    Keyword arguments go to :class:`PairHead`; ``in_features`` defaults to the model's embedding dimension.
    """
    _pair_heads(model, 0)
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
    # The head is built first on the meta device (no memory, no random numbers): bad settings fail before loading.
    with torch.device("meta"):
        PairHead(**{**settings, "in_features": head_kwargs.get("in_features") or 1}, hidden_dim=hidden_dim)
    model = DSEStudent(resolve_model_name(model_name_or_path), device=device)
    for index in reversed(range(len(model)) if not keep_normalize else ()):
        if isinstance(model[index], Normalize):
            del model[index]
    if pooling_layers is not None:
        _pool_top_layers(model, pooling_layers)
    add_pair_head(model, hidden_dim=hidden_dim, **settings)
    return model


def _pool_top_layers(model: SentenceTransformer, pooling_layers: int) -> None:
    """Put a TopLayersConcat before the Pooling module, which keeps its mode over the wider token embeddings."""
    modules = list(model)
    transformer = next((module for module in modules if isinstance(module, Transformer)), None)
    pooling_index = next((index for index, module in enumerate(modules) if isinstance(module, Pooling)), None)
    if transformer is None or pooling_index is None or TopLayersConcat in map(type, modules):
        raise ValueError(
            "Top-layers pooling needs a model made of a Transformer followed by a Pooling module (and no "
            f"TopLayersConcat yet); this one has {[type(module).__name__ for module in modules]}."
        )
    if (depth := getattr(transformer.auto_model.config, "num_hidden_layers", pooling_layers)) < pooling_layers:
        raise ValueError(f"pooling_layers={pooling_layers}, but the encoder has only {depth} layers.")
    width = pooling_layers * transformer.get_embedding_dimension()
    concat = TopLayersConcat(pooling_layers, embedding_dimension=width)  # checks pooling_layers first
    transformer.auto_model.config.output_hidden_states = True
    old = modules[pooling_index]
    model[pooling_index] = Pooling(width, pooling_mode=old.pooling_mode, include_prompt=old.include_prompt)
    model.insert(pooling_index, concat)


def head_learning_rate_mapping(model: SentenceTransformer, learning_rate: float) -> dict[str, float]:
    """A ``learning_rate_mapping`` for ``SentenceTransformerTrainingArguments`` giving the PairHead its own rate (a
    fresh head needs about 1e-3, the pretrained encoder 2e-5 to 5e-5)."""
    head = get_pair_head(model)
    name = next(name for name, module in model.named_modules() if module is head)
    # The trainer names parameters through the loss (model.2.…), or a dict of losses through its key (pairs.model.2.…).
    return {rf"^(\w+\.)?(model\.)?{re.escape(name)}\.": learning_rate}


class DSEStudent(SentenceTransformer):
    """A SentenceTransformer whose :class:`PairHead` (its last module in memory) is saved in ``pair_head/``, outside
    ``modules.json``: ``SentenceTransformer(path)`` loads the encoder alone, this class both, never running code from
    the folder (it refuses ``trust_remote_code``).

    Loading a folder saved by :meth:`save` checks the encoder's files (weights, tokenizer, configs) against its
    ``checksums.json`` (the head checks its own): ``verify="full"`` (sizes and SHA-256), ``"size"`` or ``"none"``. A
    missing, damaged or replaced file raises a :class:`~st_dse.integrity.CorruptFileError` naming it.
    """

    def __init__(self, model_name_or_path: str | None = None, *args, verify: VerifyMode = "full", **kwargs) -> None:
        if kwargs.get("trust_remote_code"):
            raise ValueError(f"trust_remote_code=True is refused: st_dse loads students without it. {TRUST_REMEDY}")
        options, name = hub_kwargs(kwargs), model_name_or_path
        folder = name and (os.path.isabs(name) or os.path.isdir(name))
        if folder:
            recover_interrupted_save(name)  # a folder, not a Hub id: repair a save killed midway
        foreign = check_model_folder(name, **options) if name else []
        if folder and verify != "none" and (entries := read_manifest(name)):
            # Before anything parses them. The model card is prose one may edit; PairHead.load checks the head's files.
            files = [file for file in entries if file != "README.md" and not file.startswith(f"{PAIR_HEAD_FOLDER}/")]
            verify_manifest(name, files=files, verify=verify, remedy=RESAVE)
        try:
            super().__init__(name, *args, **kwargs)
        except (ValueError, pickle.UnpicklingError) as error:
            message = loading_refusal(name, error, foreign)
            raise (error if message is None else ValueError(message)) from None
        if name is None or any(isinstance(module, PairHead) for module in self):
            return
        if PairHead.load_file_path(name, PairHead.config_file_name, PAIR_HEAD_FOLDER, **options):
            self.append(PairHead.load(name, subfolder=PAIR_HEAD_FOLDER, **options).to(self.device))

    def _load_module_class_from_ref(self, class_ref: str, *args, **kwargs) -> type:
        # sentence-transformers offers plugins no public way to name their own module classes: since
        # huggingface/sentence-transformers#3935 every class outside its package needs trust_remote_code, and its
        # `module_classes` mapping is private. The one override st_dse needs: its own classes resolve here, every
        # other reference goes through sentence-transformers' own refusal.
        return OWN_TYPES.get(class_ref) or super()._load_module_class_from_ref(class_ref, *args, **kwargs)

    def save(self, path: str, *args, **kwargs) -> None:
        """Save the encoder as a sentence-transformers folder and the head in ``pair_head/``; saving over a model
        folder is all or nothing (a run killed at any moment leaves the old model or the new one)."""
        atomic_save_dir(path, lambda folder: self.save_pretrained(str(folder), *args, **kwargs), kind="student")

    def save_pretrained(self, path: str, *args, **kwargs) -> None:
        """The same files written straight into ``path``: what a trainer's checkpoints use, in folders the trainer
        owns (it writes its optimizer state beside them). Use :meth:`save` for a model folder."""
        heads = [(name, module) for name, module in self.named_children() if isinstance(module, PairHead)]
        for name, _ in heads:  # out of the module list while the encoder is saved, so modules.json does not name it
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

    Args:
        model_name_or_path: A folder written by ``student.save(...)`` (or a recipe), or a Hub id.
        **kwargs: Passed to :class:`~sentence_transformers.SentenceTransformer` (``device``, ``revision``, ...).
    """
    model = load_model(model_name_or_path, **kwargs)
    _pair_heads(model, 1, repr(model_name_or_path))
    return model


def load_model(model_name_or_path: str = DEFAULT_MODEL, **kwargs) -> DSEStudent:
    """Load a DSE student (head included) or any sentence encoder; ``kwargs`` go to :class:`DSEStudent`."""
    return DSEStudent(resolve_model_name(model_name_or_path), **kwargs)


def check_model_folder(name: str, **options) -> list[str]:
    """Refuse a damaged ``modules.json`` or a ``Dense`` activation (in a Router too) that is not a torch class, before
    anything loads; return where the folder names module classes from other packages (for :func:`loading_refusal`).

    The activation is the one thing sentence-transformers' own refusal misses: it replaces a class it may not import
    with Tanh, silently changing the embeddings."""
    modules_path = load_file_path(name, "modules.json", **options)
    entries = _read_json(modules_path, list, "a JSON list of module entries") if modules_path else []
    listed = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problem = f"is {entry!r}, expected an object with 'name', 'path' and 'type'."
        elif key := next((key for key in ("name", "path", "type") if not isinstance(entry.get(key), str)), None):
            found = "has no" if key not in entry else f"has a non-string ({entry[key]!r})"
            problem = (
                f"({entry}) {found} {key!r} key, expected a string: every module entry needs 'name', 'path', 'type'."
            )
        else:
            listed.append((f"{modules_path}, entry {index}", entry["type"], entry["path"]))
            continue
        raise ValueError(f"{modules_path}, entry {index} {problem} {REPAIR_REMEDY}")
    foreign = []
    while listed:  # depth first: the modules of a Router follow it
        where, class_ref, subfolder = listed.pop(0)
        if not class_ref.startswith("sentence_transformers."):
            foreign += [] if class_ref in OWN_TYPES else [f"{where} names the module class {class_ref!r}"]
            continue
        module_class = None
        with contextlib.suppress(ImportError):  # sentence-transformers names an unknown class of its own itself
            module_class = import_from_string(class_ref)
        if not (isinstance(module_class, type) and issubclass(module_class, Dense | Router)):
            continue
        path = load_file_path(name, module_class.config_file_name, subfolder, **options)
        path = path or load_file_path(name, "config.json", subfolder, **options)
        config = _read_json(path, dict, "a JSON object") if path else {}
        activation = config.get("activation_function") if issubclass(module_class, Dense) else None
        if activation is not None and not str(activation).startswith("torch."):
            raise ValueError(
                f"{path}: activation_function is {activation!r}, not a torch class. Importing it would run code "
                "chosen by the folder, and sentence-transformers would replace it with Tanh instead, changing the "
                f"embeddings; st_dse does neither. {TRUST_REMEDY} If the model was trained with a torch activation, "
                "write its class there (e.g. 'torch.nn.modules.activation.Tanh')."
            )
        routes = config.get("types") if issubclass(module_class, Router) else None
        routes = routes.items() if isinstance(routes, dict) else ()
        sub = [(f"{path}, types[{key!r}]", ref, str(PurePosixPath(subfolder, key))) for key, ref in routes]
        listed[:0] = [route for route in sub if isinstance(route[1], str)]
    return foreign


def _read_json(path: str, kind: type, expected: str) -> Any:
    """The JSON value in ``path``, or a ValueError when it is not JSON of the ``kind`` expected."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
        problem = None if isinstance(value, kind) else f"holds a JSON {type(value).__name__}, expected {expected}"
    except ValueError as error:  # not UTF-8, or not JSON
        problem = f"is not valid JSON ({error}); expected {expected}"
    if problem:
        raise ValueError(f"{path} {problem}. {REPAIR_REMEDY}") from None
    return value


def loading_refusal(model_name_or_path: str, error: Exception, foreign: list[str]) -> str | None:
    """The message for a loading error that refused code the folder asks for, or None for any other error: it names
    the ``foreign`` classes, the ``.py`` files and ``auto_map`` configs, or the pickled weights."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    folder = Path(model_name_or_path)
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
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
            auto_map = json.loads((folder / file).read_text(encoding="utf-8")).get("auto_map")
            found += [f"'auto_map' {json.dumps(auto_map)} in {file}"] if auto_map else []
    what = f": {'; '.join(found)}" if found else ""
    source = f"{model_name_or_path!r} asks for code from outside sentence-transformers and st_dse{what}"
    return f"{source} ({reason}). {TRUST_REMEDY}"
