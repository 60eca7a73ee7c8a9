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
from st_dse.modules.pair_head import Output, PairHead, logits_to_output
from st_dse.student import get_pair_head

Embeddings = TypeVar("Embeddings")


# Pairs scored by the head at a time: bounds the (pairs, 4 * dim) input of the concat head.
HEAD_CHUNK_SIZE = 8192


def encode_unique(encode: Callable[[list[str]], Embeddings], sentences: Sequence[str]) -> tuple[Embeddings, list[int]]:
    """``encode`` each distinct sentence once; return those embeddings and each input sentence's row in them."""
    position: dict[str, int] = {}
    rows = [position.setdefault(sentence, len(position)) for sentence in sentences]
    return encode(list(position)), rows


def pair_logits(
    head: PairHead, embeddings1: Tensor, rows1: list[int], embeddings2: Tensor, rows2: list[int]
) -> Tensor:
    """Head logits ``(n, num_labels)`` of the pairs ``(embeddings1[rows1[i]], embeddings2[rows2[i]])``, in chunks;
    a single first embedding (one query) has its share of the head's first layer computed once."""
    rows1, rows2 = (torch.tensor(rows, device=embeddings1.device) for rows in (rows1, rows2))
    if len(embeddings1) == 1:
        chunks = rows2.split(HEAD_CHUNK_SIZE)
        return torch.cat([head.score_all(embeddings1, embeddings2[chunk])[0] for chunk in chunks])
    pairs = zip(rows1.split(HEAD_CHUNK_SIZE), rows2.split(HEAD_CHUNK_SIZE))
    return torch.cat([head.score(embeddings1[first], embeddings2[second]) for first, second in pairs])


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
        logits = pair_logits(head, embeddings, rows[: len(sentences1)], embeddings, rows[len(sentences1) :]).float()
    result = logits_to_output(logits, head.problem_type, output).cpu()
    return result.numpy() if convert_to_numpy else result
