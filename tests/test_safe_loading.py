"""Loading a model folder runs no code from it: every way a folder can name code, through every st_dse loader.

Each folder below names code that, if imported or called, writes a marker file. The st_dse loaders
(``load_student``, ``load_model``, ``DSEStudent``) must leave no marker: they refuse the folder with an error naming
what they found, or load it without the code. Plain ``SentenceTransformer(path)`` is checked too, for comparison:
st_dse should be at least as careful as the library it builds on.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Router, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

import st_dse
from st_dse.student import DSEStudent
from tests.test_reliability import build_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOADERS: dict[str, Callable[[str], object]] = {
    "load_student": st_dse.load_student,
    "load_model": st_dse.load_model,
    "DSEStudent": DSEStudent,
    "SentenceTransformer": SentenceTransformer,
}
ST_DSE_LOADERS = ("load_student", "load_model", "DSEStudent")


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory, minilm_path) -> dict[str, Path]:
    """Clean folders the tests copy and then poison: a student, the same student with its encoder in a sub-folder,
    and a plain Router model with the student's head beside it."""
    root = tmp_path_factory.mktemp("safe-loading")
    encoder = build_tiny_encoder(root / "encoder", minilm_path)
    student = st_dse.build_student(str(encoder), hidden_dim=8, device="cpu")
    student.save(str(root / "student"))

    # The same student, its Transformer saved in 0_Transformer/ instead of the folder's root.
    nested = root / "nested"
    shutil.copytree(root / "student", nested)
    (nested / "0_Transformer").mkdir()
    modules = json.loads((nested / "modules.json").read_text())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.move(nested / name, nested / "0_Transformer" / name)
    shutil.move(nested / "sentence_bert_config.json", nested / "0_Transformer" / "sentence_bert_config.json")
    modules[0]["path"] = "0_Transformer"
    (nested / "modules.json").write_text(json.dumps(modules))

    # A Router model (query and document routes) with the student's head beside it.
    router = Router.for_query_document(
        query_modules=[Transformer(str(encoder))], document_modules=[Transformer(str(encoder))]
    )
    SentenceTransformer(modules=[router, Pooling(16)], device="cpu").save(str(root / "router"))
    shutil.copytree(root / "student" / "pair_head", root / "router" / "pair_head")

    # A model with a Dense layer, head beside it.
    dense = Dense(16, 16)
    plain = SentenceTransformer(modules=[Transformer(str(encoder)), Pooling(16), dense], device="cpu")
    plain.save(str(root / "dense"))
    shutil.copytree(root / "student" / "pair_head", root / "dense" / "pair_head")
    return {"student": root / "student", "nested": nested, "router": root / "router", "dense": root / "dense"}


def marker_code(marker: Path, what: str) -> str:
    """Python source that writes ``marker`` when imported, and defines classes and a function that write it too."""
    return f"""
from pathlib import Path
from torch import nn

def _mark(reason):
    with open({str(marker)!r}, "a") as handle:
        handle.write(reason + "\\n")

_mark("imported {what}")

class Evil(nn.Module):
    def __init__(self, *args, **kwargs):
        _mark("constructed {what}")
        super().__init__()

    @classmethod
    def load(cls, *args, **kwargs):
        _mark("loaded {what}")
        return cls()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        _mark("from_pretrained {what}")
        return cls()

    def forward(self, features):
        _mark("called {what}")
        return features

EvilConfig = EvilModel = EvilTokenizer = Evil

def evil_function(*args, **kwargs):
    _mark("called {what}")
"""


def copy_folder(tiny_folders: dict[str, Path], kind: str, destination: Path) -> Path:
    """A copy without the root checksums.json, as a folder from elsewhere comes: the checks tested are the ones that
    guard any folder, not the checksums that would name each poisoned file first."""
    folder = Path(shutil.copytree(tiny_folders[kind], destination / kind))
    (folder / "checksums.json").unlink(missing_ok=True)
    return folder


def edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def check_no_code_runs(folder: Path, marker: Path, loader: str, found: list[str]) -> str:
    """Load ``folder`` with ``loader`` (and encode with it); assert no marker was written.

    A refusal by an st_dse loader must name each string of ``found``. Returns "refused" or "loaded".
    """
    try:
        model = LOADERS[loader](str(folder), device="cpu")
        model.encode(["A sentence to tokenize and embed."])
    except Exception as error:  # noqa: BLE001 - any refusal is fine, as long as no code ran and it says why
        assert not marker.exists(), f"{loader} ran code from the folder before refusing: {marker.read_text()}"
        if loader in ST_DSE_LOADERS:
            assert isinstance(error, ValueError), f"{loader} refused with {type(error).__name__}: {error}"
            for text in found:
                assert text in str(error), f"{loader}'s refusal does not name {text!r}: {error}"
        return "refused"
    assert not marker.exists(), f"{loader} ran code from the folder: {marker.read_text()}"
    return "loaded"


def expect(outcome: str, loader: str, st_dse_outcome: str) -> None:
    """st_dse's loaders must behave as stated; plain sentence-transformers is only checked for running no code."""
    if loader in ST_DSE_LOADERS:
        assert outcome == st_dse_outcome, f"{loader} {outcome} the folder; expected it {st_dse_outcome}"


# ---------------------------------------------------------------- (a) tokenizer auto_map


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("keep_tokenizer_class", [True, False], ids=["with-tokenizer-class", "auto-map-only"])
def test_tokenizer_auto_map_is_ignored(tiny_folders, tmp_path, loader, keep_tokenizer_class):
    # transformers replaces the auto_map with its own BertTokenizer (named, or found from the config's model_type).
    folder = copy_folder(tiny_folders, "student", tmp_path)
    marker = tmp_path / "marker"
    (folder / "evil_tokenizer.py").write_text(marker_code(marker, "tokenizer"))

    def poison(config):
        config["auto_map"] = {"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", "evil_tokenizer.EvilTokenizer"]}
        if not keep_tokenizer_class:
            config.pop("tokenizer_class")

    edit_json(folder / "tokenizer_config.json", poison)
    expect(check_no_code_runs(folder, marker, loader, found=[]), loader, "loaded")


# ---------------------------------------------------------------- (b) auto_map in a sub-folder's config.json


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("model_type", ["bert", None], ids=["known-model-type", "no-model-type"])
def test_nested_transformer_config_auto_map(tiny_folders, tmp_path, loader, model_type):
    # With a model_type transformers knows, it uses its own class and ignores the auto_map; without one, the
    # auto_map is the only way to the model, and loading is refused.
    folder = copy_folder(tiny_folders, "nested", tmp_path)
    marker = tmp_path / "marker"
    (folder / "0_Transformer" / "evil_model.py").write_text(marker_code(marker, "model"))

    def poison(config):
        config["auto_map"] = {"AutoConfig": "evil_model.EvilConfig", "AutoModel": "evil_model.EvilModel"}
        if model_type is None:
            config.pop("model_type")

    edit_json(folder / "0_Transformer" / "config.json", poison)
    found = ["0_Transformer/config.json", "auto_map", "evil_model.EvilModel", "0_Transformer/evil_model.py"]
    outcome = check_no_code_runs(folder, marker, loader, found=found)
    expect(outcome, loader, "loaded" if model_type else "refused")


# ---------------------------------------------------------------- (c) top-level config.json auto_map


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(
    ("kind", "model_type", "st_dse_outcome"),
    [("student", "bert", "loaded"), ("student", None, "refused"), ("nested", "bert", "loaded")],
    ids=["transformer-at-root", "transformer-at-root-no-model-type", "stray-config-beside-0_Transformer"],
)
def test_top_level_config_auto_map(tiny_folders, tmp_path, loader, kind, model_type, st_dse_outcome):
    folder = copy_folder(tiny_folders, kind, tmp_path)
    marker = tmp_path / "marker"
    (folder / "evil_model.py").write_text(marker_code(marker, "model"))
    config = json.loads((folder / "config.json").read_text()) if kind == "student" else {}
    config["auto_map"] = {"AutoConfig": "evil_model.EvilConfig", "AutoModel": "evil_model.EvilModel"}
    config.pop("model_type", None)
    if model_type is not None:
        config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config))
    outcome = check_no_code_runs(folder, marker, loader, found=["config.json", "auto_map", "evil_model.py"])
    expect(outcome, loader, st_dse_outcome)


# ---------------------------------------------------------------- (d) Router naming a class of the folder


@pytest.mark.parametrize("loader", LOADERS)
def test_router_module_class_from_folder(tiny_folders, tmp_path, loader):
    folder = copy_folder(tiny_folders, "router", tmp_path)
    marker = tmp_path / "marker"
    (folder / "evil_router.py").write_text(marker_code(marker, "router module"))
    (folder / "query_0_Transformer" / "evil_router.py").write_text(marker_code(marker, "router module"))
    edit_json(
        folder / "router_config.json", lambda config: config["types"].update(query_0_Transformer="evil_router.Evil")
    )
    found = ["router_config.json", "query_0_Transformer", "evil_router.Evil", "evil_router.py"]
    expect(check_no_code_runs(folder, marker, loader, found=found), loader, "refused")


def test_router_dense_activation_is_checked_too(tiny_folders, tmp_path, monkeypatch):
    folder = copy_folder(tiny_folders, "router", tmp_path)
    marker = tmp_path / "marker"
    install_marker_module(monkeypatch, "evil_activation", marker)
    query = folder / "query_0_Transformer"
    shutil.rmtree(query)
    query.mkdir()
    Dense(16, 16).save(str(query))
    edit_json(query / "config.json", lambda config: config.update(activation_function="evil_activation.Evil"))
    edit_json(
        folder / "router_config.json",
        lambda config: config["types"].update(query_0_Transformer="sentence_transformers.base.modules.dense.Dense"),
    )
    found = ["query_0_Transformer/config.json", "activation_function", "evil_activation.Evil"]
    expect(check_no_code_runs(folder, marker, "load_model", found=found), "load_model", "refused")


# ---------------------------------------------------------------- (e) Dense activation_function


def install_marker_module(monkeypatch, name: str, marker: Path) -> None:
    """An importable module ``name`` (as an installed package would be) that writes ``marker`` when anything in it is
    looked up: loading a model must never reach into it. Registered in ``sys.modules`` for the test only."""

    def lookup(attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        marker.write_text(f"{name}.{attribute} was looked up")
        return lambda *args, **kwargs: marker.write_text(f"{name}.{attribute} was called")

    module = types.ModuleType(name)
    module.__getattr__ = lookup
    monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("activation", ["evil_activation.Evil", "evil_activation.evil_function"])
def test_dense_activation_function_importable(tiny_folders, tmp_path, loader, activation, monkeypatch):
    # sentence-transformers imports only torch.* activations without trust_remote_code and swaps any other for Tanh,
    # which changes the embeddings silently; st_dse refuses instead.
    folder = copy_folder(tiny_folders, "dense", tmp_path)
    marker = tmp_path / "marker"
    install_marker_module(monkeypatch, "evil_activation", marker)
    edit_json(folder / "2_Dense" / "config.json", lambda config: config.update(activation_function=activation))
    found = ["2_Dense/config.json", "activation_function", activation]
    expect(check_no_code_runs(folder, marker, loader, found=found), loader, "refused")


def test_dense_torch_activation_still_loads(tiny_folders, tmp_path):
    folder = copy_folder(tiny_folders, "dense", tmp_path)
    edit_json(
        folder / "2_Dense" / "config.json",
        lambda config: config.update(activation_function="torch.nn.modules.activation.ReLU"),
    )
    model = st_dse.load_student(str(folder), device="cpu")
    assert isinstance(model[2].activation_function, torch.nn.ReLU)


# ---------------------------------------------------------------- (f) modules.json naming a foreign class


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("where", ["folder", "sys-path", "st_dse-lookalike"])
def test_modules_json_foreign_type(tiny_folders, tmp_path, loader, where, monkeypatch):
    folder = copy_folder(tiny_folders, "student", tmp_path)
    marker = tmp_path / "marker"
    class_ref = "evil_module.Evil"
    if where == "folder":
        (folder / "evil_module.py").write_text(marker_code(marker, "module"))
    elif where == "sys-path":
        install_marker_module(monkeypatch, "evil_module", marker)
    else:  # an importable module under st_dse's name is not one of st_dse's module types
        class_ref = "st_dse.student.DSEStudent"
    modules = json.loads((folder / "modules.json").read_text())
    modules[1]["type"] = class_ref
    (folder / "modules.json").write_text(json.dumps(modules))
    found = ["modules.json", "entry 1", class_ref] + (["evil_module.py"] if where == "folder" else [])
    expect(check_no_code_runs(folder, marker, loader, found=found), loader, "refused")


# ---------------------------------------------------------------- (g) pickled weights


class _MarkOnUnpickle:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("where", ["2_Dense", "transformer", "pair_head"])
def test_pickled_weights_are_not_unpickled(tiny_folders, tmp_path, loader, where):
    folder = copy_folder(tiny_folders, "dense", tmp_path)
    marker = tmp_path / "marker"
    weights_folder = folder if where == "transformer" else folder / where
    (weights_folder / "model.safetensors").unlink()
    torch.save({"weight": _MarkOnUnpickle(marker)}, weights_folder / "pytorch_model.bin")
    # The PairHead reads only safetensors: its missing file is named. Elsewhere torch refuses the pickle.
    found = ["pair_head/model.safetensors"] if where == "pair_head" else ["pytorch_model.bin", "pickled weights"]
    expect(check_no_code_runs(folder, marker, loader, found=found), loader, "refused")


@pytest.mark.parametrize("left_at_target", [None, "train.log"])
def test_loading_after_a_save_killed_between_its_renames_keeps_the_old_student(tiny_folders, tmp_path, left_at_target):
    old = tmp_path / ".student.old-ab12cd34"  # the save moved the old student aside, then was killed
    shutil.copytree(tiny_folders["student"], old)
    target = tmp_path / "student"
    target.mkdir()  # made meanwhile, empty or with a log file in it
    if left_at_target is None:
        assert len(st_dse.load_student(str(target), device="cpu")) == 3  # the old student, restored
        assert os.listdir(tmp_path) == ["student"]
        return
    (target / left_at_target).write_text("step 1")
    with pytest.raises(FileExistsError, match=f"{target}.*waits in {old}"):
        st_dse.load_student(str(target), device="cpu")
    assert sorted(os.listdir(tmp_path)) == [old.name, "student"] and os.listdir(target) == [left_at_target]
    assert sorted(os.listdir(old)) == sorted(os.listdir(tiny_folders["student"]))
