"""ListwiseDistillLoss: the PairHead's scores over a list of candidates, distilled from the teacher's (listwise KL)."""

from __future__ import annotations

import math
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss
from torch import Tensor

from st_dse.data import TaskSpec
from st_dse.losses.dse_loss import is_number
from st_dse.student import get_pair_head


class ListwiseDistillLoss(DistillKLDivLoss):
    def __init__(
        self,
        model: SentenceTransformer,
        ranking_weight: float = 1.0,
        temperature: float = 1.0,
        label_index: int | None = None,
    ) -> None:
        """
        Listwise distillation for a DSE student: for each query and its ``K`` candidates, the KL divergence between
        the softmax of the teacher's scores and the softmax of the PairHead's scores, both divided by ``temperature``,
        times ``temperature ** 2`` and ``ranking_weight``. It teaches the student the teacher's ranking of a whole
        list, where :class:`~st_dse.DSELoss` fits each pair's logit on its own; train both together on a dict of
        datasets (see the example). This is sentence-transformers'
        :class:`~sentence_transformers.sentence_transformer.losses.DistillKLDivLoss` with the PairHead as its
        similarity function: the head is the student's own, saved with it.

        Each pair gets one score, computed the same way from the teacher's and the head's logits (see
        :func:`ranking_scores`): a one-logit head's logit (a binary task's ``l1 - l0``, or a regression score),
        negated for ``label_index=0``; for ``k`` logits the log-odds of class ``label_index``,
        ``logit_i - logsumexp(other logits)`` (default: the last class). :func:`ranking_label_index` picks the
        class for a task: ``entailment`` for NLI tasks, else the last (paraphrase, duplicate).

        Args:
            model: A SentenceTransformer with a :class:`~st_dse.PairHead` (see :func:`st_dse.build_student`).
            ranking_weight: Multiplies the loss (its weight against DSELoss's pointwise terms).
            temperature: Divides teacher and student scores before the softmax (above 1: softer distributions).
            label_index: The class whose score ranks the candidates (None: the last class, or a one-logit head's
                logit).

        References:
            - Lin et al., Distilling Dense Representations for Ranking using Tightly-Coupled Teachers (TCT-ColBERT):
              https://arxiv.org/abs/2010.11386
            - Ren et al., RocketQAv2: A Joint Training Method for Dense Passage Retrieval and Passage Re-ranking,
              EMNLP 2021: https://arxiv.org/abs/2110.07367
            - :class:`~sentence_transformers.sentence_transformer.losses.DistillKLDivLoss`

        Requirements:
            1. A student with a PairHead.
            2. (query, candidate_1, ..., candidate_K) rows, ``K >= 2``, labelled with the teacher's raw logits of
               every (query, candidate_j) pair, candidate by candidate (``K * num_labels`` floats).

        Inputs:
            +---------------------------------------------+--------------------------------------------------------+
            | Inputs                                      | Labels                                                 |
            +=============================================+========================================================+
            | (query, candidate_1, ..., candidate_K)      | ``[*Teacher(query, candidate_1), ...]``: ``K *         |
            |                                             | num_labels`` raw logits                                |
            +---------------------------------------------+--------------------------------------------------------+

        Example:
            ::

                teacher = CrossEncoder("cross-encoder/quora-distilroberta-base")
                student = st_dse.build_student("sentence-transformers/all-MiniLM-L6-v2", num_labels=1)
                pairs = st_dse.pack_dse_labels(st_dse.label_with_teacher(teacher, pairs))
                lists = candidate_lists(pairs, student, list_size=32, num_queries=1000)
                labelled = st_dse.label_with_teacher(teacher, list_pairs(lists))
                lists = lists.add_column("label", list_labels(labelled["teacher_logits"], len(lists)))
                losses = {"pairs": st_dse.DSELoss(student), "lists": ListwiseDistillLoss(student, ranking_weight=1.0)}
                trainer = SentenceTransformerTrainer(
                    model=student, train_dataset=DatasetDict(pairs=pairs, lists=lists), loss=losses
                )
                trainer.train()
        """
        if not (is_number(ranking_weight) and ranking_weight >= 0):
            raise ValueError(f"ranking_weight must be a finite number >= 0, got {ranking_weight!r}.")
        super().__init__(model, similarity_fct=self.pair_scores, temperature=temperature)
        num_labels = get_pair_head(model).num_labels
        classes = range(max(num_labels, 2))  # a one-logit binary head ranks class 1 (its logit) or class 0
        if label_index is not None and label_index not in classes:
            raise ValueError(f"label_index must be None or a class id in [0, {classes[-1]}], got {label_index!r}.")
        self.ranking_weight = float(ranking_weight)
        self.label_index = label_index

    def pair_scores(self, query_embeddings: Tensor, candidate_embeddings: Tensor) -> Tensor:
        """The head's score ``(batch,)`` of each query with its candidate, in float32 (see :func:`ranking_scores`)."""
        logits = get_pair_head(self.model).score(query_embeddings, candidate_embeddings).float()
        return ranking_scores(logits, self.label_index)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        batch_size, num_candidates = len(embeddings[0]), len(embeddings) - 1
        num_labels = get_pair_head(self.model).num_labels
        if labels.shape != (batch_size, num_candidates * num_labels):
            raise ValueError(
                f"{type(self).__name__} expects labels of shape (batch, K * num_labels) = ({batch_size}, "
                f"{num_candidates * num_labels}): the teacher's raw logits of each (query, candidate) pair, candidate "
                f"by candidate; got {tuple(labels.shape)}. Build them with st_dse.data.candidates.list_labels."
            )
        teacher_scores = ranking_scores(labels.float().view(batch_size, num_candidates, num_labels), self.label_index)
        return self.ranking_weight * super().compute_loss_from_embeddings(embeddings, teacher_scores)

    def get_config_dict(self) -> dict[str, Any]:
        settings = {"ranking_weight": self.ranking_weight, "temperature": self.temperature}
        return {**settings, "label_index": self.label_index}


def ranking_scores(logits: Tensor, label_index: int | None = None) -> Tensor:
    """One score per pair ``(...,)`` from logits ``(..., num_labels)``, higher for class ``label_index``.

    One logit (binary ``l1 - l0``, or a regression score): the logit, negated for ``label_index=0``. ``k`` logits: the
    log-odds of class ``label_index`` (None: the last), ``logit_i - logsumexp(other logits)``.
    """
    if logits.shape[-1] == 1:
        return -logits[..., 0] if label_index == 0 else logits[..., 0]
    index = logits.shape[-1] - 1 if label_index is None else label_index
    chosen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    chosen[index] = True
    return logits[..., index] - torch.logsumexp(logits.masked_fill(chosen, -math.inf), dim=-1)


def ranking_label_index(task: TaskSpec) -> int | None:
    """The class whose score ranks a task's candidates: the one named ``entailment`` (RTE, QNLI, MNLI, SICK-E), else
    None: the last class (paraphrase, duplicate) or a regression score."""
    names = [name.lower() for name in task.label_names]
    return names.index("entailment") if "entailment" in names else None
