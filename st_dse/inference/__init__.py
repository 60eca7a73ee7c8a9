"""Scoring with a trained student: row-aligned pairs, and queries against many cached candidates."""

from __future__ import annotations

from st_dse.inference.index import CandidateIndex
from st_dse.inference.reranker import DSEReranker
from st_dse.inference.scoring import logits_to_output, score_pairs

__all__ = ["CandidateIndex", "DSEReranker", "logits_to_output", "score_pairs"]
