"""CandidateIndex: exact top-k for both heads and every storage dtype, saving, memory mapping and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from st_dse import build_student, get_pair_head
from st_dse.fingerprint import model_fingerprint
from st_dse.inference.index import CandidateIndex
from st_dse.inference.storage import StoredMatrix

NUM_CANDIDATES = 60
DIM = 384
# How far a quantised candidate may move a logit of these small random heads (float32: summation order only).
SCORE_TOLERANCE = {"float32": 1e-4, "float16": 2e-3, "int8": 5e-2}

faiss = pytest.importorskip("faiss", reason="faiss-cpu is not installed: pip install faiss-cpu")
# Every search test runs on the CPU, and again on an accelerator where there is one.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.is_available() is False")
    ),
]


def _student(minilm_path: str, head_type: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return build_student(minilm_path, head_type=head_type, hidden_dim=32, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def students(minilm_path):
    return {head_type: _student(minilm_path, head_type) for head_type in ("concat", "factorized")}


@pytest.fixture(scope="module")
def candidates() -> np.ndarray:
    # Sentence-embedding-like scale (MiniLM's unnormalised embeddings have entries of about +-0.3).
    return (np.random.default_rng(0).standard_normal((NUM_CANDIDATES, DIM)) * 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def queries() -> torch.Tensor:
    return torch.from_numpy((np.random.default_rng(1).standard_normal((3, DIM)) * 0.3).astype(np.float32))


def brute_force_scores(student, queries: torch.Tensor, candidates: np.ndarray, label_index: int = 0) -> torch.Tensor:
    """Every (query, candidate) pair through PairHead.score, one pair per row: the definition of the logit."""
    head = get_pair_head(student)
    candidates = torch.as_tensor(candidates, dtype=torch.float32)
    with torch.inference_mode():
        return torch.stack(
            [head.score(query.expand(len(candidates), -1), candidates)[:, label_index] for query in queries]
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("storage_dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("head_type", ["concat", "factorized"])
def test_top_k_equals_brute_force(students, candidates, queries, head_type, storage_dtype, device):
    student = students[head_type]
    index = CandidateIndex(student, candidates, storage_dtype=storage_dtype, chunk_size=3, device=device)
    assert index.embeddings.device.type == device  # several chunks of 3 candidates
    scores, ids = index.search_embeddings(queries, top_k=5)

    # Exact with respect to what is stored (dequantised): same ids, same scores. A factorized index stores the
    # candidate-side vectors, quantised from the float32 embeddings' vectors.
    if head_type == "concat":
        stored_scores = brute_force_scores(student, queries, index.embeddings.to_float32())
    else:
        with torch.inference_mode():
            query_vectors = get_pair_head(student).query_vectors(queries)[:, 0]
        stored_scores = query_vectors @ torch.from_numpy(index.candidate_vectors.to_float32()).T
    expected_scores, expected_ids = stored_scores.topk(5, dim=1)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(scores, expected_scores, atol=1e-4, rtol=1e-5)

    # Within the dtype's tolerance of the original float32 candidates.
    tolerance = SCORE_TOLERANCE[storage_dtype]
    original = brute_force_scores(student, queries, candidates)
    torch.testing.assert_close(scores, original.gather(1, ids), atol=tolerance, rtol=0)
    kth_best = original.topk(5, dim=1).values[:, -1:]
    assert (original.gather(1, ids) >= kth_best - 2 * tolerance).all()

    # The dict API returns the same ranking; results come back on the CPU whatever the device.
    hits = index.search(queries, top_k=5)
    assert [[hit["corpus_id"] for hit in row] for row in hits] == ids.tolist()
    assert scores.device.type == "cpu" and index.score_all(queries).device.type == "cpu"


def test_factorized_index_stores_candidate_vectors(students, candidates, queries):
    student = students["factorized"]
    index = CandidateIndex(student, candidates)
    head = get_pair_head(student)
    with torch.inference_mode():
        expected = head.candidate_vectors(torch.from_numpy(candidates))[:, 0]
    np.testing.assert_allclose(index.candidate_vectors.to_float32(), expected.numpy(), atol=1e-6)
    torch.testing.assert_close(
        index.score_all(queries), brute_force_scores(student, queries, candidates), atol=1e-4, rtol=0
    )


def test_multilabel_head_ranks_by_the_chosen_label(minilm_path, candidates, queries):
    student = _student(minilm_path, "concat", num_labels=3)
    index = CandidateIndex(student, candidates, label_index=2)
    scores, ids = index.search_embeddings(queries, top_k=4)
    expected_scores, expected_ids = brute_force_scores(student, queries, candidates, label_index=2).topk(4, dim=1)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(scores, expected_scores, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_screen_returns_exact_scores(students, candidates, queries, device):
    student = students["concat"]
    exact = brute_force_scores(student, queries, candidates)
    # Rescoring every candidate: identical to exhaustive float32 search.
    full = CandidateIndex(student, candidates, rescore_k=NUM_CANDIDATES, device=device)
    scores, ids = full.search_embeddings(queries, top_k=5)
    expected_scores, expected_ids = exact.topk(5, dim=1)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(scores, expected_scores, atol=1e-4, rtol=1e-5)
    # A short rescoring list: whatever comes back carries its exact float32 score.
    short = CandidateIndex(student, candidates, rescore_k=8, device=device)
    scores, ids = short.search_embeddings(queries, top_k=5)
    torch.testing.assert_close(scores, exact.gather(1, ids), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", ["Flat", "IVF4,Flat"])
def test_prefilter_rerank_returns_exact_head_scores(students, candidates, queries, spec, device):
    student = students["concat"]
    params = "nprobe=4" if spec.startswith("IVF") else None
    index = CandidateIndex(
        student,
        candidates,
        faiss_index=spec,
        prefilter_metric="cosine",
        rerank_k=10,
        device=device,
    )
    index.faiss_params = params
    scores, ids = index.search_embeddings(queries, top_k=5)
    exact = brute_force_scores(student, queries, candidates)
    torch.testing.assert_close(scores, exact.gather(1, ids), atol=1e-4, rtol=1e-5)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    # The re-ranked candidates are the prefilter's: the 10 nearest by cosine similarity.
    normalized = torch.nn.functional.normalize(torch.from_numpy(candidates), dim=-1)
    cosine_top = (torch.nn.functional.normalize(queries, dim=-1) @ normalized.T).topk(10, dim=1).indices
    for row in range(len(queries)):
        assert set(ids[row].tolist()) <= set(cosine_top[row].tolist())
    # Re-ranking every candidate gives exhaustive search back.
    scores, ids = index.search_embeddings(queries, top_k=5, rerank_k=NUM_CANDIDATES)
    assert torch.equal(ids, exact.topk(5, dim=1).indices)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_head_surrogate_prefilter(minilm_path, candidates, queries, precision):
    student = _student(minilm_path, "concat")
    rescore_k = 6 if precision == "bfloat16" else None  # a bfloat16 screen, then float32 rescoring of the best 6
    index = CandidateIndex(student, candidates, faiss_index="Flat", rerank_k=12, rescore_k=rescore_k)
    scores, ids = index.search_embeddings(queries, top_k=5)
    exact = brute_force_scores(student, queries, candidates)
    torch.testing.assert_close(scores, exact.gather(1, ids), atol=1e-4, rtol=1e-5)
    assert index.prefilter.surrogate.query_vectors(index.head, 0, queries).shape == (3, 2 * DIM)

    # A head whose hidden units are always active and that ignores |u - v| is linear in v: the surrogate is then
    # exact up to a per-query constant, so a shortlist of exactly top_k candidates already holds the true top k.
    head = get_pair_head(student)
    with torch.no_grad():
        head.classifier[0].bias.fill_(100.0)
        head.classifier[0].weight[:, 3 * DIM :] = 0.0
    linear_index = CandidateIndex(student, candidates, faiss_index="Flat", rerank_k=5)
    exact = brute_force_scores(student, queries, candidates)
    surrogate = (
        linear_index.prefilter.surrogate.query_vectors(index.head, 0, queries)
        @ torch.from_numpy(np.concatenate([candidates, candidates**2], axis=1)).T
    )
    offsets = exact - surrogate
    torch.testing.assert_close(offsets, offsets[:, :1].expand_as(offsets), atol=2e-2, rtol=1e-4)
    assert torch.equal(linear_index.search_embeddings(queries, top_k=5)[1], exact.topk(5, dim=1).indices)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("spec", "exact"), [("Flat", True), ("HNSW8", False)])
def test_factorized_faiss_index(students, candidates, queries, spec, exact, device):
    student = students["factorized"]
    index = CandidateIndex(student, candidates, faiss_index=spec, device=device)
    scores, ids = index.search_embeddings(queries, top_k=5)
    brute = brute_force_scores(student, queries, candidates)
    torch.testing.assert_close(scores, brute.gather(1, ids), atol=1e-4, rtol=1e-5)
    if exact:
        assert torch.equal(ids, brute.topk(5, dim=1).indices)


@pytest.mark.parametrize(
    ("head_type", "storage_dtype", "spec"),
    [("concat", "float32", None), ("concat", "int8", "IVF4,Flat"), ("factorized", "float16", None)],
)
def test_save_load_round_trip_is_memory_mapped(
    students, candidates, queries, tmp_path, head_type, storage_dtype, spec
):
    student = students[head_type]
    index = CandidateIndex(student, candidates, storage_dtype=storage_dtype, faiss_index=spec, rerank_k=12)
    before = index.search_embeddings(queries, top_k=5)
    index.save(tmp_path / "index")
    loaded = CandidateIndex.load(tmp_path / "index", student)
    assert loaded.is_memory_mapped and len(loaded) == NUM_CANDIDATES
    assert loaded.storage_dtype == storage_dtype and loaded.rerank_k == 12
    if loaded.candidate_vectors is not None:
        assert isinstance(loaded.candidate_vectors.data, np.memmap)
    after = loaded.search_embeddings(queries, top_k=5)
    assert torch.equal(before[1], after[1])
    torch.testing.assert_close(before[0], after[0])
    in_memory = CandidateIndex.load(tmp_path / "index", student, mmap=False)
    assert not in_memory.is_memory_mapped
    assert torch.equal(in_memory.search_embeddings(queries, top_k=5)[1], before[1])


def test_load_refuses_another_model(students, minilm_path, candidates, tmp_path):
    CandidateIndex(students["concat"], candidates).save(tmp_path / "index")
    other = _student(minilm_path, "concat", seed=1)  # same architecture, other head weights
    with pytest.raises(ValueError, match="built with another model"):
        CandidateIndex.load(tmp_path / "index", other)
    with pytest.raises(ValueError, match="built with another model"):
        CandidateIndex.load(tmp_path / "index", students["factorized"])
    # A head that cannot even take the saved settings (label 2 of a one-label head) is another model too.
    CandidateIndex(_student(minilm_path, "concat", num_labels=3), candidates, label_index=2).save(tmp_path / "three")
    with pytest.raises(ValueError, match="built with another model"):
        CandidateIndex.load(tmp_path / "three", students["concat"])


def test_fingerprint_survives_saving_the_student(students, candidates, queries, tmp_path):
    from st_dse import load_student

    student = students["concat"]
    CandidateIndex(student, candidates).save(tmp_path / "index")
    student.save(str(tmp_path / "student"))
    reloaded = load_student(str(tmp_path / "student"), device="cpu")
    assert model_fingerprint(reloaded) == model_fingerprint(student)
    loaded = CandidateIndex.load(tmp_path / "index", reloaded)
    assert loaded.search_embeddings(queries, top_k=3)[1].shape == (3, 3)


def test_fingerprint_changes_with_weights_and_settings(minilm_path):
    student = _student(minilm_path, "concat")
    fingerprint = model_fingerprint(student)
    assert model_fingerprint(student) == fingerprint
    with torch.no_grad():
        get_pair_head(student).classifier[0].bias[0] += 1.0
    assert model_fingerprint(student) != fingerprint
    changed = model_fingerprint(student)
    student.max_seq_length = 64
    assert model_fingerprint(student) != changed


def test_wrong_query_dimension_is_refused(students, candidates, tmp_path):
    for head_type in ("concat", "factorized"):
        index = CandidateIndex(students[head_type], candidates)
        with pytest.raises(ValueError, match="Query embeddings have dimension 10"):
            index.search(np.zeros((1, 10), dtype=np.float32))
        with pytest.raises(ValueError, match="Query embeddings have dimension 768"):
            index.search_embeddings(torch.zeros(2, 768))
    index.save(tmp_path / "index")
    with pytest.raises(ValueError, match="Query embeddings have dimension 10"):
        CandidateIndex.load(tmp_path / "index", students["factorized"]).search(np.zeros(10, dtype=np.float32))


def test_bad_settings_are_refused(students, candidates, tmp_path):
    with pytest.raises(ValueError, match="storage_dtype must be one of"):
        CandidateIndex(students["concat"], candidates, storage_dtype="int4")
    with pytest.raises(ValueError, match="applies to the concat head"):
        CandidateIndex(students["factorized"], candidates, rescore_k=100)
    with pytest.raises(ValueError, match="faiss cannot build"):
        CandidateIndex(students["concat"], candidates, faiss_index="NoSuchIndex")
    with pytest.raises(ValueError, match="cannot apply the search parameters 'nprobe=4'"):
        CandidateIndex(students["concat"], candidates, faiss_index="Flat").faiss_params = "nprobe=4"
    with pytest.raises(FileNotFoundError, match="not a saved CandidateIndex"):
        CandidateIndex.load(tmp_path, students["concat"])


def test_empty_index_and_top_k_larger_than_corpus(students, queries):
    index = CandidateIndex(students["concat"], np.zeros((0, DIM), dtype=np.float32))
    assert index.search(queries, top_k=5) == [[], [], []]
    assert index.search([], top_k=5) == []
    index = CandidateIndex(students["factorized"], np.ones((2, DIM), dtype=np.float32))
    assert [len(hits) for hits in index.search(queries, top_k=5)] == [2, 2, 2]


def test_search_settings_below_one_are_refused(students, candidates, queries):
    index = CandidateIndex(students["concat"], candidates, faiss_index="Flat")
    for top_k in (0, -1):
        with pytest.raises(ValueError, match=f"top_k must be a positive integer, got {top_k}"):
            index.search_embeddings(queries, top_k=top_k)
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            index.search(["How do I learn Python?"], top_k=top_k)
    with pytest.raises(ValueError, match="rerank_k must be a positive integer, got 0"):
        index.search_embeddings(queries, rerank_k=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        index.search(["How do I learn Python?"], batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        CandidateIndex.from_sentences(students["concat"], ["a sentence"], batch_size=-2)
    with pytest.raises(ValueError, match="rerank_k must be a positive integer"):
        CandidateIndex(students["concat"], candidates, rerank_k=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        CandidateIndex(students["concat"], candidates, chunk_size=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head_type", ["concat", "factorized"])
def test_saved_index_loads_onto_either_device(students, candidates, queries, tmp_path, head_type, device):
    student = students[head_type]
    spec = "Flat"
    built = CandidateIndex(student, candidates, storage_dtype="int8", faiss_index=spec, rerank_k=12, device=device)
    expected = built.search_embeddings(queries, top_k=5)
    built.save(tmp_path / "from-device")
    CandidateIndex(student, candidates, storage_dtype="int8", faiss_index=spec, rerank_k=12).save(
        tmp_path / "from-cpu"
    )
    for folder, target in (("from-device", "cpu"), ("from-cpu", device)):
        loaded = CandidateIndex.load(tmp_path / folder, student, device=target)
        assert loaded.embeddings.device.type == target and loaded.is_memory_mapped == (target == "cpu")
        scores, ids = loaded.search_embeddings(queries, top_k=5)
        assert torch.equal(ids, expected[1])
        torch.testing.assert_close(scores, expected[0], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("head_type", ["concat", "factorized"])
def test_tensor_backed_index_searches_and_saves_like_numpy_backed(students, candidates, queries, tmp_path, head_type):
    # The accelerator code path (rows kept as a torch tensor), run on the CPU.
    student = students[head_type]
    reference = CandidateIndex(student, candidates, storage_dtype="int8", faiss_index="Flat", rerank_k=12)
    stored = reference.embeddings
    backed = StoredMatrix(torch.from_numpy(stored.data.copy()), "int8", stored.scale, stored.center)
    index = CandidateIndex(student, backed, faiss_index="Flat", rerank_k=12)
    assert isinstance(index.embeddings.data, torch.Tensor)
    for top_k in (1, 5):
        expected, got = reference.search_embeddings(queries, top_k), index.search_embeddings(queries, top_k)
        assert torch.equal(got[1], expected[1])
        torch.testing.assert_close(got[0], expected[0])
    index.save(tmp_path / "index")
    loaded = CandidateIndex.load(tmp_path / "index", student)
    assert torch.equal(loaded.search_embeddings(queries, top_k=5)[1], reference.search_embeddings(queries, top_k=5)[1])


@pytest.mark.slow
def test_from_sentences_with_a_process_pool(students):
    student = students["factorized"]
    corpus = [f"Question number {i}: how do I learn topic {i % 7}?" for i in range(24)]
    single = CandidateIndex.from_sentences(student, corpus, batch_size=8)
    pooled = CandidateIndex.from_sentences(student, corpus, batch_size=8, device=["cpu", "cpu"])
    np.testing.assert_allclose(pooled.embeddings.to_float32(), single.embeddings.to_float32(), atol=1e-5)
    query = "How do I learn topic 3?"
    assert [h["corpus_id"] for h in pooled.search(query, top_k=5)[0]] == [
        h["corpus_id"] for h in single.search(query, top_k=5)[0]
    ]
