"""Students with a fresh head (one logit, three) and a reranker over the first, for the reranker tests."""

from __future__ import annotations

import pytest
import torch

from st_dse.inference.reranker import DSEReranker
from st_dse.student import build_student


@pytest.fixture(scope="module")
def binary_student(minilm_path):
    torch.manual_seed(0)
    return build_student(minilm_path, num_labels=1, hidden_dim=64)


@pytest.fixture(scope="module")
def three_label_student(minilm_path):
    torch.manual_seed(0)
    return build_student(minilm_path, num_labels=3, hidden_dim=64)


@pytest.fixture
def reranker(binary_student):
    return DSEReranker(binary_student)
