"""Teacher labelling: a cross-encoder's raw logits for every training pair, cached on disk by content."""

from __future__ import annotations

from st_dse.teacher.cache import TeacherLogitCache, default_cache_dir, pair_key, shard_of
from st_dse.teacher.labelling import label_with_teacher, raw_logits, teacher_fingerprint

__all__ = ["TeacherLogitCache", "default_cache_dir", "label_with_teacher", "pair_key", "raw_logits", "shard_of"]
__all__ += ["teacher_fingerprint"]
