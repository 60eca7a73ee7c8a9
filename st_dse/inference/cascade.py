"""CascadeReranker: a DSE student shortlists candidates, its cross-encoder teacher re-ranks only the shortlist."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any, Literal

import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from st_dse.checks import int_at_least
from st_dse.fingerprint import model_fingerprint
from st_dse.inference.index import CandidateIndex
from st_dse.inference.reranker import DSEReranker, Hit, check_rank_inputs, ranked_hits

__all__ = ["CascadeReranker"]


class CascadeReranker:
    """Two-stage reranking: the student's PairHead picks each query's best ``shortlist`` documents (one query encode
    plus the head, document embeddings cached), the teacher CrossEncoder scores only those ``shortlist`` pairs.

    Results are the shortlist ranked by the teacher, with the teacher's scores: at most ``shortlist`` documents per
    query, whatever ``top_k`` asks for. Documents outside the shortlist are never scored by the teacher and never
    returned. With ``shortlist >= len(documents)`` the result is the teacher's own exhaustive ranking.

    Args:
        student: A student with a one-logit PairHead, e.g. ``st_dse.load_student("path/to/student")``.
        teacher: A one-logit CrossEncoder, typically the teacher the student was distilled from.
        shortlist: How many documents per query the teacher scores.

    Example::

        cascade = CascadeReranker(student, CrossEncoder("cross-encoder/ms-marco-MiniLM-L6-v2"), shortlist=100)
        hits = cascade.rank("How do I learn Python?", documents, top_k=10)  # [{"corpus_id": 3, "score": 0.97}, ...]

        cascade = CascadeReranker.from_candidates(student, teacher, corpus)  # the corpus encoded once
        hits = cascade.search(["How do I learn Python?"], top_k=10)  # one list of hits per query
    """

    def __init__(self, student: SentenceTransformer, teacher: CrossEncoder, shortlist: int = 100) -> None:
        if teacher.num_labels != 1:
            raise ValueError(
                f"The teacher has {teacher.num_labels} labels; a cascade ranks by a one-logit CrossEncoder's score."
            )
        self.student_reranker, self.teacher = DSEReranker(student), teacher
        self.shortlist = int_at_least("shortlist", shortlist)
        self.candidates: list[str] | None = None
        self.index: CandidateIndex | None = None

    @classmethod
    def from_candidates(
        cls,
        student: SentenceTransformer,
        teacher: CrossEncoder,
        candidates: Sequence[str],
        shortlist: int = 100,
        index: CandidateIndex | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> CascadeReranker:
        """A cascade over a fixed candidate set, for :meth:`search`: the candidates are encoded once by the student
        (or ``index``, a CandidateIndex this student built from ``candidates`` in this order, is used as it is)."""
        cascade = cls(student, teacher, shortlist)
        cascade.candidates = list(candidates)
        if index is None:
            index = CandidateIndex.from_sentences(
                student, cascade.candidates, batch_size=batch_size, show_progress_bar=show_progress_bar
            )
        else:
            model = "this" if index.fingerprint == model_fingerprint(student) else "another"
            if len(index) != len(cascade.candidates) or model == "another":
                raise ValueError(
                    f"index must be a CandidateIndex this student built from these {len(cascade.candidates)} "
                    f"candidates, but it holds {len(index)} from {model} model; pass that index, or index=None."
                )
        cascade.index = index
        return cascade

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable | None = None,
        device: str | list[str | torch.device] | None = None,
        pool: dict[Literal["input", "output", "processes"], Any] | None = None,
        chunk_size: int | None = None,
    ) -> list[Hit]:
        """Rank ``documents`` for ``query`` with the arguments and output of :meth:`CrossEncoder.rank`:
        ``[{"corpus_id": int, "score": float[, "text": str]}, ...]``, best first by the teacher's score.

        At most ``shortlist`` documents come back (see the class). ``prompt_name``, ``prompt``, ``activation_fn``,
        ``device``, ``pool`` and ``chunk_size`` go to the teacher; the student shortlists by its raw logits with its
        default prompts.
        """
        check_rank_inputs(query, documents, top_k)
        options = {"batch_size": batch_size, "show_progress_bar": show_progress_bar}
        identity = torch.nn.Identity()  # raw logits: a saturated sigmoid would tie the student's best documents
        hits = self.student_reranker.rank(query, documents, top_k=self.shortlist, activation_fn=identity, **options)
        # In corpus order, so that the teacher breaks ties as CrossEncoder.rank does on the whole list.
        ids = sorted(hit["corpus_id"] for hit in hits)
        options.update(activation_fn=activation_fn, device=device, pool=pool, chunk_size=chunk_size)
        shortlist = [documents[i] for i in ids]
        ranked = self.teacher.rank(query, shortlist, top_k, return_documents, prompt_name, prompt, **options)
        return [{**hit, "corpus_id": ids[hit["corpus_id"]]} for hit in ranked]

    def search(
        self,
        queries: str | Sequence[str],
        top_k: int = 10,
        return_documents: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable | None = None,
    ) -> list[list[Hit]]:
        """The best ``top_k`` of the fixed candidates (see :meth:`from_candidates`) for each query, as a list of hits
        per query like :meth:`CandidateIndex.search`: the index shortlists, the teacher scores the shortlists in one
        batched ``predict``."""
        if self.index is None:
            raise ValueError(
                "search() needs a fixed candidate set: build the cascade with CascadeReranker.from_candidates("
                "student, teacher, candidates), or call rank(query, documents)."
            )
        int_at_least("top_k", top_k)
        queries = [queries] if isinstance(queries, str) else list(queries)
        shortlists = [
            sorted(hit["corpus_id"] for hit in hits)
            for hits in self.index.search(queries, top_k=self.shortlist, batch_size=batch_size)
        ]
        pairs = [[query, self.candidates[i]] for query, ids in zip(queries, shortlists) for i in ids]
        options = {"show_progress_bar": show_progress_bar, "activation_fn": activation_fn, "convert_to_tensor": True}
        scores = iter(self.teacher.predict(pairs, batch_size=batch_size, **options).tolist())
        return [
            ranked_hits(ids, islice(scores, len(ids)), self.candidates, top_k, return_documents) for ids in shortlists
        ]
