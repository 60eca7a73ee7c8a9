"""Scoring with a trained student: row-aligned pairs, queries against many cached candidates, and a cascade whose
teacher re-ranks the student's shortlist."""

from __future__ import annotations

from st_dse.inference.cascade import CascadeReranker
from st_dse.inference.index import CandidateIndex
from st_dse.inference.reranker import DSEReranker
from st_dse.inference.scoring import logits_to_output, score_pairs

__all__ = ["CandidateIndex", "CascadeReranker", "DSEReranker", "logits_to_output", "score_pairs"]
