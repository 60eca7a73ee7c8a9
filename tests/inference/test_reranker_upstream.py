"""sentence-transformers' own CrossEncoder predict / rank / save / push tests, run on a DSEReranker.

Adapted from sentence-transformers' tests/cross_encoder/test_model.py: each test keeps the upstream name
(test_max_length adapts test_bge_reranker_max_length), with a DSEReranker built from a random-head student in place
of a pretrained CrossEncoder (so expected rankings are checked against ``predict`` rather than against a pretrained
model's order).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from datasets import Dataset
from huggingface_hub import CommitInfo, HfApi, RepoUrl
from sentence_transformers.util import fullname

from st_dse.inference.reranker import DSEReranker
from st_dse.student import build_student, load_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUERY = "A man is eating pasta."
CORPUS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
]
PAIRS = [["what is AI?", "AI is artificial intelligence."], ["what is ML?", "ML is machine learning."]]


@pytest.fixture
def nli_reranker(three_label_student):
    return DSEReranker(three_label_student)


@pytest.mark.parametrize("return_documents", [True, False], ids=["return-docs", "no-return-docs"])
def test_rank(reranker, return_documents):
    ranks = reranker.rank(query=QUERY, documents=CORPUS, return_documents=return_documents)
    if return_documents:
        assert {*CORPUS} == {rank.get("text") for rank in ranks}
    else:
        assert all("text" not in rank for rank in ranks)
    scores = reranker.predict([[QUERY, document] for document in CORPUS])
    assert [rank["corpus_id"] for rank in ranks] == np.argsort(-scores, kind="stable").tolist()


def test_rank_multiple_labels(nli_reranker):
    with pytest.raises(ValueError, match=re.escape("rank() only works for heads with num_labels=1")):
        nli_reranker.rank(query=QUERY, documents=CORPUS[:3])


def test_predict_softmax(nli_reranker):
    scores = nli_reranker.predict([(QUERY, doc) for doc in CORPUS], apply_softmax=True, convert_to_tensor=True)
    assert torch.isclose(scores.sum(1), torch.ones(len(CORPUS))).all()
    scores = nli_reranker.predict([(QUERY, doc) for doc in CORPUS], apply_softmax=False, convert_to_tensor=True)
    assert not torch.isclose(scores.sum(1), torch.ones(len(CORPUS))).all()


@pytest.mark.parametrize("model_fixture", ["reranker", "nli_reranker"])
def test_predict_single_input(model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    nested_pair_score = model.predict([[QUERY, CORPUS[0]]])
    assert isinstance(nested_pair_score, np.ndarray)
    assert nested_pair_score.shape == ((1,) if model.num_labels == 1 else (1, model.num_labels))
    pair_score = model.predict([QUERY, CORPUS[0]])
    if model.num_labels == 1:
        assert isinstance(pair_score, np.float32)
    else:
        assert isinstance(pair_score, np.ndarray) and pair_score.shape == (model.num_labels,)


@pytest.mark.parametrize(
    "inputs, singular",
    [
        (np.array(["query", "document"]), True),
        (np.array([["q1", "d1"], ["q2", "d2"]]), False),
        (np.array([], dtype=str), False),
    ],
    ids=["numpy-1d-pair", "numpy-2d-pairs", "numpy-empty"],
)
def test_is_singular_input(reranker, inputs, singular):
    assert reranker.is_singular_input(inputs) is singular


def test_predict_numpy_empty(reranker):
    scores = reranker.predict(np.array([], dtype=str), show_progress_bar=False)
    assert scores.shape == (0,) and np.array_equal(scores, reranker.predict([], show_progress_bar=False))


def test_predict_numpy_1d_pair(reranker):
    pair = np.array(PAIRS[0])
    score = reranker.predict(pair, show_progress_bar=False)
    assert isinstance(score, np.float32)
    assert np.allclose(score, reranker.predict(tuple(pair.tolist()), show_progress_bar=False))


def test_predict_numpy_2d_pairs(reranker):
    pairs = np.array(PAIRS)
    scores = reranker.predict(pairs, show_progress_bar=False)
    assert scores.shape == (2,) and np.allclose(scores, reranker.predict(pairs.tolist(), show_progress_bar=False))


def test_predict_batch_size_1(reranker):
    scores = reranker.predict(PAIRS, batch_size=1)
    assert isinstance(scores, np.ndarray) and scores.shape == (2,)
    np.testing.assert_allclose(scores, DSEReranker(reranker.model, cache_size=0).predict(PAIRS), atol=1e-6)


@pytest.mark.parametrize("convert_to_numpy", [True, False])
@pytest.mark.parametrize("convert_to_tensor", [True, False])
def test_empty_predict(reranker, convert_to_numpy, convert_to_tensor):
    result = reranker.predict([], convert_to_numpy=convert_to_numpy, convert_to_tensor=convert_to_tensor)
    if convert_to_tensor:
        assert isinstance(result, torch.Tensor) and result.numel() == 0 and result.device == reranker.device
    elif convert_to_numpy:
        assert isinstance(result, np.ndarray) and result.size == 0
    else:
        assert result == []


@pytest.mark.parametrize("convert_to_tensor", [True, False])
@pytest.mark.parametrize("convert_to_numpy", [True, False])
def test_predict_output_types(reranker, convert_to_tensor, convert_to_numpy):
    embeddings = reranker.predict(
        [["One sentence", "Another sentence"]], convert_to_tensor=convert_to_tensor, convert_to_numpy=convert_to_numpy
    )
    if convert_to_tensor:
        assert isinstance(embeddings, torch.Tensor) and embeddings[0].dtype == torch.float32
    elif convert_to_numpy:
        assert isinstance(embeddings, np.ndarray) and embeddings[0].dtype == np.float32
    else:
        assert isinstance(embeddings, list) and embeddings[0].dtype == torch.float32


@pytest.mark.parametrize("safe_serialization", [True, None])
def test_safe_serialization(reranker, safe_serialization, tmp_path):
    options = {} if safe_serialization is None else {"safe_serialization": safe_serialization}
    reranker.save_pretrained(str(tmp_path), **options)
    # The encoder's weights and the head's, both as safetensors.
    found = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.glob("**/model.safetensors"))
    assert found == ["model.safetensors", "pair_head/model.safetensors"]
    assert not list(tmp_path.glob("**/*.bin"))


def test_bfloat16(minilm_path):
    torch.manual_seed(0)
    model = DSEReranker(build_student(minilm_path, num_labels=1, hidden_dim=64)).to(torch.bfloat16)
    score = model.predict([["Hello there!", "Hello, World!"]])
    assert isinstance(score, np.ndarray) and score.dtype == np.float32
    assert isinstance(model.rank("Hello there!", ["Hello, World!", "Heya!"]), list)


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
)
def test_device_switching(minilm_path, device):
    model = DSEReranker(build_student(minilm_path, num_labels=1, hidden_dim=64, device="cpu"))
    assert model.device.type == "cpu"
    assert model.to(device) is model
    assert model.device.type == device and model.model.device.type == device
    assert model.predict(PAIRS, convert_to_tensor=True).device.type == device


def test_push_to_hub(reranker, monkeypatch):
    expected = reranker.predict(PAIRS)
    uploaded = {}

    def mock_create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def mock_upload_folder(self, **kwargs):
        uploaded.update(kwargs)
        # The folder lives only during the upload: it must be a complete student, head included.
        pushed = DSEReranker(load_student(kwargs["folder_path"]))
        np.testing.assert_allclose(pushed.predict(PAIRS), expected, atol=1e-6)
        commit_hash = "123456" if kwargs.get("revision") is None else "678901"
        commit_info_kwargs = {
            "commit_url": f"https://huggingface.co/{kwargs.get('repo_id')}/commit/{commit_hash}",
            "commit_message": "commit_message",
            "commit_description": "commit_description",
            "oid": "oid",
            "pr_url": f"https://huggingface.co/{kwargs.get('repo_id')}/discussions/123",
        }
        try:
            return CommitInfo(**commit_info_kwargs)
        except TypeError:  # newer huggingface_hub versions also need _endpoint
            return CommitInfo(**commit_info_kwargs, _endpoint=None)

    monkeypatch.setattr(HfApi, "create_repo", mock_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", mock_upload_folder)
    monkeypatch.setattr(HfApi, "create_branch", lambda self, repo_id, branch, revision=None, **kwargs: None)
    repo = "st-dse-testing/student"

    url = reranker.push_to_hub(repo, replace_model_card=True)
    assert uploaded["repo_id"] == repo and url == f"https://huggingface.co/{repo}/commit/123456"
    uploaded.clear()
    url = reranker.push_to_hub(repo, revision="revision_test", replace_model_card=True)
    assert uploaded["revision"] == "revision_test" and url == f"https://huggingface.co/{repo}/commit/678901"
    uploaded.clear()
    url = reranker.push_to_hub(repo, create_pr=True, replace_model_card=True)
    assert uploaded["repo_id"] == repo and url == f"https://huggingface.co/{repo}/discussions/123"


@pytest.mark.parametrize(
    "in_kwargs, out_kwargs",
    [
        [{"inputs": PAIRS, "num_workers": 2}, {"inputs": PAIRS}],
        [
            {"inputs": PAIRS, "activation_fct": torch.nn.Tanh(), "activation_fn": torch.nn.Identity()},
            {"inputs": PAIRS, "activation_fn": torch.nn.Identity()},
        ],
        [
            {"inputs": PAIRS, "activation_fct": torch.nn.Identity()},
            {"inputs": PAIRS, "activation_fn": torch.nn.Identity()},
        ],
        [{"sentences": PAIRS}, {"inputs": PAIRS}],
    ],
    ids=["num_workers", "activation_fct-and-activation_fn", "activation_fct", "sentences"],
)
def test_predict_rank_args_decorator(reranker, in_kwargs, out_kwargs):
    # Upstream also checks the deprecation warning; sentence-transformers logs it once per process, so whether this
    # test sees it depends on the tests run before it.
    np.testing.assert_allclose(reranker.predict(**in_kwargs), reranker.predict(**out_kwargs), atol=1e-6)


@pytest.mark.parametrize(
    "num_labels, activation_fn, saved_activation_fn",
    [
        [1, torch.nn.Sigmoid(), "torch.nn.modules.activation.Sigmoid"],
        [1, torch.nn.Identity(), "torch.nn.modules.linear.Identity"],
        [1, torch.nn.Tanh(), "torch.nn.modules.activation.Tanh"],
        [1, None, "torch.nn.modules.activation.Sigmoid"],
        [3, None, "torch.nn.modules.linear.Identity"],
    ],
)
def test_load_activation_fn_from_kwargs(
    binary_student, three_label_student, num_labels, activation_fn, saved_activation_fn, tmp_path
):
    student = binary_student if num_labels == 1 else three_label_student
    model = DSEReranker(student, activation_fn=activation_fn)
    assert fullname(model.activation_fn) == saved_activation_fn
    # Setting the activation function via a predict call only updates it for that call
    model.predict(PAIRS, activation_fn=torch.nn.Identity())
    assert fullname(model.activation_fn) == saved_activation_fn
    # The saved student carries no activation: a loaded reranker picks it from the head, or takes the one given.
    model.save(str(tmp_path / "student"))
    default = "torch.nn.modules.activation.Sigmoid" if num_labels == 1 else "torch.nn.modules.linear.Identity"
    assert fullname(DSEReranker.from_pretrained(str(tmp_path / "student")).activation_fn) == default
    loaded = DSEReranker.from_pretrained(str(tmp_path / "student"), activation_fn=torch.nn.Identity())
    assert fullname(loaded.activation_fn) == "torch.nn.modules.linear.Identity"


def test_default_activation_fn(reranker):
    assert fullname(reranker.activation_fn) == "torch.nn.modules.activation.Sigmoid"
    with pytest.warns(DeprecationWarning, match="The `default_activation_function` property was renamed"):
        assert fullname(reranker.default_activation_function) == "torch.nn.modules.activation.Sigmoid"


def test_max_length(binary_student):
    model = DSEReranker(binary_student)
    original = binary_student.max_seq_length
    try:
        model.predict(PAIRS)
        model.max_length = 8
        assert model.max_length == binary_student.max_seq_length == 8
        assert model.num_cached == 0  # embeddings of the old length are dropped
    finally:
        binary_student.max_seq_length = original


def test_predict_with_dataset_column(reranker):
    dataset = Dataset.from_dict({"text": [["This is the start of a pair.", "And this the end."], PAIRS[1]]})
    scores = reranker.predict(dataset["text"], convert_to_tensor=True)
    assert scores.shape == (2,)
    np.testing.assert_allclose(scores.numpy(), reranker.predict([list(pair) for pair in dataset["text"]]), atol=1e-6)


def test_predict_per_call_processing_kwargs(reranker):
    pair = ["this is a moderately long query sentence", "this is a moderately long candidate sentence"]
    truncated = reranker.predict([pair], processing_kwargs={"text": {"max_length": 4, "truncation": True}})
    assert not np.isclose(truncated[0], reranker.predict([pair])[0])


def test_predict_routes_through_module_call(reranker):
    calls = []
    handle = reranker.model.register_forward_hook(lambda module, args, output: calls.append(True))
    try:
        reranker.predict([["Hello there!", "Hello, World!"]])
    finally:
        handle.remove()
    assert calls, "predict() should invoke the student via __call__ (so that model.compile() applies)"
