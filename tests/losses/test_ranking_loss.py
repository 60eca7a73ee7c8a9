"""ListwiseDistillLoss against a hand computation, candidate lists, and the ranking term through recipes/distill.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder, SentenceTransformer

from st_dse import ListwiseDistillLoss, load_student
from st_dse.data import candidate_lists, get_task, list_labels, list_pairs
from st_dse.losses import ranking_label_index, ranking_scores
from st_dse.modules import PairHead
from st_dse.training.config import DistillConfig
from tests.conftest import load_recipe
from tests.losses.test_dse_loss import _HeadOnlyModel
from tests.test_reliability import build_tiny_encoder

QUERIES = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.5, 0.5, -0.5, 1.0]])
CANDIDATES = [
    torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.5, 0.5, 0.5, 0.5]]),
    torch.tensor([[-1.0, 1.0, 0.0, 2.0], [0.0, 2.0, 1.0, -1.0]]),
    torch.tensor([[2.0, -0.5, 0.5, 1.0], [-1.5, 0.0, 1.0, 0.5]]),
]


def _loss(num_labels: int, **kwargs) -> tuple[ListwiseDistillLoss, PairHead]:
    torch.manual_seed(0)
    head = PairHead(4, num_labels=num_labels, hidden_dim=8)
    return ListwiseDistillLoss(_HeadOnlyModel(head), **kwargs), head


def _hand_score(logits: list[float], label_index: int | None) -> float:
    if len(logits) == 1:
        return -logits[0] if label_index == 0 else logits[0]
    index = len(logits) - 1 if label_index is None else label_index
    return logits[index] - math.log(sum(math.exp(x) for k, x in enumerate(logits) if k != index))


def _hand_kl(student: list[float], teacher: list[float], temperature: float) -> float:
    def softmax(scores):
        exps = [math.exp(s / temperature) for s in scores]
        return [e / sum(exps) for e in exps]

    p, q = softmax(teacher), softmax(student)
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


@pytest.mark.parametrize(("num_labels", "label_index"), [(1, None), (1, 0), (3, None), (3, 0)])
def test_loss_equals_hand_computation(num_labels, label_index):
    loss, head = _loss(num_labels, ranking_weight=0.5, temperature=2.0, label_index=label_index)
    teacher = [[0.3, -1.2, 2.0, 0.1, 0.0, -0.4, 1.1, 0.2, -2.0], [1.0, 0.5, -0.5, 0.0, 2.0, 1.5, -1.0, 0.8, 0.4]]
    teacher = torch.tensor(teacher)
    teacher = teacher[:, : 3 * num_labels]  # (query, candidate_j) logits, candidate by candidate
    value = loss.compute_loss_from_embeddings([QUERIES, *CANDIDATES], teacher)

    expected = 0.0
    for row in range(2):
        student = [
            _hand_score(head.score(QUERIES[row : row + 1], c[row : row + 1])[0].tolist(), label_index)
            for c in CANDIDATES
        ]
        teacher_row = teacher[row].view(3, num_labels).tolist()
        expected += _hand_kl(student, [_hand_score(t, label_index) for t in teacher_row], 2.0) / 2
    assert value.item() == pytest.approx(0.5 * 4.0 * expected, rel=1e-5)


@pytest.mark.parametrize("num_labels", [1, 3])
def test_loss_is_zero_when_the_student_ranks_exactly_as_the_teacher(num_labels):
    loss, head = _loss(num_labels, temperature=0.5)
    own_logits = torch.cat([head.score(QUERIES, c) for c in CANDIDATES], dim=1).detach()
    assert loss.compute_loss_from_embeddings([QUERIES, *CANDIDATES], own_logits).item() == pytest.approx(0, abs=1e-6)
    # A constant shift of every teacher score leaves the softmax, hence the loss, unchanged.
    if num_labels == 1:
        assert loss.compute_loss_from_embeddings([QUERIES, *CANDIDATES], own_logits + 3.0).item() == pytest.approx(
            0, abs=1e-6
        )


def test_gradients_reach_the_head():
    loss, head = _loss(1)
    teacher = torch.tensor([[3.0, -1.0, 0.0], [-2.0, 0.5, 2.5]])
    loss.compute_loss_from_embeddings([QUERIES, *CANDIDATES], teacher).backward()
    grads = [p.grad for p in head.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_ranking_weight_zero_gives_zero_and_bad_settings_are_refused():
    loss, _ = _loss(1, ranking_weight=0.0)
    teacher = torch.tensor([[3.0, -1.0, 0.0], [-2.0, 0.5, 2.5]])
    assert loss.compute_loss_from_embeddings([QUERIES, *CANDIDATES], teacher).item() == 0.0
    with pytest.raises(ValueError, match="K \\* num_labels"):
        _loss(3)[0].compute_loss_from_embeddings([QUERIES, *CANDIDATES], teacher)
    with pytest.raises(ValueError, match="label_index"):
        _loss(3, label_index=3)
    with pytest.raises(ValueError, match="ranking_weight"):
        _loss(1, ranking_weight=-1.0)
    with pytest.raises(ValueError, match="--list-size"):
        DistillConfig(ranking_weight=1.0, list_size=1)
    with pytest.raises(ValueError, match="gold-only"):
        DistillConfig(ranking_weight=1.0, distillation_weight=0.0)


def test_ranking_scores_and_the_class_each_task_ranks_by():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    assert ranking_scores(logits, 1).item() == pytest.approx(2.0 - math.log(math.exp(1.0) + math.exp(0.5)))
    assert ranking_scores(torch.tensor([[1.5]]), 0).item() == -1.5
    assert ranking_label_index(get_task("mnli")) == 0 and ranking_label_index(get_task("rte")) == 0
    assert ranking_label_index(get_task("mrpc")) is None and ranking_label_index(get_task("stsb")) is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path) -> str:
    return str(build_tiny_encoder(tmp_path_factory.mktemp("tiny"), minilm_path))


SENTENCES = [f"Sentence number {i} talks about {topic}." for i, topic in enumerate(["cats", "dogs", "rain"] * 8)]


def test_candidate_lists_exclude_the_query_and_start_with_its_nearest_neighbours(tiny):
    model = SentenceTransformer(tiny)
    pairs = Dataset.from_dict({"sentence1": SENTENCES[:12], "sentence2": SENTENCES[12:]})
    lists = candidate_lists(pairs, model, list_size=8, num_queries=5, seed=1)
    candidates = [f"candidate_{j}" for j in range(8)]
    assert lists.column_names == ["query", *candidates] and len(lists) == 5
    embeddings = model.encode(SENTENCES, normalize_embeddings=True)
    for row in lists:
        picked = [row[column] for column in candidates]
        assert row["query"] not in picked and len(set(picked)) == 8
        similarity = embeddings @ embeddings[SENTENCES.index(row["query"])]
        similarity[SENTENCES.index(row["query"])] = -np.inf
        assert picked[:4] == [SENTENCES[i] for i in np.argsort(-similarity, kind="stable")[:4]]
    assert candidate_lists(pairs, model, list_size=8, num_queries=5, seed=1)["query"] == lists["query"]
    with pytest.raises(ValueError, match="--list-size"):
        candidate_lists(pairs, model, list_size=24)

    pair_rows = list_pairs(lists)
    assert len(pair_rows) == 40
    assert pair_rows[9] == {"sentence1": lists[1]["query"], "sentence2": lists[1]["candidate_1"]}
    labels = list_labels([[float(i), -float(i)] for i in range(40)], len(lists))
    assert labels[1][:4] == [8.0, -8.0, 9.0, -9.0] and len(labels[1]) == 16


def test_recipe_trains_and_saves_with_the_ranking_term(tmp_path, tiny):
    torch.manual_seed(0)
    teacher = CrossEncoder(tiny, num_labels=3, max_length=32)
    teacher.config.id2label = dict(enumerate(["entailment", "neutral", "contradiction"]))
    teacher.config.label2id = {name: index for index, name in teacher.config.id2label.items()}
    teacher.save(str(tmp_path / "teacher"))
    train = tmp_path / "train.jsonl"
    labels = ["entailment", "neutral", "contradiction"]
    rows = [{"premise": SENTENCES[i], "hypothesis": SENTENCES[-1 - i], "label": labels[i % 3]} for i in range(12)]
    train.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    args = ["--teacher", str(tmp_path / "teacher"), "--train-file", str(train), "--student", tiny, "--epochs", "1"]
    args += ["--batch-size", "4", "--augment", "0", "--cache-dir", str(tmp_path / "cache")]
    args += ["--ranking-weight", "1", "--list-size", "6", "--ranking-queries", "8", "--temperature", "2"]
    results = load_recipe("distill").main([*args, "--output-dir", str(tmp_path / "student")])
    assert results["settings"]["ranking_weight"] == 1.0 and "candidate_labelling" in results["timings_s"]
    assert (tmp_path / "cache").is_dir()
    student = load_student(str(tmp_path / "student"))
    assert student.encode(["A sentence."]).shape == (1, 16)
    card = (tmp_path / "student" / "README.md").read_text()
    assert "ListwiseDistillLoss" in card and "DSELoss" in card
