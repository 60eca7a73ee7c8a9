"""DSELoss and the label packing it reads."""

from __future__ import annotations

from st_dse.losses.dse_loss import DSE_CITATION, DSELoss, check_teacher_logit_scale, distillation_loss, gold_loss
from st_dse.losses.labels import check_gold_labels, pack_dse_labels

__all__ = [
    "DSE_CITATION",
    "DSELoss",
    "check_gold_labels",
    "check_teacher_logit_scale",
    "distillation_loss",
    "gold_loss",
    "pack_dse_labels",
]
