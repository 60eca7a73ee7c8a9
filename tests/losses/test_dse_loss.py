from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import InputExample, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from torch.utils.data import DataLoader

from st_dse import DSELoss, build_student, get_pair_head, head_learning_rate_mapping, load_student, pack_dse_labels
from st_dse.losses import check_gold_labels
from st_dse.modules import PairHead

EMBEDDINGS1 = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.5, 0.5, -0.5, 1.0], [0.0, 2.0, 1.0, -1.0]])
EMBEDDINGS2 = torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.5, 0.5, 0.5, 0.5], [-1.0, 1.0, 0.0, 2.0]])


class _HeadOnlyModel(torch.nn.Module):
    """Enough of a SentenceTransformer for compute_loss_from_embeddings: a module that holds a PairHead."""

    def __init__(self, head: PairHead) -> None:
        super().__init__()
        self.head = head


def _loss_and_logits(num_labels: int, problem_type: str, weight: float) -> tuple[DSELoss, torch.Tensor]:
    torch.manual_seed(0)
    head = PairHead(4, num_labels=num_labels, problem_type=problem_type, hidden_dim=8)
    loss = DSELoss(_HeadOnlyModel(head), distillation_weight=weight)
    return loss, head.score(EMBEDDINGS1, EMBEDDINGS2).detach()


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _hand_gold(problem_type: str, logits: list[list[float]], gold: list[float]) -> float:
    """The gold losses written out, one pair at a time."""
    terms = []
    for row, target in zip(logits, gold):
        if problem_type == "binary":
            p = _sigmoid(row[0])
            terms.append(-(target * math.log(p) + (1 - target) * math.log(1 - p)))
        elif problem_type == "multiclass":
            terms.append(-(row[int(target)] - math.log(sum(math.exp(x) for x in row))))
        else:
            terms.append((row[0] - target) ** 2)
    return sum(terms) / len(terms)


def _hand_distill(logits: list[list[float]], teacher: list[list[float]]) -> float:
    return sum(sum((s - t) ** 2 for s, t in zip(row, trow)) for row, trow in zip(logits, teacher)) / len(logits)


CASES = {
    "binary": (1, [1.0, 0.0, 1.0], [[2.0], [-1.5], [0.3]]),
    "multiclass": (3, [2.0, 0.0, 1.0], [[0.1, -0.2, 1.5], [2.0, 0.0, -1.0], [-0.5, 0.7, 0.2]]),
    "regression": (1, [4.2, 1.0, 2.5], [[3.9], [0.5], [2.0]]),
}


@pytest.mark.parametrize("problem_type", list(CASES))
@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_loss_equals_hand_computation(problem_type, weight):
    num_labels, gold, teacher = CASES[problem_type]
    loss, logits = _loss_and_logits(num_labels, problem_type, weight)
    labels = torch.tensor([[g, *t] for g, t in zip(gold, teacher)])
    value = loss.compute_loss_from_embeddings(EMBEDDINGS1, EMBEDDINGS2, labels)
    rows = logits.tolist()
    expected = (1 - weight) * _hand_gold(problem_type, rows, gold) + weight * _hand_distill(rows, teacher)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_half_precision_logits_are_compared_in_float32():
    # Under bf16 autocast the head's logits come out in bfloat16; teacher logits such as 3.14159 have no exact bf16
    # value, so the loss must compare in float32 rather than round the teacher to the student's dtype.
    loss, _ = _loss_and_logits(1, "regression", 1.0)
    teacher = [3.14159, -2.71828, 0.1]
    labels = torch.tensor([[math.nan, t] for t in teacher])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = loss.head.score(EMBEDDINGS1, EMBEDDINGS2)
        value = loss.compute_loss_from_embeddings(EMBEDDINGS1, EMBEDDINGS2, labels)
    assert logits.dtype == torch.bfloat16 and value.dtype == torch.float32
    assert value.item() == pytest.approx(_hand_distill(logits.float().tolist(), [[t] for t in teacher]), rel=1e-6)


def test_gold_only_accepts_plain_labels():
    loss, logits = _loss_and_logits(1, "binary", 0.0)
    value = loss.compute_loss_from_embeddings(EMBEDDINGS1, EMBEDDINGS2, torch.tensor([1, 0, 1]))
    assert value.item() == pytest.approx(_hand_gold("binary", logits.tolist(), [1, 0, 1]), rel=1e-5)


def test_pairs_without_gold_only_count_in_distillation():
    _, gold, teacher = CASES["binary"]
    loss, logits = _loss_and_logits(1, "binary", 0.5)
    labels = torch.tensor([[gold[0], *teacher[0]], [math.nan, *teacher[1]], [gold[2], *teacher[2]]])
    rows = logits.tolist()
    expected = 0.5 * _hand_gold("binary", [rows[0], rows[2]], [gold[0], gold[2]]) + 0.5 * _hand_distill(rows, teacher)
    assert loss.compute_loss_from_embeddings(EMBEDDINGS1, EMBEDDINGS2, labels).item() == pytest.approx(expected, 1e-5)
    no_gold = labels.clone()
    no_gold[:, 0] = math.nan
    only_distill = loss.compute_loss_from_embeddings(EMBEDDINGS1, EMBEDDINGS2, no_gold)
    assert only_distill.item() == pytest.approx(0.5 * _hand_distill(rows, teacher), 1e-5)


def test_symmetric_loss_averages_both_orders():
    _, gold, teacher = CASES["regression"]
    torch.manual_seed(0)
    head = PairHead(4, problem_type="regression", hidden_dim=8)
    labels = torch.tensor([[g, *t] for g, t in zip(gold, teacher)])
    one_way = DSELoss(_HeadOnlyModel(head), 0.5)
    both_ways = DSELoss(_HeadOnlyModel(head), 0.5, symmetric=True)
    forward = one_way.compute_loss_from_embeddings(EMBEDDINGS1, EMBEDDINGS2, labels)
    backward = one_way.compute_loss_from_embeddings(EMBEDDINGS2, EMBEDDINGS1, labels)
    symmetric = both_ways.compute_loss_from_embeddings(EMBEDDINGS1, EMBEDDINGS2, labels)
    assert symmetric.item() == pytest.approx((forward.item() + backward.item()) / 2, rel=1e-6)


@pytest.mark.parametrize(
    ("problem_type", "labels", "weight", "message"),
    [
        (
            "binary",
            torch.tensor([[1.0, 0.2, 0.3]] * 3),
            0.5,
            "2 teacher logits per pair, but the PairHead has num_labels=1",
        ),
        ("binary", torch.tensor([1.0, 0.0, 1.0]), 0.5, "needs teacher logits"),
        ("binary", torch.tensor([[[1.0]]] * 3), 0.0, r"Got labels of shape \(3, 1, 1\) for a batch of 3 pairs"),
        ("binary", torch.tensor([[1.0, 0.2]] * 2), 0.5, r"Got labels of shape \(2, 2\) for a batch of 3 pairs"),
    ],
)
def test_bad_label_shapes_get_clear_errors(problem_type, labels, weight, message):
    num_labels = 3 if problem_type == "multiclass" else 1
    loss, _ = _loss_and_logits(num_labels, problem_type, weight)
    with pytest.raises(ValueError, match=message):
        loss.compute_loss_from_embeddings(EMBEDDINGS1, EMBEDDINGS2, labels)


@pytest.mark.parametrize(
    ("problem_type", "gold", "message"),
    [
        ("binary", [1.0, 2.0, 0.0], r"Row 1: gold label 2.0. Binary gold labels must be 0 or 1"),
        ("binary", [0.5, math.nan, None], r"Row 0: .*must be 0 or 1"),
        ("multiclass", [0.0, 1.0, 3.0], r"Row 2: .*Multiclass gold labels must be class ids in \[0, 2\]"),
        ("multiclass", [1.5, 0.0, 1.0], r"Row 0: .*class ids in \[0, 2\]"),
        ("regression", [1.0, math.inf, 0.0], r"Row 1: .*Regression gold labels must be finite numbers, not infinite"),
    ],
)
def test_gold_labels_that_do_not_fit_the_task_are_refused_where_they_enter(problem_type, gold, message):
    # Values are checked once, on the dataset (distill_student does this); DSELoss.forward never syncs on them.
    with pytest.raises(ValueError, match=message):
        check_gold_labels(gold, problem_type, 3 if problem_type == "multiclass" else 1)
    check_gold_labels([0.0, 1.0, math.nan, None], problem_type, 3)  # valid labels and missing ones pass


def test_non_finite_teacher_logits_and_gold_are_refused_by_pack_dse_labels():
    pairs = {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [1, 0], "teacher_logits": [[0.5], [0.1]]}
    with pytest.raises(ValueError, match=r"Row 1: the teacher logits .*hold nan, expected finite"):
        pack_dse_labels(Dataset.from_dict({**pairs, "teacher_logits": [[0.5], [math.nan]]}))
    with pytest.raises(ValueError, match=r"Row 0: the gold label \('label'\) is float \(inf\)"):
        pack_dse_labels(Dataset.from_dict({**pairs, "label": [math.inf, 0.0]}))


def test_forward_does_not_wait_on_the_device(monkeypatch):
    # No .item(), .any(), .all(), bool() or boolean indexing on tensors in a training step: each makes a GPU wait.
    loss, _ = _loss_and_logits(3, "multiclass", 0.5)
    _, gold, teacher = CASES["multiclass"]
    labels = torch.tensor([[g, *t] for g, t in zip([gold[0], math.nan, gold[2]], teacher)])

    def synced(*args, **kwargs):
        raise AssertionError("DSELoss synchronised with the device")

    for name in ("item", "any", "all", "__bool__", "tolist", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, synced)
    both_ways = DSELoss(loss.model, 0.5, symmetric=True, teacher_logit_scale=0.5)
    value = both_ways.compute_loss_from_embeddings(EMBEDDINGS1.clone().requires_grad_(), EMBEDDINGS2, labels)
    value.backward()
    monkeypatch.undo()
    assert torch.isfinite(value)


def test_missing_labels_and_bad_weight_are_refused():
    loss, _ = _loss_and_logits(1, "binary", 0.5)
    with pytest.raises(ValueError, match="needs labels"):
        loss.compute_loss_from_embeddings(EMBEDDINGS1, EMBEDDINGS2, None)
    with pytest.raises(ValueError, match=r"distillation_weight must be in \[0, 1\]"):
        DSELoss(loss.model, distillation_weight=1.5)


def test_loss_needs_a_model_with_a_head():
    with pytest.raises(ValueError, match="has no PairHead"):
        DSELoss(torch.nn.Linear(2, 2))


def test_pack_dse_labels():
    dataset = Dataset.from_dict(
        {
            "sentence1": ["a", "b"],
            "sentence2": ["c", "d"],
            "label": [1, None],
            "teacher_logits": [[0.5], [-2.0]],
            "idx": [0, 1],
        }
    )
    packed = pack_dse_labels(dataset)
    assert packed.column_names == ["sentence1", "sentence2", "label"]
    assert packed["label"][0] == [1.0, 0.5]
    assert math.isnan(packed["label"][1][0]) and packed["label"][1][1] == -2.0
    teacher_only = pack_dse_labels(dataset, gold_column=None)
    assert math.isnan(teacher_only["label"][0][0])
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['teacher_logits'\]"):
        pack_dse_labels(dataset.remove_columns("teacher_logits"))


PAIRS = {
    "sentence1": ["A man plays a guitar.", "A woman slices onions.", "Kids play soccer.", "The cat sleeps."] * 4,
    "sentence2": ["Someone plays guitar.", "A dog runs outside.", "Children play football.", "A car drives by."] * 4,
    "label": [1, 0, 1, 0] * 4,
    "teacher_logits": [[2.0], [-2.0], [1.5], [-1.0]] * 4,
}


def test_trainer_trains_the_head_that_is_saved(tmp_path, minilm_path):
    student = build_student(minilm_path, hidden_dim=32)
    head_before = {k: v.clone() for k, v in get_pair_head(student).state_dict().items()}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"),
        num_train_epochs=1,
        per_device_train_batch_size=4,
        learning_rate_mapping=head_learning_rate_mapping(student, 1e-3),
        report_to="none",
        save_strategy="no",
        use_cpu=True,
    )
    dataset = pack_dse_labels(Dataset.from_dict(PAIRS))
    SentenceTransformerTrainer(model=student, args=args, train_dataset=dataset, loss=DSELoss(student)).train()
    head_after = get_pair_head(student).state_dict()
    assert any(not torch.equal(head_before[k], head_after[k]) for k in head_after)
    student.save(str(tmp_path / "student"))
    reloaded = get_pair_head(load_student(str(tmp_path / "student"))).state_dict()
    for key, value in head_after.items():
        torch.testing.assert_close(reloaded[key], value)


def test_legacy_fit_trains_the_head(tmp_path, minilm_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # fit() writes checkpoints/ under the working directory
    student = build_student(minilm_path, hidden_dim=32)
    head_before = [p.detach().clone() for p in get_pair_head(student).parameters()]
    examples = [
        InputExample(texts=[a, b], label=[float(gold), *teacher])
        for a, b, gold, teacher in zip(PAIRS["sentence1"], PAIRS["sentence2"], PAIRS["label"], PAIRS["teacher_logits"])
    ]
    loader = DataLoader(examples, batch_size=4, shuffle=True)
    loss = DSELoss(student, distillation_weight=0.5)
    student.fit(train_objectives=[(loader, loss)], epochs=1, show_progress_bar=False)
    head_after = list(get_pair_head(student).parameters())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(head_before, head_after))
    logits = get_pair_head(student).score(
        *[torch.tensor(student.encode(PAIRS[c][:4])) for c in ("sentence1", "sentence2")]
    )
    assert np.isfinite(logits.detach().numpy()).all()


@pytest.mark.parametrize("problem_type", ["binary", "multiclass"])
def test_teacher_logit_scale_scales_the_distillation_target(problem_type):
    num_labels, gold, teacher = CASES[problem_type]
    loss, logits = _loss_and_logits(num_labels, problem_type, 0.5)
    scaled = DSELoss(loss.model, distillation_weight=0.5, teacher_logit_scale=0.5)
    labels = torch.tensor([[g, *t] for g, t in zip(gold, teacher)])
    value = scaled.compute_loss_from_embeddings(EMBEDDINGS1, EMBEDDINGS2, labels)
    rows, half = logits.tolist(), [[0.5 * x for x in row] for row in teacher]
    expected = 0.5 * _hand_gold(problem_type, rows, gold) + 0.5 * _hand_distill(rows, half)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert scaled.get_config_dict()["teacher_logit_scale"] == 0.5


def test_teacher_logit_scale_is_refused_where_it_makes_no_sense():
    loss, _ = _loss_and_logits(1, "regression", 0.5)
    with pytest.raises(ValueError, match="regression"):
        DSELoss(loss.model, teacher_logit_scale=2.0)
    with pytest.raises(ValueError, match="positive"):
        DSELoss(loss.model, teacher_logit_scale=0.0)
