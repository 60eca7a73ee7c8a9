"""Scoring with a trained student: pairs, and queries against many precomputed candidates."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor

from st_dse.data.pairs import check_pairs
from st_dse.modules.pair_head import Output, logits_to_output
from st_dse.student import get_pair_head


def _embed_unique(
    model: SentenceTransformer, sentences: Sequence[str], batch_size: int, show_progress_bar: bool | None
) -> tuple[Tensor, list[int]]:
    """Encode each distinct sentence once; return the embeddings and each input's row in them."""
    position: dict[str, int] = {}
    rows = [position.setdefault(sentence, len(position)) for sentence in sentences]
    embeddings = model.encode(
        list(position), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar
    )
    return embeddings, rows


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
        model: A student with a PairHead, e.g. ``SentenceTransformer("path/to/dse-student")``.
        sentences1, sentences2: Lists of the same length; row i of each forms pair i.
        output: ``"logits"`` (the head's raw output, what the teacher's logits were distilled into),
            ``"probabilities"`` or ``"labels"``.
        batch_size: Encoding batch size.
        convert_to_numpy: Return a numpy array (default) or a torch tensor.

    Returns:
        ``(n,)`` for binary and regression heads (and for labels), ``(n, k)`` logits or probabilities for k-way heads.
    """
    head = get_pair_head(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    # Checks output against the head (e.g. no probabilities from a regression head) before anything is encoded.
    logits_to_output(torch.zeros((0, head.num_labels)), head.problem_type, output)
    if isinstance(sentences1, str) or isinstance(sentences2, str):
        raise ValueError("score_pairs takes two lists of sentences; wrap a single pair as ([sentence1], [sentence2]).")
    sentences1, sentences2 = list(sentences1), list(sentences2)
    check_pairs(sentences1, sentences2)
    model.eval()
    if not sentences1:
        empty = torch.zeros((0, head.num_labels))
        result = logits_to_output(empty, head.problem_type, output)
    else:
        embeddings, rows = _embed_unique(model, sentences1 + sentences2, batch_size, show_progress_bar)
        rows1 = torch.tensor(rows[: len(sentences1)], device=embeddings.device)
        rows2 = torch.tensor(rows[len(sentences1) :], device=embeddings.device)
        logits = head.score(embeddings[rows1], embeddings[rows2]).float()
        result = logits_to_output(logits, head.problem_type, output).cpu()
    return result.numpy() if convert_to_numpy else result
