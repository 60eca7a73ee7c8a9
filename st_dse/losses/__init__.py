"""DSELoss, the label packing it reads, and ListwiseDistillLoss for candidate lists."""

from __future__ import annotations

from st_dse.losses.dse_loss import DSE_CITATION, DSELoss, check_teacher_logit_scale, distillation_loss, gold_loss
from st_dse.losses.labels import check_gold_labels, pack_dse_labels
from st_dse.losses.ranking_loss import ListwiseDistillLoss, ranking_label_index, ranking_scores

__all__ = ["DSE_CITATION", "DSELoss", "ListwiseDistillLoss", "check_gold_labels", "check_teacher_logit_scale"]
__all__ += ["distillation_loss", "gold_loss", "pack_dse_labels", "ranking_label_index", "ranking_scores"]
