"""DSEReranker: CrossEncoder's predict/rank on a DSE student, its scores and its document-embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from st_dse.inference import score_pairs
from st_dse.inference.reranker import DSEReranker
from st_dse.student import build_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUERY = "How do I learn Python quickly?"
DOCUMENTS = [
    "What is the best way to learn Python?",
    "How do I cook rice?",
    "Is Python a good first programming language for someone who has never written any code before?",
    "Where can I buy a cheap laptop?",
    "Python",
]
PAIRS = [[QUERY, document] for document in DOCUMENTS] + [["A man plays a guitar.", "Someone plays guitar."]]


def _student(minilm_path: str, seed: int = 0, **kwargs) -> SentenceTransformer:
    torch.manual_seed(seed)
    return build_student(minilm_path, **kwargs)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


@pytest.fixture(scope="module")
def binary_student(minilm_path):
    return _student(minilm_path, num_labels=1)


@pytest.fixture
def reranker(binary_student):
    return DSEReranker(binary_student)


def _logits(model, pairs):
    return score_pairs(model, [p[0] for p in pairs], [p[1] for p in pairs])


def test_predict_is_sigmoid_of_score_pairs_logits(reranker, binary_student):
    scores = reranker.predict(PAIRS)
    assert isinstance(scores, np.ndarray) and scores.shape == (len(PAIRS),) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, _sigmoid(_logits(binary_student, PAIRS)), atol=1e-5)
    # A single pair gives a scalar, a list of pairs an array; tuples and the old `sentences=` name work too.
    single = reranker.predict(PAIRS[2])
    assert np.ndim(single) == 0 and isinstance(single, np.float32)
    np.testing.assert_allclose(single, scores[2], atol=1e-6)
    np.testing.assert_allclose(reranker.predict(tuple(PAIRS[2])), scores[2], atol=1e-6)
    np.testing.assert_allclose(reranker.predict(sentences=PAIRS), scores, atol=1e-6)


@pytest.mark.parametrize("head_type", ["concat", "factorized"])
def test_one_query_path_matches_score_pairs(minilm_path, head_type):
    # One distinct query (every rank call) takes PairHead.score_all; several take PairHead.score.
    student = _student(minilm_path, num_labels=1, head_type=head_type, hidden_dim=64)
    reranker = DSEReranker(student)
    one_query = [[QUERY, document] for document in DOCUMENTS]
    raw = reranker.predict(one_query, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(raw, _logits(student, one_query), atol=1e-5)
    np.testing.assert_allclose(reranker.predict(PAIRS)[: len(DOCUMENTS)], _sigmoid(raw), atol=1e-5)


def test_raw_logits_and_output_types(reranker, binary_student):
    raw = reranker.predict(PAIRS, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(raw, _logits(binary_student, PAIRS), atol=1e-5)
    tensor = reranker.predict(PAIRS, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (len(PAIRS),)
    as_list = reranker.predict(PAIRS, convert_to_numpy=False)
    assert isinstance(as_list, list) and len(as_list) == len(PAIRS) and all(t.ndim == 0 for t in as_list)
    assert reranker.predict([]).shape == (0,)
    assert reranker.rank(QUERY, []) == []


def test_rank_orders_best_first(reranker):
    scores = reranker.predict([[QUERY, document] for document in DOCUMENTS])
    ranking = reranker.rank(QUERY, DOCUMENTS)
    assert [hit["corpus_id"] for hit in ranking] == np.argsort(-scores, kind="stable").tolist()
    np.testing.assert_allclose([hit["score"] for hit in ranking], np.sort(scores)[::-1], atol=1e-6)
    assert all(set(hit) == {"corpus_id", "score"} for hit in ranking)
    top = reranker.rank(QUERY, DOCUMENTS, top_k=2, return_documents=True)
    assert len(top) == 2 and [hit["corpus_id"] for hit in top] == [hit["corpus_id"] for hit in ranking[:2]]
    assert all(hit["text"] == DOCUMENTS[hit["corpus_id"]] for hit in top)
    raw = reranker.rank(QUERY, DOCUMENTS, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(
        [hit["score"] for hit in raw], np.log(np.sort(scores)[::-1] / (1 - np.sort(scores)[::-1])), atol=1e-4
    )


def rerank_with(cross_encoder, query, docs):
    """Code written for a CrossEncoder."""
    return cross_encoder.rank(query, docs, top_k=2, return_documents=True)


def test_drop_in_for_a_cross_encoder(reranker, minilm_path):
    torch.manual_seed(0)
    cross_encoder = CrossEncoder(minilm_path, num_labels=1)
    expected, got = rerank_with(cross_encoder, QUERY, DOCUMENTS), rerank_with(reranker, QUERY, DOCUMENTS)
    assert len(got) == len(expected) == 2
    for hit, reference in zip(got, expected):
        assert hit.keys() == reference.keys()
        assert {key: type(value) for key, value in hit.items()} == {key: type(v) for key, v in reference.items()}
    for inputs in (PAIRS, PAIRS[0]):
        ours, theirs = reranker.predict(inputs), cross_encoder.predict(inputs)
        assert type(ours) is type(theirs) and np.shape(ours) == np.shape(theirs) and ours.dtype == theirs.dtype
    assert 0 <= reranker.predict(PAIRS).min() and reranker.predict(PAIRS).max() <= 1  # sigmoid, as CrossEncoder


def test_second_rank_encodes_only_the_query(binary_student, monkeypatch):
    reranker = DSEReranker(binary_student)
    encoded: list[list[str]] = []
    original_encode = binary_student.encode

    def counting_encode(sentences, *args, **kwargs):
        encoded.append(list(sentences))
        return original_encode(sentences, *args, **kwargs)

    monkeypatch.setattr(binary_student, "encode", counting_encode)
    first = reranker.rank(QUERY, DOCUMENTS)
    assert sorted(sum(encoded, [])) == sorted([QUERY, *DOCUMENTS])
    assert reranker.num_cached == len(DOCUMENTS)

    encoded.clear()
    other_query = "Which laptop is best for students?"
    second = reranker.rank(other_query, DOCUMENTS)
    assert encoded == [[other_query]]
    fresh = DSEReranker(binary_student, cache_size=0).rank(other_query, DOCUMENTS)
    np.testing.assert_allclose([h["score"] for h in second], [h["score"] for h in fresh], atol=1e-6)
    assert [h["corpus_id"] for h in second] == [h["corpus_id"] for h in fresh]

    encoded.clear()
    assert reranker.rank(QUERY, [*DOCUMENTS, "A new candidate."]) is not None
    assert encoded == [[QUERY], ["A new candidate."]]
    assert [h["score"] for h in reranker.rank(QUERY, DOCUMENTS)] == pytest.approx([h["score"] for h in first])

    reranker.clear_cache()
    assert reranker.num_cached == 0


def test_cache_is_bounded(binary_student):
    reranker = DSEReranker(binary_student, cache_size=3)
    scores = reranker.predict([[QUERY, document] for document in DOCUMENTS])
    assert reranker.num_cached == 3
    # The three most recent documents stay; scores do not depend on what was cached.
    assert list(reranker.cache) == DOCUMENTS[-3:]
    np.testing.assert_allclose(reranker.predict([[QUERY, document] for document in DOCUMENTS]), scores, atol=1e-6)
    with pytest.raises(ValueError, match="cache_size"):
        DSEReranker(binary_student, cache_size=-1)


def test_regression_head_returns_raw_scores(minilm_path):
    student = _student(minilm_path, num_labels=1, problem_type="regression")
    reranker = DSEReranker(student)
    assert isinstance(reranker.activation_fn, torch.nn.Identity)
    np.testing.assert_allclose(reranker.predict(PAIRS), _logits(student, PAIRS), atol=1e-5)
    assert len(reranker.rank(QUERY, DOCUMENTS)) == len(DOCUMENTS)


def test_three_label_head(minilm_path):
    student = _student(minilm_path, num_labels=3)
    reranker = DSEReranker(student)
    logits = reranker.predict(PAIRS)
    assert logits.shape == (len(PAIRS), 3)
    np.testing.assert_allclose(logits, _logits(student, PAIRS), atol=1e-5)
    probabilities = reranker.predict(PAIRS, apply_softmax=True)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert reranker.predict(PAIRS[0]).shape == (3,)
    with pytest.raises(ValueError, match="num_labels=1"):
        reranker.rank(QUERY, DOCUMENTS)


def test_from_pretrained_and_bad_inputs(binary_student, reranker, tmp_path):
    binary_student.save(str(tmp_path / "student"))
    loaded = DSEReranker.from_pretrained(str(tmp_path / "student"), device="cpu")
    np.testing.assert_allclose(loaded.predict(PAIRS), reranker.predict(PAIRS), atol=1e-5)
    with pytest.raises(ValueError, match="pair"):
        reranker.predict([["only one text"]])
    with pytest.raises(ValueError, match="empty"):
        reranker.predict([QUERY, " "])
    with pytest.raises(ValueError, match="batch_size"):
        reranker.predict(PAIRS, batch_size=0)
    with pytest.raises(ValueError, match="PairHead"):
        DSEReranker(SentenceTransformer(modules=[binary_student[0], binary_student[1]]))
