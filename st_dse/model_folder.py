"""Checks on a model folder before it loads: only sentence-transformers' and st_dse's own code may be named in it."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from sentence_transformers.base.modules import Dense, Router
from sentence_transformers.util import import_from_string, load_file_path
from torch import nn

from st_dse.modules.pair_head import PairHead
from st_dse.modules.top_layers import TopLayersConcat

logger = logging.getLogger(__name__)

# modules.json types st_dse resolves to its own classes instead of importing them: the current ones and those written
# by earlier st_dse versions, which listed the PairHead among the modules (st_dse.head.PairHead).
OWN_MODULE_TYPES: dict[str, type[nn.Module]] = {
    "st_dse.modules.top_layers.TopLayersConcat": TopLayersConcat,
    "st_dse.head.TopLayersConcat": TopLayersConcat,
    "st_dse.modules.pair_head.PairHead": PairHead,
    "st_dse.head.PairHead": PairHead,
}

TRUST_REMEDY = (
    "st_dse never runs code from a model folder. Inspect the folder, and if you trust it, load it with "
    "SentenceTransformer(path, trust_remote_code=True)."
)
REPAIR_REMEDY = "Save the model again with model.save(path), or copy modules.json again from the original folder."


def check_model_folder(model_name_or_path: str, **download_options) -> None:
    """Refuse, before anything is loaded, a model whose ``modules.json`` is damaged or names code to run.

    Checks that ``modules.json`` (when there is one) is a JSON list of entries with string ``name``, ``path`` and
    ``type``; that every type is a sentence-transformers class or one of st_dse's (so nothing is imported from the
    folder or from the Python path); that each ``Dense`` module's ``activation_function`` is a ``torch`` class
    (sentence-transformers would otherwise swap it for Tanh, changing the embeddings); and the same for the modules
    of a ``Router``. Raises a ValueError naming the file, the entry and what it found.
    """
    modules_path = load_file_path(model_name_or_path, "modules.json", **download_options)
    if modules_path is None:
        return
    entries = _read_json(modules_path, list, "a JSON list of module entries", REPAIR_REMEDY)
    for index, entry in enumerate(entries):
        where = f"{modules_path}, entry {index}"
        if not isinstance(entry, dict):
            raise ValueError(
                f"{where} is {entry!r}, expected an object with 'name', 'path' and 'type'. {REPAIR_REMEDY}"
            )
        for key in ("name", "path", "type"):
            if not isinstance(entry.get(key), str):
                problem = "has no" if key not in entry else f"has a non-string ({entry[key]!r})"
                raise ValueError(
                    f"{where} ({entry}) {problem} {key!r} key, expected a string: every module entry needs 'name', "
                    f"'path' and 'type'. {REPAIR_REMEDY}"
                )
        _check_module(model_name_or_path, entry["type"], entry["path"], where, download_options)


def _check_module(
    model_name_or_path: str, class_ref: str, subfolder: str, where: str, download_options: dict[str, Any]
) -> None:
    if class_ref in OWN_MODULE_TYPES:
        return
    if not class_ref.startswith("sentence_transformers."):
        code_file = _code_file(model_name_or_path, class_ref)
        raise ValueError(
            f"{where} names the module class {class_ref!r}, which is part of neither sentence-transformers nor "
            f"st_dse{f' (its code is in {code_file})' if code_file else ''}; importing it would run code chosen by "
            f"the folder. {TRUST_REMEDY}"
        )
    try:
        module_class = import_from_string(class_ref)  # sentence-transformers' own namespace: what it imports anyway
    except ImportError:
        return  # sentence-transformers reports the unknown class when it loads the module
    if not isinstance(module_class, type):
        return
    if issubclass(module_class, Dense):
        config_path = load_file_path(model_name_or_path, Dense.config_file_name, subfolder, **download_options)
        if config_path is None:
            return
        config = _read_json(config_path, dict, "a JSON object", REPAIR_REMEDY)
        activation = config.get("activation_function")
        if activation is not None and not (isinstance(activation, str) and activation.startswith("torch.")):
            raise ValueError(
                f"{config_path}: activation_function is {activation!r}, not a torch class. Importing it would run "
                "code chosen by the folder, and sentence-transformers would replace it with Tanh instead, changing "
                f"the embeddings; st_dse does neither. {TRUST_REMEDY} If the model was trained with a torch "
                "activation, write its class there (e.g. 'torch.nn.modules.activation.Tanh')."
            )
    elif issubclass(module_class, Router):
        config_path = load_file_path(model_name_or_path, Router.config_file_name, subfolder, **download_options)
        config_path = config_path or load_file_path(model_name_or_path, "config.json", subfolder, **download_options)
        if config_path is None:
            return
        types = _read_json(config_path, dict, "a JSON object", REPAIR_REMEDY).get("types")
        if not isinstance(types, dict):
            raise ValueError(
                f"{config_path}: 'types' is {types!r}, expected an object mapping each sub-module folder to its "
                f"class. {REPAIR_REMEDY}"
            )
        for model_id, sub_ref in types.items():
            if not isinstance(sub_ref, str):
                raise ValueError(f"{config_path}: types[{model_id!r}] is {sub_ref!r}, expected a class name.")
            sub_folder = f"{subfolder}/{model_id}" if subfolder else model_id
            _check_module(
                model_name_or_path, sub_ref, sub_folder, f"{config_path}, types[{model_id!r}]", download_options
            )


def _read_json(path: str, kind: type, expected: str, remedy: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); expected {expected}. {remedy}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, expected {expected}. {remedy}")
    return value


def _code_file(model_name_or_path: str, class_ref: str) -> str | None:
    """The ``.py`` file of a local folder that ``class_ref`` (``module.Class``) would import, if there is one."""
    module_file = class_ref.rsplit(".", 1)[0].replace(".", os.sep) + ".py"
    path = os.path.join(model_name_or_path, module_file)
    return path if os.path.isfile(path) else None


def pickle_files(model_name_or_path: str) -> list[str]:
    if not os.path.isdir(model_name_or_path):
        return []
    return sorted(
        os.path.relpath(os.path.join(root, file), model_name_or_path)
        for root, _, files in os.walk(model_name_or_path)
        for file in files
        if file.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))
    )


def code_refusal(model_name_or_path: str, error: Exception) -> str:
    """A refusal naming the code a model folder asks for: its ``.py`` files and the ``auto_map`` of its configs."""
    found = []
    if os.path.isdir(model_name_or_path):
        for root, folders, files in os.walk(model_name_or_path):
            folders[:] = sorted(folder for folder in folders if not folder.startswith("."))
            for file in sorted(files):
                path = os.path.join(root, file)
                relative = os.path.relpath(path, model_name_or_path)
                if file.endswith(".py"):
                    found.append(relative)
                elif file.endswith("config.json"):
                    try:
                        with open(path, encoding="utf-8") as handle:
                            auto_map = json.load(handle).get("auto_map")
                    except (OSError, ValueError, AttributeError):
                        continue
                    if auto_map:
                        found.append(f"'auto_map' {json.dumps(auto_map)} in {relative}")
    reason = str(error).strip().splitlines()[0]
    what = f": {'; '.join(found)}" if found else ""
    return (
        f"{model_name_or_path!r} asks for code from outside sentence-transformers and st_dse{what} ({reason}). "
        f"{TRUST_REMEDY}"
    )
