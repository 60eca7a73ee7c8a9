"""DSEReranker in sentence-transformers' CrossEncoder tooling: its evaluators, save and reload, to(), and rank's
argument checks. The reranking-evaluator cases are adapted from sentence-transformers'
tests/cross_encoder/evaluation/test_reranking.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sentence_transformers import SentenceTransformer
from sentence_transformers.cross_encoder.evaluation import (
    CrossEncoderClassificationEvaluator,
    CrossEncoderCorrelationEvaluator,
    CrossEncoderRerankingEvaluator,
)
from sklearn.metrics import average_precision_score, f1_score

from st_dse.inference.reranker import DSEReranker, check_rank_inputs
from st_dse.student import DSEStudent, load_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUERY = "How do I learn Python quickly?"
DOCUMENTS = ["What is the best way to learn Python?", "How do I cook rice?", "Where can I buy a cheap laptop?"]
PAIRS = [
    ["A man is eating pasta.", "A man is eating food."],
    ["A man is eating pasta.", "A girl is carrying a baby."],
    ["A monkey is playing drums.", "A monkey plays the drums."],
    ["A cheetah is running.", "Two men pushed carts through the woods."],
]


def test_classification_evaluator_matches_sklearn(reranker):
    labels = [1, 0, 1, 0]
    evaluator = CrossEncoderClassificationEvaluator(PAIRS, labels, name="dev")
    metrics = reranker.evaluate(evaluator)
    scores = reranker.predict(PAIRS)
    assert metrics["dev_average_precision"] == pytest.approx(average_precision_score(labels, scores))
    assert 0 <= metrics["dev_accuracy"] <= 1 and 0 <= metrics["dev_f1"] <= 1
    # The metrics go to the student's model card data, where the student's save writes them.
    assert reranker.model_card_data is reranker.model.model_card_data
    assert reranker.model_card_data.eval_results_dict[evaluator] == metrics


def test_classification_evaluator_on_a_three_label_head(three_label_student):
    labels = [0, 1, 2, 1]
    reranker = DSEReranker(three_label_student)
    metrics = CrossEncoderClassificationEvaluator(PAIRS, labels, name="nli")(reranker)
    predicted = reranker.predict(PAIRS).argmax(axis=1)
    assert metrics["nli_f1_macro"] == pytest.approx(f1_score(labels, predicted, average="macro"))


def test_correlation_evaluator_matches_scipy(reranker):
    gold = [0.9, 0.1, 1.0, 0.0]
    metrics = CrossEncoderCorrelationEvaluator(PAIRS, gold, name="sts")(reranker)
    scores = reranker.predict(PAIRS)
    assert metrics["sts_pearson"] == pytest.approx(pearsonr(gold, scores)[0])
    assert metrics["sts_spearman"] == pytest.approx(spearmanr(gold, scores)[0])


@pytest.mark.parametrize(
    "samples, expected_keys",
    [
        (  # upstream test_negative_format
            [
                {"query": "What is Python?", "positive": ["Python is a language"], "negative": ["C++", "Java"]},
                {"query": "What is the sun?", "positive": ["The sun is a star"], "negative": ["Mars is red"]},
            ],
            {"map", "mrr@10", "ndcg@10"},
        ),
        (  # upstream test_documents_format: the base metrics come from the documents' given order
            [
                {"query": "What is Python?", "positive": ["Python"], "documents": ["Java", "Python", "C++ is fast"]},
                {"query": "What is the sun?", "positive": ["A star"], "documents": ["The moon", "A star"]},
            ],
            {"map", "mrr@10", "ndcg@10", "base_map", "base_mrr@10", "base_ndcg@10"},
        ),
        ([{"query": "test", "positive": ["yes"], "negative": ["no"]}], {"map", "mrr@10", "ndcg@10"}),
        ([{"query": "test", "positive": "yes", "negative": ["no", "nope"]}], {"map", "mrr@10", "ndcg@10"}),
        ([{"query": "empty", "positive": ["x"], "documents": ["a", "b", "c"]}], None),
    ],
    ids=["negative-format", "documents-format", "single-sample", "string-positive", "no-relevant-document"],
)
def test_reranking_evaluator(reranker, samples, expected_keys):
    metrics = CrossEncoderRerankingEvaluator(samples, name="rr")(reranker)
    assert expected_keys is None or set(metrics) == {f"rr_{key}" for key in expected_keys}
    assert all(0 <= value <= 1 for value in metrics.values())
    if expected_keys is None:  # the positive is not among the documents: their given order finds nothing
        assert metrics["rr_base_ndcg@10"] == 0 and "rr_ndcg@10" in metrics


def test_reranking_evaluator_scores_the_positive_first_when_the_model_does(reranker):
    scores = reranker.predict([[QUERY, document] for document in DOCUMENTS])
    best, others = DOCUMENTS[int(scores.argmax())], [d for i, d in enumerate(DOCUMENTS) if i != scores.argmax()]
    metrics = CrossEncoderRerankingEvaluator([{"query": QUERY, "positive": [best], "negative": others}])(reranker)
    assert metrics["map"] == metrics["mrr@10"] == metrics["ndcg@10"] == 1


def test_save_and_reload_give_the_same_predictions(reranker, tmp_path):
    expected = reranker.predict(PAIRS)
    for save in (reranker.save, reranker.save_pretrained):
        folder = tmp_path / save.__name__
        save(str(folder))
        assert (folder / "pair_head").is_dir() and (folder / "modules.json").is_file()
        np.testing.assert_allclose(DSEReranker(load_student(str(folder))).predict(PAIRS), expected, atol=1e-6)
        np.testing.assert_allclose(DSEReranker.from_pretrained(str(folder)).predict(PAIRS), expected, atol=1e-6)


def test_saved_model_card_holds_the_evaluator_metrics(binary_student, tmp_path):
    # A student without a model card text of its own, so that the save writes one from the model card data.
    reranker = DSEReranker(DSEStudent(modules=list(binary_student)))
    CrossEncoderClassificationEvaluator(PAIRS, [1, 0, 1, 0], name="mrpc-dev")(reranker)
    reranker.save(str(tmp_path / "student"))
    card = (tmp_path / "student" / "README.md").read_text(encoding="utf-8")
    assert "mrpc-dev" in card and "average_precision" in card


def test_save_refuses_a_model_that_would_lose_its_head(binary_student, tmp_path):
    plain = SentenceTransformer(modules=list(binary_student))  # a PairHead, but saved as a foreign module
    with pytest.raises(TypeError, match="only a DSEStudent"):
        DSEReranker(plain).save(str(tmp_path / "student"))
    assert not (tmp_path / "student").exists()


def test_to_returns_the_reranker_and_clears_the_cache(binary_student):
    reranker = DSEReranker(binary_student)
    expected = reranker.predict(PAIRS)
    assert reranker.num_cached == len(PAIRS)
    assert reranker.to("cpu") is reranker and reranker.device == binary_student.device == torch.device("cpu")
    assert reranker.num_cached == 0
    np.testing.assert_allclose(reranker.predict(PAIRS), expected, atol=1e-6)
    assert reranker.tokenizer is binary_student.tokenizer
    assert reranker.config.hidden_size == binary_student.get_embedding_dimension()


@pytest.mark.parametrize("top_k", [2.5, 0, -1, True, "2"])
def test_rank_refuses_a_top_k_that_is_not_a_positive_integer(reranker, top_k):
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        reranker.rank(QUERY, DOCUMENTS, top_k=top_k)


def test_rank_refuses_several_queries(reranker):
    with pytest.raises(TypeError, match="query must be one text"):
        reranker.rank([QUERY, "Another query?"], DOCUMENTS)


def test_rank_refuses_documents_given_as_one_string(reranker):
    with pytest.raises(TypeError, match=r"single string .*pass \[documents\]"):
        reranker.rank(QUERY, DOCUMENTS[0])
    with pytest.raises(TypeError, match="single string"):
        check_rank_inputs(QUERY, "one document", None)


def test_rank_of_no_documents_is_empty_as_in_cross_encoder(reranker):
    assert reranker.rank(QUERY, [], top_k=3) == []
    check_rank_inputs(QUERY, DOCUMENTS, 1)  # valid arguments pass
