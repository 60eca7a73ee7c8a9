"""st_dse: Distilled Sentence Embedding (DSE) for sentence-transformers: distil a cross-encoder teacher's logits into
a siamese student with a pair head, so that candidates are encoded once and each query costs one encode."""

from __future__ import annotations

from st_dse.data import augment_pairs, with_augmented
from st_dse.hub import DEFAULT_MODEL, resolve_model_name
from st_dse.inference import CandidateIndex, CascadeReranker, DSEReranker, score_pairs
from st_dse.losses import DSELoss, ListwiseDistillLoss, pack_dse_labels
from st_dse.modules import PairHead, TopLayersConcat
from st_dse.student import (
    DSEStudent,
    add_pair_head,
    build_student,
    get_pair_head,
    head_learning_rate_mapping,
    load_model,
    load_student,
)
from st_dse.teacher import TeacherLogitCache, label_with_teacher, teacher_fingerprint

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL", "CandidateIndex", "DSELoss", "DSEReranker", "DSEStudent", "PairHead", "TeacherLogitCache"]
__all__ += ["TopLayersConcat", "add_pair_head", "augment_pairs", "build_student", "get_pair_head", "load_model"]
__all__ += ["head_learning_rate_mapping", "label_with_teacher", "load_student", "pack_dse_labels", "score_pairs"]
__all__ += ["CascadeReranker", "ListwiseDistillLoss", "resolve_model_name", "teacher_fingerprint", "with_augmented"]
