"""DSELoss: train a siamese student's PairHead to reproduce a cross-encoder teacher's logits."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn

from st_dse.modules.pair_head import PairHead
from st_dse.student import get_pair_head

DSE_CITATION = """
@inproceedings{barkan2020scalable,
    title = "Scalable Attentive Sentence-Pair Modeling via Distilled Sentence Embedding",
    author = "Barkan, Oren and Razin, Noam and Malkiel, Itzik and Katz, Ori and Caciularu, Avi and Koenigstein, Noam",
    booktitle = "Proceedings of the AAAI Conference on Artificial Intelligence",
    volume = "34",
    year = "2020",
    url = "https://arxiv.org/abs/1908.05161",
}
"""


class DSELoss(nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        distillation_weight: float = 0.5,
        symmetric: bool = False,
        teacher_logit_scale: float = 1.0,
    ) -> None:
        """
        Distilled Sentence Embedding loss, ``(1 - w) * gold + w * distill``: ``distill`` is the squared L2 distance
        between the PairHead's logits and the teacher's raw logits (summed over logits, averaged over the batch),
        ``gold`` the head's task loss (BCE, cross-entropy or MSE) on the rows with a gold label.

        Args:
            model: A SentenceTransformer with a :class:`~st_dse.PairHead` (see :func:`st_dse.build_student`).
            distillation_weight: ``w`` in ``[0, 1]``: 1 is pure distillation, 0 the gold-only baseline.
            symmetric: Also score each pair in the other order and average the two losses.
            teacher_logit_scale: Multiply a classification teacher's logits by this (below 1: softer targets).

        References:
            - Barkan et al., Scalable Attentive Sentence-Pair Modeling via Distilled Sentence Embedding, AAAI 2020:
              https://arxiv.org/abs/1908.05161

        Requirements:
            1. A student with a PairHead.
            2. Labels packed by :func:`st_dse.pack_dse_labels` (``gold = NaN`` for pairs without a gold label).

        Inputs:
            +--------------------------------+----------------------------------------------------------+
            | Inputs                         | Labels                                                   |
            +================================+==========================================================+
            | (sentence_A, sentence_B) pairs | ``[gold, *teacher_logits]`` (``num_labels + 1`` floats)  |
            +--------------------------------+----------------------------------------------------------+
            | (sentence_A, sentence_B) pairs | gold label, only with ``distillation_weight=0``          |
            +--------------------------------+----------------------------------------------------------+

        Example:
            ::

                teacher = CrossEncoder("cross-encoder/quora-distilroberta-base")
                pairs = st_dse.pack_dse_labels(st_dse.label_with_teacher(teacher, pairs))
                student = st_dse.build_student("sentence-transformers/all-MiniLM-L6-v2", num_labels=1)
                loss = st_dse.DSELoss(student, distillation_weight=0.5)
                SentenceTransformerTrainer(model=student, train_dataset=pairs, loss=loss).train()
        """
        super().__init__()
        if not (is_number(distillation_weight) and 0.0 <= distillation_weight <= 1.0):
            raise ValueError(
                f"distillation_weight must be in [0, 1], a number (0: gold labels only, 1: teacher only), got "
                f"{distillation_weight!r}."
            )
        if not isinstance(symmetric, bool):
            raise ValueError(f"symmetric must be True or False, got {symmetric!r}.")
        check_teacher_logit_scale(teacher_logit_scale, get_pair_head(model).problem_type)
        self.model = model
        self.distillation_weight = float(distillation_weight)
        self.symmetric = symmetric
        self.teacher_logit_scale = float(teacher_logit_scale)

    @property
    def head(self) -> PairHead:
        return get_pair_head(self.model)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        # Both sides share the encoder, so one merged forward pass embeds them.
        embeddings1, embeddings2 = embed_columns(self.model, list(sentence_features), separate_first=False)
        return self.compute_loss_from_embeddings(embeddings1, embeddings2, labels)

    def compute_loss_from_embeddings(self, embeddings1: Tensor, embeddings2: Tensor, labels: Tensor) -> Tensor:
        head = self.head
        gold, teacher_logits = self.split_labels(labels, head.num_labels, len(embeddings1))
        orders = [(embeddings1, embeddings2), (embeddings2, embeddings1)][: 2 if self.symmetric else 1]
        losses = []
        for first, second in orders:
            # In float32 even under bf16/fp16 autocast: teacher logits would lose digits in half precision.
            logits, loss = head.score(first, second).float(), 0.0
            if self.distillation_weight < 1.0:
                loss = loss + (1.0 - self.distillation_weight) * gold_loss(logits, gold, head.problem_type)
            if self.distillation_weight > 0.0:
                loss = loss + self.distillation_weight * distillation_loss(logits, teacher_logits)
            losses.append(loss)
        return sum(losses) / len(losses)

    def split_labels(self, labels: Tensor | None, num_labels: int, batch_size: int) -> tuple[Tensor, Tensor | None]:
        """Gold labels ``(batch,)`` and scaled teacher logits ``(batch, num_labels)`` from packed labels; only shapes
        are checked (no device sync), :func:`~st_dse.pack_dse_labels` checks the values."""
        if labels is None:
            raise ValueError("DSELoss needs labels: a 'label' column packed with st_dse.pack_dse_labels(dataset).")
        width = {1: 1, 2: labels.shape[-1]}.get(labels.dim())
        if width == 1 and self.distillation_weight > 0:
            raise ValueError(
                f"DSELoss with distillation_weight={self.distillation_weight} needs teacher logits, but the "
                "labels hold one value per pair. Label the dataset with st_dse.label_with_teacher(...) and pack "
                "it with st_dse.pack_dse_labels(...), or use distillation_weight=0 for gold-only training."
            )
        if width is None or len(labels) != batch_size:
            raise ValueError(
                f"Got labels of shape {tuple(labels.shape)} for a batch of {batch_size} pairs; expected "
                "(batch,) or (batch, num_labels + 1)."
            )
        if width not in (1, num_labels + 1):
            raise ValueError(
                f"Packed labels have {width - 1} teacher logits per pair, but the PairHead has num_labels="
                f"{num_labels}. Use a teacher with matching outputs (label_with_teacher reduces a 2-logit binary "
                "teacher to one logit) or build the student with the teacher's number of labels."
            )
        labels = labels.float()
        return (labels.reshape(-1), None) if width == 1 else (labels[:, 0], labels[:, 1:] * self.teacher_logit_scale)

    def get_config_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("distillation_weight", "symmetric", "teacher_logit_scale")}

    @property
    def citation(self) -> str:
        return DSE_CITATION


#: The largest teacher logit or regression score DSELoss takes: it squares differences in float32, where a value near
#: 1.8e19 squares to infinity. No model's raw output comes near it; a larger value is a labelling error.
MAX_LABEL_MAGNITUDE = 1e6


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite real number (numpy's included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_teacher_logit_scale(teacher_logit_scale: float, problem_type: str) -> None:
    """Refuse a teacher_logit_scale that is not a positive number, or not 1 for regression (whose teacher predicts the
    label, not a logit)."""
    if not (is_number(teacher_logit_scale) and teacher_logit_scale > 0):
        raise ValueError(f"teacher_logit_scale must be a positive, finite number, got {teacher_logit_scale!r}.")
    if teacher_logit_scale != 1.0 and problem_type == "regression":
        raise ValueError(
            "teacher_logit_scale (--teacher-logit-scale) applies to classification teachers' logits; this is a "
            "regression task, whose teacher predicts the label itself on the gold loss's scale. Leave it at 1."
        )


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Squared L2 distance between logits, summed over logits and averaged over the batch (the original DSE loss)."""
    return ((student_logits - teacher_logits.to(student_logits.dtype)) ** 2).sum(dim=-1).mean()


def gold_loss(logits: Tensor, gold: Tensor, problem_type: str) -> Tensor:
    """The task loss averaged over rows with a gold label (NaN marks rows without one); zero when none has one."""
    has_gold = ~torch.isnan(gold)
    target = torch.where(has_gold, gold, 0.0).to(logits.dtype)
    if problem_type == "binary":
        per_row = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
    elif problem_type == "multiclass":
        per_row = F.cross_entropy(logits, target.long(), reduction="none")
    else:
        per_row = (logits[:, 0] - target) ** 2
    weights = has_gold.to(logits.dtype)
    # Weighted, not indexed: no device sync, and a batch without gold still backpropagates (a zero).
    return (per_row * weights).sum() / weights.sum().clamp(min=1.0)
