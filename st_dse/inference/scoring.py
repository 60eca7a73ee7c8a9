"""Pair scoring: a student's PairHead output for row-aligned sentence pairs, each distinct sentence encoded once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor

from st_dse.checks import int_at_least
from st_dse.data import check_pairs
from st_dse.modules.pair_head import Output, logits_to_output
from st_dse.student import get_pair_head

Embeddings = TypeVar("Embeddings")


def encode_unique(encode: Callable[[list[str]], Embeddings], sentences: Sequence[str]) -> tuple[Embeddings, list[int]]:
    """``encode`` each distinct sentence once; return those embeddings and each input sentence's row in them."""
    position: dict[str, int] = {}
    rows = [position.setdefault(sentence, len(position)) for sentence in sentences]
    return encode(list(position)), rows


@torch.inference_mode()
def score_pairs(
    model: SentenceTransformer,
    sentences1: Sequence[str],
    sentences2: Sequence[str],
    output: Output = "logits",
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    convert_to_numpy: bool = True,
) -> np.ndarray | Tensor:
    """Score row-aligned sentence pairs with a student's PairHead.

    Each distinct sentence is encoded once, so scoring many pairs that share sentences costs one encode per sentence.

    Args:
        model: A student with a PairHead, e.g. ``st_dse.load_student("path/to/dse-student")``.
        sentences1, sentences2: Lists of the same length; row i of each forms pair i.
        output: ``"logits"`` (the head's raw output, what the teacher's logits were distilled into),
            ``"probabilities"`` or ``"labels"``.
        batch_size: Encoding batch size.
        convert_to_numpy: Return a numpy array (default) or a torch tensor.

    Returns:
        ``(n,)`` for binary and regression heads (and for labels), ``(n, k)`` logits or probabilities for k-way heads.
    """
    head = get_pair_head(model)
    int_at_least("batch_size", batch_size)
    # Checks output against the head (e.g. no probabilities from a regression head) before anything is encoded.
    logits_to_output(torch.zeros((0, head.num_labels)), head.problem_type, output)
    if isinstance(sentences1, str) or isinstance(sentences2, str):
        raise ValueError("score_pairs takes two lists of sentences; wrap a single pair as ([sentence1], [sentence2]).")
    sentences1, sentences2 = list(sentences1), list(sentences2)
    check_pairs(sentences1, sentences2)
    model.eval()
    logits = torch.zeros((0, head.num_labels))
    if sentences1:
        options = {"batch_size": batch_size, "show_progress_bar": show_progress_bar, "convert_to_tensor": True}
        embeddings, rows = encode_unique(partial(model.encode, **options), sentences1 + sentences2)
        rows = torch.tensor(rows, device=embeddings.device)
        logits = head.score(embeddings[rows[: len(sentences1)]], embeddings[rows[len(sentences1) :]]).float()
    result = logits_to_output(logits, head.problem_type, output).cpu()
    return result.numpy() if convert_to_numpy else result
