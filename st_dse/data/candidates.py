"""Candidate lists for listwise distillation: training sentences as queries, each with candidates to rank.

:func:`candidate_lists` picks the lists, :func:`list_pairs` turns them into the (query, candidate) pairs the teacher
labels (:func:`st_dse.label_with_teacher`, cached), and :func:`list_labels` folds those logits back into one label per
list, as :class:`~st_dse.losses.ListwiseDistillLoss` reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import datasets
import numpy as np
import torch
from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


def candidate_lists(
    dataset: datasets.Dataset,
    model: SentenceTransformer,
    list_size: int = 32,
    num_queries: int = 1000,
    seed: int = 42,
    batch_size: int = 64,
    sentence_columns: Sequence[str] = ("sentence1", "sentence2"),
) -> datasets.Dataset:
    """``num_queries`` of the dataset's distinct sentences (drawn with ``seed``), each with ``list_size`` others.

    Half of each list are the query's nearest neighbours under ``model``'s embeddings (cosine), a quarter are spread
    evenly over the rest of the similarity ranking, and the remainder are drawn at random: the teacher's ranking is
    learned among hard candidates and across its whole range. A query is never its own candidate.

    Returns:
        A dataset with columns ``query`` and ``candidate_0`` ... ``candidate_{list_size - 1}``.

    Raises:
        ValueError: fewer than ``list_size + 1`` distinct sentences.
    """
    sentences = list(dict.fromkeys(sentence for column in sentence_columns for sentence in dataset[column]))
    if len(sentences) <= list_size:
        raise ValueError(
            f"Lists of {list_size} candidates need at least {list_size + 1} distinct sentences; the training pairs "
            f"have {len(sentences)}. Lower --list-size."
        )
    rng = np.random.default_rng(seed)
    queries = rng.choice(len(sentences), size=min(num_queries, len(sentences)), replace=False)
    embeddings = model.encode(sentences, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    num_nearest, num_spread = list_size // 2, list_size // 4
    rows: dict[str, list[str]] = {"query": [], **{f"candidate_{j}": [] for j in range(list_size)}}
    for start in range(0, len(queries), 32):  # 32 full similarity rows at a time bound the memory
        chunk = torch.as_tensor(queries[start : start + 32], device=embeddings.device)
        similarity = embeddings[chunk] @ embeddings.T
        # The query itself sorts last, where no pick reaches.
        similarity[torch.arange(len(chunk), device=chunk.device), chunk] = -torch.inf
        ranked = similarity.argsort(dim=1, descending=True).cpu().numpy()
        for query, order in zip(chunk.tolist(), ranked):
            rest = np.arange(num_nearest, len(sentences) - 1)  # ranks below the nearest, the query's left out
            spread = rest[np.linspace(0, len(rest) - 1, num_spread).round().astype(int)]
            random = rng.choice(np.setdiff1d(rest, spread), size=list_size - num_nearest - num_spread, replace=False)
            picked = order[np.concatenate([np.arange(num_nearest), spread, random])]
            rows["query"].append(sentences[query])
            for j, candidate in enumerate(picked):
                rows[f"candidate_{j}"].append(sentences[candidate])
    message = "Candidate lists: %d queries x %d candidates from %d sentences"
    logger.info(message, len(queries), list_size, len(sentences))
    return datasets.Dataset.from_dict(rows)


def list_pairs(lists: datasets.Dataset) -> datasets.Dataset:
    """Every (query, candidate) pair of ``lists`` as ``sentence1``/``sentence2`` rows, list by list, candidate by
    candidate: the order :func:`list_labels` expects."""
    candidates = [column for column in lists.column_names if column.startswith("candidate_")]
    rows = lists.select_columns(["query", *candidates]).to_list()
    queries = [row["query"] for row in rows for _ in candidates]
    return datasets.Dataset.from_dict(
        {"sentence1": queries, "sentence2": [row[c] for row in rows for c in candidates]}
    )


def list_labels(teacher_logits: Sequence[Sequence[float]], num_lists: int) -> list[list[float]]:
    """The teacher logits of :func:`list_pairs`' rows, one flat list of ``K * num_labels`` floats per list."""
    return np.asarray(teacher_logits, dtype=np.float32).reshape(num_lists, -1).tolist()
