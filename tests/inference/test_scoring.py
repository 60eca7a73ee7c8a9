from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from st_dse import CandidateIndex, build_student, get_pair_head, score_pairs
from st_dse.inference.scoring import logits_to_output

SENTENCES1 = ["A man plays a guitar.", "A woman slices onions.", "A man plays a guitar."]
SENTENCES2 = ["Someone plays guitar.", "A dog runs outside.", "The stock market fell."]
CORPUS = [
    "How do I learn Python quickly?",
    "What is the best way to learn Python?",
    "How do I cook rice?",
    "Where can I buy a cheap laptop?",
    "Is Python a good first programming language?",
    "What are the symptoms of flu?",
    "How can I improve my English?",
    "Which laptop is best for students?",
]


def _student(minilm_path: str, seed: int = 0, **kwargs) -> SentenceTransformer:
    torch.manual_seed(seed)
    return build_student(minilm_path, hidden_dim=32, **kwargs)


@pytest.fixture(scope="module")
def binary_student(minilm_path):
    return _student(minilm_path)


def test_score_pairs_equals_head_on_embeddings(binary_student):
    logits = score_pairs(binary_student, SENTENCES1, SENTENCES2)
    assert logits.shape == (3,)
    u = torch.tensor(binary_student.encode(SENTENCES1))
    v = torch.tensor(binary_student.encode(SENTENCES2))
    expected = get_pair_head(binary_student).score(u, v)[:, 0].detach().numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_score_pairs_outputs(binary_student):
    logits = score_pairs(binary_student, SENTENCES1, SENTENCES2)
    np.testing.assert_allclose(
        score_pairs(binary_student, SENTENCES1, SENTENCES2, output="probabilities"), 1 / (1 + np.exp(-logits)), 1e-5
    )
    labels = score_pairs(binary_student, SENTENCES1, SENTENCES2, output="labels")
    np.testing.assert_array_equal(labels, (logits > 0).astype(int))
    tensor = score_pairs(binary_student, SENTENCES1, SENTENCES2, convert_to_numpy=False)
    assert isinstance(tensor, torch.Tensor)
    assert score_pairs(binary_student, [], []).shape == (0,)


def test_multiclass_and_regression_outputs(minilm_path):
    three_way = _student(minilm_path, num_labels=3)
    logits = score_pairs(three_way, SENTENCES1, SENTENCES2)
    assert logits.shape == (3, 3)
    probabilities = score_pairs(three_way, SENTENCES1, SENTENCES2, output="probabilities")
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(score_pairs(three_way, SENTENCES1, SENTENCES2, "labels"), logits.argmax(axis=1))
    with pytest.raises(ValueError, match="regression head gives scores"):
        logits_to_output(torch.zeros(2, 1), "regression", "labels")


@pytest.mark.parametrize(
    ("sentences1", "sentences2", "message"),
    [
        (["a", "b"], ["c"], "same length, got 2 and 1"),
        (["a", None], ["c", "d"], "Row 1: the first sentence is NoneType"),
        (["a", "b"], ["c", ""], "Row 1: the second sentence is empty"),
        (["a", 3], ["c", "d"], "Row 1: the first sentence is int"),
        ("a single string", "another", "two lists of sentences"),
    ],
)
def test_bad_input_is_refused(binary_student, sentences1, sentences2, message):
    with pytest.raises(ValueError, match=message):
        score_pairs(binary_student, sentences1, sentences2)


def test_unknown_output_is_refused(binary_student):
    with pytest.raises(ValueError, match="output must be"):
        score_pairs(binary_student, SENTENCES1, SENTENCES2, output="scores")


def test_score_pairs_needs_a_head(minilm_path):
    with pytest.raises(ValueError, match="has no PairHead"):
        score_pairs(SentenceTransformer(minilm_path), SENTENCES1, SENTENCES2)


@pytest.mark.parametrize("head_type", ["concat", "factorized"])
def test_index_top_k_equals_brute_force(minilm_path, head_type):
    student = _student(minilm_path, head_type=head_type)
    queries = ["How should I start learning Python?", "Best laptop for a student?"]
    index = CandidateIndex.from_sentences(student, CORPUS, chunk_size=3)  # several chunks: exercises the merge
    hits = index.search(queries, top_k=4)
    for query, query_hits in zip(queries, hits):
        brute = score_pairs(student, [query] * len(CORPUS), CORPUS)
        order = np.argsort(-brute)[:4]
        assert [hit["corpus_id"] for hit in query_hits] == order.tolist()
        np.testing.assert_allclose([hit["score"] for hit in query_hits], brute[order], atol=1e-4)


def test_index_accepts_query_embeddings_and_caps_top_k(binary_student):
    index = CandidateIndex.from_sentences(binary_student, CORPUS)
    query_embedding = binary_student.encode("How do I learn Python?")
    by_text = index.search("How do I learn Python?", top_k=100)
    by_embedding = index.search(query_embedding, top_k=100)
    assert len(by_text[0]) == len(CORPUS)
    assert [h["corpus_id"] for h in by_text[0]] == [h["corpus_id"] for h in by_embedding[0]]


def test_index_checks_dimensions_and_labels(binary_student, minilm_path):
    with pytest.raises(ValueError, match=r"shape \(num_candidates, 384\)"):
        CandidateIndex(binary_student, np.zeros((4, 10), dtype=np.float32))
    index = CandidateIndex(binary_student, np.zeros((4, 384), dtype=np.float32))
    with pytest.raises(ValueError, match="Query embeddings have dimension 10"):
        index.search(np.zeros((1, 10), dtype=np.float32))
    three_way = _student(minilm_path, num_labels=3)
    with pytest.raises(ValueError, match="pass label_index="):
        CandidateIndex(three_way, np.zeros((4, 384), dtype=np.float32))
    index = CandidateIndex(three_way, torch.randn(4, 384), label_index=2)
    assert len(index.search(torch.randn(384), top_k=2)[0]) == 2


def test_saved_index_search_by_sentence_equals_score_pairs(binary_student, tmp_path):
    from st_dse.inference import index as index_module

    assert CandidateIndex is index_module.CandidateIndex  # st_dse.CandidateIndex and st_dse.scoring re-export it
    CandidateIndex.from_sentences(binary_student, CORPUS, storage_dtype="float16").save(tmp_path / "index")
    loaded = CandidateIndex.load(tmp_path / "index", binary_student)
    query = "Which programming language should I learn first?"
    hits = loaded.search(query, top_k=3)[0]
    brute = score_pairs(binary_student, [query] * len(CORPUS), CORPUS)
    assert [hit["corpus_id"] for hit in hits] == np.argsort(-brute)[:3].tolist()
    np.testing.assert_allclose([hit["score"] for hit in hits], np.sort(brute)[::-1][:3], atol=1e-2)
