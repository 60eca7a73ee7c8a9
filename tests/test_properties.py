"""Property tests: for any input, st_dse either gives finite numbers or refuses with its documented ValueError.

Hypothesis draws the inputs (odd unicode, None, numbers, ragged lists, NaN and infinite labels, malformed files); a
tiny randomly initialised encoder keeps every example to milliseconds.
"""

from __future__ import annotations

import math
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sentence_transformers import SentenceTransformer
from torch import nn

import st_dse
from st_dse.data import get_task, load_task
from st_dse.losses import DSELoss, check_gold_labels, pack_dse_labels
from st_dse.modules import PairHead
from tests.test_reliability import build_tiny_encoder

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EMBEDDING_DIM = 16  # the tiny encoder's


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def students(tmp_path_factory, minilm_path) -> dict[str, SentenceTransformer]:
    encoder = str(build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"), minilm_path))
    torch.manual_seed(0)
    return {
        head_type: st_dse.build_student(encoder, head_type=head_type, hidden_dim=8, device="cpu")
        for head_type in ("concat", "factorized")
    }


def _is_sentence(value) -> bool:
    """A string with a visible character: not only whitespace, control (Cc), format (Cf: zero-width) or surrogate
    (Cs) characters, and encodable as UTF-8."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return any(not char.isspace() and unicodedata.category(char) not in {"Cc", "Cf", "Cs"} for char in value)


# Text a user might pass: any unicode (control characters, combining marks, emoji, right-to-left), blank strings,
# and the non-strings that slip in from dataframes (None, NaN, numbers).
TEXT = st.text(max_size=30)
MAYBE_TEXT = st.one_of(TEXT, TEXT, TEXT, st.none(), st.integers(), st.floats(), st.just(""), st.just(" \t\n"))


# ---------------------------------------------------------------- score_pairs


SENTENCE = TEXT.filter(lambda text: bool(text.strip()))


@st.composite
def sentence_lists(draw) -> tuple[list, list]:
    """Half the time two aligned lists of real sentences, half the time anything (ragged, None, blank, numbers)."""
    if draw(st.booleans()):
        size = draw(st.integers(0, 4))
        return draw(st.lists(SENTENCE, min_size=size, max_size=size)), draw(
            st.lists(SENTENCE, min_size=size, max_size=size)
        )
    return draw(st.lists(MAYBE_TEXT, max_size=4)), draw(st.lists(MAYBE_TEXT, max_size=4))


@FAST
@given(
    sentences=sentence_lists(),
    output=st.sampled_from(["logits", "probabilities", "labels"]),
    head_type=st.sampled_from(["concat", "factorized"]),
)
def test_score_pairs_gives_finite_scores_or_a_value_error(students, sentences, output, head_type):
    sentences1, sentences2 = sentences
    valid = len(sentences1) == len(sentences2) and all(map(_is_sentence, sentences1 + sentences2))
    if not valid:
        with pytest.raises(ValueError, match=r"same length|Row \d+: the (first|second) sentence is"):
            st_dse.score_pairs(students[head_type], sentences1, sentences2, output=output)
        return
    scores = st_dse.score_pairs(students[head_type], sentences1, sentences2, output=output)
    assert scores.shape == (len(sentences1),)
    assert np.isfinite(scores).all()
    if output == "probabilities":
        assert ((scores >= 0) & (scores <= 1)).all()


# ---------------------------------------------------------------- DSELoss


class _HeadOnly(nn.Module):
    """What DSELoss needs from a student when given embeddings: a module holding a PairHead."""

    def __init__(self, head: PairHead) -> None:
        super().__init__()
        self.head = head


PROBLEMS = {"binary": 1, "multiclass": 3, "regression": 1}
GOLD = {
    "binary": st.sampled_from([0.0, 1.0, math.nan]),
    "multiclass": st.sampled_from([0.0, 1.0, 2.0, math.nan]),
    "regression": st.one_of(st.floats(-10, 10), st.just(math.nan)),
}


@st.composite
def valid_loss_inputs(draw):
    problem_type = draw(st.sampled_from(sorted(PROBLEMS)))
    num_labels = PROBLEMS[problem_type]
    batch = draw(st.integers(1, 5))
    finite = st.floats(-100, 100, width=32)
    embeddings1 = draw(arrays(np.float32, (batch, 4), elements=finite))
    embeddings2 = draw(arrays(np.float32, (batch, 4), elements=finite))
    gold = draw(st.lists(GOLD[problem_type], min_size=batch, max_size=batch))
    teacher = draw(arrays(np.float32, (batch, num_labels), elements=st.floats(-1e3, 1e3, width=32)))
    labels = np.concatenate([np.array(gold, dtype=np.float32)[:, None], teacher], axis=1)
    return problem_type, embeddings1, embeddings2, labels


def _loss(problem_type: str, head_type: str, weight: float, symmetric: bool) -> DSELoss:
    torch.manual_seed(0)
    head = PairHead(4, num_labels=PROBLEMS[problem_type], problem_type=problem_type, head_type=head_type, hidden_dim=8)
    return DSELoss(_HeadOnly(head), distillation_weight=weight, symmetric=symmetric)


@FAST
@given(
    inputs=valid_loss_inputs(),
    weight=st.floats(0, 1),
    symmetric=st.booleans(),
    head_type=st.sampled_from(["concat", "factorized"]),
)
def test_dse_loss_is_finite_and_non_negative_with_finite_gradients(inputs, weight, symmetric, head_type):
    problem_type, embeddings1, embeddings2, labels = inputs
    loss_function = _loss(problem_type, head_type, weight, symmetric)
    embeddings1 = torch.tensor(embeddings1, requires_grad=True)
    loss = loss_function.compute_loss_from_embeddings(embeddings1, torch.tensor(embeddings2), torch.tensor(labels))
    assert torch.isfinite(loss) and loss.item() >= 0
    loss.backward()
    assert torch.isfinite(embeddings1.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in loss_function.head.parameters() if p.grad is not None)


def test_batch_without_any_gold_label_still_backpropagates():
    # Found by the property test above: a constant zero without a graph made the trainer's backward() fail.
    loss_function = _loss("binary", "concat", weight=0.0, symmetric=False)
    loss = loss_function.compute_loss_from_embeddings(torch.ones(2, 4), torch.ones(2, 4), torch.full((2, 2), math.nan))
    loss.backward()
    assert loss.item() == 0


@FAST
@example(problem_type="binary", weight=1.0, labels=np.array([[0.0, 2.0**64], [0.0, 0.0], [0.0, 0.0]], np.float32))
@example(problem_type="regression", weight=0.0, labels=np.array([2.0**64, 0.0, 0.0], np.float32))
@given(
    problem_type=st.sampled_from(sorted(PROBLEMS)),
    weight=st.floats(0, 1),
    labels=arrays(
        np.float32,
        st.one_of(st.tuples(st.integers(0, 4)), st.tuples(st.integers(0, 4), st.integers(0, 5))),
        elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
    ),
)
def test_dse_loss_never_returns_nan_it_raises_a_value_error(problem_type, weight, labels):
    # Any label tensor at all (wrong shapes, NaN, infinities, out-of-range classes) for a batch of 3 pairs. Values
    # are checked where they enter (check_gold_labels, and pack_dse_labels' finite teacher logits), shapes by the loss.
    loss_function = _loss(problem_type, "concat", weight, symmetric=False)
    embeddings = torch.ones(3, 4)
    try:
        gold = labels if labels.ndim == 1 else labels[:, 0] if labels.shape[1] else []
        check_gold_labels(list(gold), problem_type, PROBLEMS[problem_type])
        if labels.ndim == 2 and labels.shape[1] > 1:
            rows = {"sentence1": ["a"] * len(labels), "sentence2": ["b"] * len(labels)}
            pack_dse_labels(Dataset.from_dict({**rows, "teacher_logits": labels[:, 1:].tolist()}), gold_column=None)
        loss = loss_function.compute_loss_from_embeddings(embeddings, -embeddings, torch.tensor(labels))
    except ValueError:
        return
    assert torch.isfinite(loss), f"labels {labels.tolist()} gave loss {loss}"


# ---------------------------------------------------------------- the task loaders

RTE_HEADER = "index\tsentence1\tsentence2\tlabel"
# A field of a well-formed row: anything but the tab and line breaks that delimit fields and rows.
FIELD = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\t\r\n"), max_size=12)


@FAST
@given(
    rows=st.lists(
        st.tuples(FIELD, FIELD, st.sampled_from(["entailment", "not_entailment", "0", "1", "ENTAILMENT"])),
        max_size=5,
    )
)
def test_well_formed_rows_load_exactly(rows):
    with tempfile.TemporaryDirectory() as folder:
        lines = [RTE_HEADER] + [f"{i}\t{first}\t{second}\t{label}" for i, (first, second, label) in enumerate(rows)]
        path = Path(folder) / "glue" / "RTE" / "train.tsv"
        path.parent.mkdir(parents=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        dataset = load_task(get_task("rte"), "train", folder)
    # Blank rows (all fields empty strings still make tabs, so none here) are the only ones a loader may drop.
    assert dataset["sentence1"] == [first for first, _, _ in rows]
    assert dataset["sentence2"] == [second for _, second, _ in rows]
    assert dataset["label"] == [0 if label.lower() in ("entailment", "0") else 1 for _, _, label in rows]


@FAST
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.lists(st.lists(st.text(max_size=8), max_size=6).map("\t".join), max_size=5).map("\n".join).map(str.encode),
    ),
    task=st.sampled_from(["rte", "stsb", "mnli", "qqp-subset"]),
)
def test_malformed_files_give_a_value_error_naming_the_file(content, task):
    from st_dse.data import get_task

    spec = get_task(task)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / spec.benchmark.local_files["train"].relative_path
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
        try:
            dataset = load_task(spec, "train", folder)
        except ValueError as error:
            assert str(path) in str(error)
            return
    assert dataset.column_names == ["sentence1", "sentence2", "label"]
    assert all(isinstance(text, str) for text in [*dataset["sentence1"], *dataset["sentence2"]])
    assert all(math.isfinite(label) for label in dataset["label"])


# ---------------------------------------------------------------- the candidate index

FINITE_EMBEDDING = st.floats(-50, 50, width=32)


@FAST
@given(
    candidates=arrays(np.float32, st.tuples(st.integers(0, 6), st.just(EMBEDDING_DIM)), elements=FINITE_EMBEDDING),
    queries=arrays(np.float32, st.tuples(st.integers(1, 3), st.just(EMBEDDING_DIM)), elements=FINITE_EMBEDDING),
    top_k=st.integers(-1, 8),
    head_type=st.sampled_from(["concat", "factorized"]),
)
def test_index_returns_the_exact_top_k_with_finite_scores(students, candidates, queries, top_k, head_type):
    index = st_dse.CandidateIndex(students[head_type], candidates)
    if top_k < 1:
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            index.search(queries, top_k=top_k)
        return
    hits = index.search(queries, top_k=top_k)
    assert len(hits) == len(queries)
    expected_k = min(top_k, len(candidates))
    all_scores = index.score_all(torch.tensor(queries)).numpy() if len(candidates) else np.zeros((len(queries), 0))
    assert np.isfinite(all_scores).all()
    for row, query_hits in enumerate(hits):
        assert len(query_hits) == expected_k
        scores = [hit["score"] for hit in query_hits]
        ids = [hit["corpus_id"] for hit in query_hits]
        assert np.isfinite(scores).all() and scores == sorted(scores, reverse=True)
        assert len(set(ids)) == len(ids) and all(0 <= i < len(candidates) for i in ids)
        # Exact search: the k-th best score equals the k-th largest of all scores.
        np.testing.assert_allclose(scores, np.sort(all_scores[row])[::-1][:expected_k], rtol=1e-4, atol=1e-4)


@FAST
@given(
    dim=st.integers(1, 40).map(lambda d: d + 1 if d == EMBEDDING_DIM else d),
    queries=st.lists(MAYBE_TEXT, max_size=3),
)
def test_index_refuses_wrong_dimensions_and_bad_queries(students, dim, queries):
    with pytest.raises(ValueError, match="another model"):
        st_dse.CandidateIndex(students["concat"], np.zeros((3, dim), dtype=np.float32))
    index = st_dse.CandidateIndex(students["concat"], np.ones((3, EMBEDDING_DIM), dtype=np.float32))
    with pytest.raises(ValueError, match=f"dimension {dim}"):
        index.search(np.zeros((2, dim), dtype=np.float32))
    if all(map(_is_sentence, queries)):
        hits = index.search(queries, top_k=2)
        assert len(hits) == len(queries) and all(len(query_hits) == 2 for query_hits in hits)
    else:
        with pytest.raises(ValueError, match=r"Row \d+: the (first|second) query is"):
            index.search(queries, top_k=2)
