"""CascadeReranker: the student's shortlist, re-ranked by the teacher, in CrossEncoder.rank's format."""

from __future__ import annotations

import pytest
import torch
from sentence_transformers import CrossEncoder

import st_dse
from st_dse.inference import CandidateIndex, CascadeReranker, DSEReranker
from tests.test_reliability import build_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = "cat dog sun rain snow tree car road bird fish".split()
DOCUMENTS = [f"a {WORDS[i % 10]} near the {WORDS[(i * 3 + 1) % 10]} {i}" for i in range(12)]
QUERY = "the cat and the rain"


@pytest.fixture(scope="module")
def models(tmp_path_factory, minilm_path):
    tiny = str(build_tiny_encoder(tmp_path_factory.mktemp("cascade") / "tiny", minilm_path))
    torch.manual_seed(0)
    teacher = CrossEncoder(tiny, num_labels=1, max_length=32, device="cpu")
    torch.manual_seed(1)
    return st_dse.build_student(tiny, hidden_dim=8, device="cpu"), teacher


@pytest.fixture
def counted_pairs(models, monkeypatch):
    """Every pair the teacher scores, through its predict (which CrossEncoder.rank calls too)."""
    teacher, pairs = models[1], []
    original = teacher.predict

    def predict(inputs, *args, **kwargs):
        pairs.extend(tuple(pair) for pair in inputs)
        return original(inputs, *args, **kwargs)

    monkeypatch.setattr(teacher, "predict", predict)
    return pairs


def test_a_shortlist_covering_the_pool_is_the_teachers_exhaustive_ranking(models):
    student, teacher = models
    expected = teacher.rank(QUERY, DOCUMENTS, return_documents=True)
    for shortlist in (len(DOCUMENTS), 100):
        got = CascadeReranker(student, teacher, shortlist=shortlist).rank(QUERY, DOCUMENTS, return_documents=True)
        assert got == expected
    # The output has CrossEncoder.rank's keys and value types.
    assert {key: type(value) for key, value in got[0].items()} == {"corpus_id": int, "score": float, "text": str}


def test_the_teacher_scores_only_the_students_shortlist(models, counted_pairs):
    student, teacher = models
    hits = CascadeReranker(student, teacher, shortlist=4).rank(QUERY, DOCUMENTS, top_k=10)
    student_top = [hit["corpus_id"] for hit in DSEReranker(student).rank(QUERY, DOCUMENTS, top_k=4)]
    assert sorted(counted_pairs) == sorted((QUERY, DOCUMENTS[i]) for i in student_top)
    # The shortlist only, whatever top_k asks for, ordered and scored by the teacher.
    assert sorted(hit["corpus_id"] for hit in hits) == sorted(student_top)
    teacher_scores = teacher.predict([[QUERY, DOCUMENTS[hit["corpus_id"]]] for hit in hits])
    assert [hit["score"] for hit in hits] == pytest.approx(teacher_scores.tolist(), abs=1e-6)
    assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)
    assert CascadeReranker(student, teacher, shortlist=4).rank(QUERY, DOCUMENTS, top_k=2) == hits[:2]


def test_search_over_fixed_candidates_matches_rank_and_batches_the_teacher(models, counted_pairs):
    student, teacher = models
    cascade = CascadeReranker.from_candidates(student, teacher, DOCUMENTS, shortlist=5)
    queries = [QUERY, "a fish on the road"]
    results = cascade.search(queries, top_k=3, return_documents=True)
    assert len(counted_pairs) == 2 * 5  # one shortlist of 5 per query
    for query, hits in zip(queries, results):
        expected = cascade.rank(query, DOCUMENTS, top_k=3, return_documents=True)
        assert [hit["corpus_id"] for hit in hits] == [hit["corpus_id"] for hit in expected]
        assert [hit["score"] for hit in hits] == pytest.approx([hit["score"] for hit in expected], abs=1e-5)
        assert all(hit["text"] == DOCUMENTS[hit["corpus_id"]] for hit in hits)
    # An index built beforehand serves the same way.
    index = CandidateIndex.from_sentences(student, DOCUMENTS)
    reused = CascadeReranker.from_candidates(student, teacher, DOCUMENTS, shortlist=5, index=index)
    assert reused.index is index and reused.search(QUERY, top_k=3, return_documents=True)[0] == results[0]


def test_bad_arguments_are_refused_with_the_reason(models):
    student, teacher = models
    cascade = CascadeReranker(student, teacher, shortlist=3)
    with pytest.raises(TypeError, match="single string"):
        cascade.rank(QUERY, DOCUMENTS[0])
    with pytest.raises(TypeError, match="single string"):
        DSEReranker(student).rank(QUERY, DOCUMENTS[0])
    for top_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            cascade.rank(QUERY, DOCUMENTS, top_k=top_k)
    with pytest.raises(ValueError, match="empty"):
        cascade.rank(QUERY, [*DOCUMENTS, " "])
    assert cascade.rank(QUERY, []) == []  # as CrossEncoder.rank
    with pytest.raises(ValueError, match="shortlist must be a positive integer"):
        CascadeReranker(student, teacher, shortlist=0)
    with pytest.raises(ValueError, match="from_candidates"):
        cascade.search(QUERY)
    with pytest.raises(ValueError, match="it holds 12 from this model"):
        CascadeReranker.from_candidates(
            student, teacher, DOCUMENTS[:5], index=CandidateIndex.from_sentences(student, DOCUMENTS)
        )
    three = CrossEncoder(teacher.model.name_or_path, num_labels=3, max_length=32, device="cpu")
    with pytest.raises(ValueError, match="one-logit"):
        CascadeReranker(student, three)
