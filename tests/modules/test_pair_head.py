from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import st_dse
from st_dse.integrity import CorruptFileError
from st_dse.modules.pair_head import PairHead
from st_dse.student import add_pair_head, build_student, get_pair_head, load_student

SENTENCES = ["A man is playing a guitar.", "Someone plays the guitar.", "A woman slices an onion.", "It is raining."]


def _randomise(head: PairHead, seed: int = 0) -> None:
    # A fresh head has a zero-initialised bias here and there; random values make the round trip check every weight.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


@pytest.mark.parametrize(
    ("head_type", "num_labels"), [("concat", 1), ("factorized", 1), ("concat", 3), ("factorized", 3)]
)
def test_save_reload_round_trip(tmp_path, minilm_path, head_type, num_labels):
    student = build_student(minilm_path, num_labels=num_labels, head_type=head_type, hidden_dim=64)
    _randomise(get_pair_head(student))
    student.save(str(tmp_path))

    assert (tmp_path / "pair_head" / "model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.bin"))
    # A standard sentence-transformers folder: the encoder loads with no flag, and without the head.
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert all(entry["type"].startswith("sentence_transformers.") for entry in modules)
    encoder = SentenceTransformer(str(tmp_path))
    assert not any(isinstance(module, PairHead) for module in encoder)
    np.testing.assert_allclose(encoder.encode(SENTENCES), student.encode(SENTENCES), atol=1e-6)
    for reloaded in (load_student(str(tmp_path)), st_dse.student.DSEStudent(str(tmp_path))):
        head, reloaded_head = get_pair_head(student), get_pair_head(reloaded)
        assert reloaded_head.get_config_dict() == head.get_config_dict()
        np.testing.assert_allclose(reloaded.encode(SENTENCES), student.encode(SENTENCES), atol=1e-6)
        expected = st_dse.score_pairs(student, SENTENCES[:2], SENTENCES[2:])
        np.testing.assert_allclose(st_dse.score_pairs(reloaded, SENTENCES[:2], SENTENCES[2:]), expected, atol=1e-6)


def test_head_leaves_encode_unchanged(minilm_path):
    model = SentenceTransformer(minilm_path)
    before = model.encode(SENTENCES)
    head = add_pair_head(model, num_labels=1)
    _randomise(head)
    np.testing.assert_array_equal(model.encode(SENTENCES), before)
    assert model.get_embedding_dimension() == 384


def test_build_student_drops_normalize_unless_asked(minilm_path, tmp_path):
    plain = build_student(minilm_path)
    kept = build_student(minilm_path, keep_normalize=True)
    assert not any(type(module).__name__ == "Normalize" for module in plain)
    assert any(type(module).__name__ == "Normalize" for module in kept)
    # Cosine similarities, what MTEB measures, do not depend on the dropped normalisation.
    a, b = plain.encode(SENTENCES[:2]), kept.encode(SENTENCES[:2])
    cosine = (a[0] @ a[1]) / np.linalg.norm(a[0]) / np.linalg.norm(a[1])
    np.testing.assert_allclose(cosine, b[0] @ b[1], atol=1e-5)
    # The saved config names cosine, so tools that read it do not take dot products of unnormalised vectors.
    plain.save(str(tmp_path / "plain"))
    saved = json.loads((tmp_path / "plain" / "config_sentence_transformers.json").read_text())
    assert saved["similarity_fn_name"] == "cosine"


@pytest.mark.parametrize("head_type", ["concat", "factorized"])
@pytest.mark.parametrize("num_labels", [1, 3])
def test_score_all_matches_pairwise_score(head_type, num_labels):
    torch.manual_seed(0)
    head = PairHead(16, num_labels=num_labels, head_type=head_type, hidden_dim=32).eval()
    queries, candidates = torch.randn(3, 16), torch.randn(5, 16)
    all_scores = head.score_all(queries, candidates)
    assert all_scores.shape == (3, 5, num_labels)
    for q in range(3):
        pairwise = head.score(queries[q].expand(5, -1), candidates)
        torch.testing.assert_close(all_scores[q], pairwise, atol=1e-5, rtol=1e-5)


def test_factorized_vectors_give_the_logit():
    torch.manual_seed(1)
    head = PairHead(8, num_labels=2, head_type="factorized", hidden_dim=16, rank=4)
    u, v = torch.randn(6, 8), torch.randn(6, 8)
    assert head.query_vectors(u).shape == (6, 2, 6)
    inner = (head.query_vectors(u) * head.candidate_vectors(v)).sum(-1)
    torch.testing.assert_close(inner, head.score(u, v))
    with pytest.raises(ValueError, match="only for head_type='factorized'"):
        PairHead(8).query_vectors(u)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_labels": 3, "problem_type": "binary"}, "does not fit problem_type"),
        ({"num_labels": 1, "problem_type": "multiclass"}, "does not fit problem_type"),
        ({"num_labels": 0}, "does not fit problem_type"),
        ({"head_type": "bilinear"}, "head_type must be one of"),
        ({"problem_type": "ranking"}, "problem_type must be one of"),
        ({"num_labels": 3, "label_names": ["a", "b"]}, "Expected 3 label_names"),
    ],
)
def test_invalid_head_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PairHead(8, **kwargs)


def test_wrong_embedding_dimension_is_refused():
    head = PairHead(8)
    with pytest.raises(ValueError, match="expects embeddings of dimension 8, got 5"):
        head.score(torch.randn(2, 5), torch.randn(2, 5))
    with pytest.raises(ValueError, match="same shape"):
        head.score(torch.randn(2, 8), torch.randn(3, 8))


def test_model_without_head_gets_a_clear_error(minilm_path):
    with pytest.raises(ValueError, match="has no PairHead"):
        get_pair_head(SentenceTransformer(minilm_path))


def test_second_head_is_refused(minilm_path):
    student = build_student(minilm_path)
    with pytest.raises(ValueError, match="already has a PairHead"):
        add_pair_head(student)


@pytest.fixture
def saved_student(tmp_path, minilm_path):
    build_student(minilm_path, hidden_dim=32).save(str(tmp_path))
    return tmp_path


def test_missing_head_weights_name_the_file(saved_student):
    (saved_student / "pair_head" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        load_student(str(saved_student))
    (saved_student / "pair_head" / "checksums.json").unlink()  # without a manifest the loader names it too
    with pytest.raises(FileNotFoundError, match=r"pair_head/model\.safetensors"):
        load_student(str(saved_student))


def test_missing_head_config_names_the_file(saved_student):
    (saved_student / "pair_head" / "config.json").unlink()
    (saved_student / "pair_head" / "checksums.json").unlink()
    with pytest.raises(ValueError, match=r"no PairHead"):  # no head config: a plain encoder folder
        load_student(str(saved_student))


def test_head_weights_not_matching_config_name_the_file(saved_student):
    config_path = saved_student / "pair_head" / "config.json"
    config = json.loads(config_path.read_text())
    config["hidden_dim"] = 48
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"pair_head.*config\.json"):  # the checksum catches the edit
        load_student(str(saved_student))
    (saved_student / "pair_head" / "checksums.json").unlink()
    with pytest.raises(ValueError, match=r"pair_head/model\.safetensors.*do not match"):
        load_student(str(saved_student))


def test_head_sizes_are_checked_against_the_weights_header_before_anything_is_allocated(saved_student, monkeypatch):
    config_path = saved_student / "pair_head" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "hidden_dim": 3_000_000}))
    (saved_student / "pair_head" / "checksums.json").unlink()  # as if the checksums had been updated to match
    devices, build = [], PairHead.__init__

    def recording_init(self, *args, **kwargs):
        devices.append(torch.get_default_device().type)
        build(self, *args, **kwargs)

    monkeypatch.setattr(PairHead, "__init__", recording_init)
    with pytest.raises(ValueError, match="layer sizes are not those of the saved weights"):
        load_student(str(saved_student))
    assert devices == ["meta"]  # 18 GB of layers never built


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "config.json", "1_Pooling/config.json"])
def test_a_changed_encoder_file_is_named_on_load(saved_student, name):
    path = saved_student / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1  # one bit: same size, other bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=f"{name} has SHA-256"):
        load_student(str(saved_student))
    if name == "model.safetensors":  # still loadable: an opt-out for weights one changed knowingly
        load_student(str(saved_student), verify="size")


def test_an_edited_model_card_still_loads(saved_student):
    (saved_student / "README.md").write_text("# My student\n")
    assert len(load_student(str(saved_student))) == 3


def test_load_student_refuses_foreign_code(saved_student):
    modules_path = saved_student / "modules.json"
    modules = json.loads(modules_path.read_text())
    modules[-1]["type"] = "evil_package.Backdoor"
    modules_path.write_text(json.dumps(modules))
    with pytest.raises(CorruptFileError, match="modules.json"):  # the checksums name the edited file first
        load_student(str(saved_student))
    (saved_student / "checksums.json").unlink()  # a folder from elsewhere: the refusal of foreign code names it
    with pytest.raises(ValueError, match="evil_package.Backdoor"):
        load_student(str(saved_student))


def test_top_layers_pooling_is_the_mean_of_the_concatenated_last_layers(tmp_path, minilm_path):
    student = build_student(minilm_path, pooling_layers=4, hidden_dim=32)
    assert student.get_embedding_dimension() == 4 * 384
    assert get_pair_head(student).in_features == 4 * 384
    embeddings = student.encode(SENTENCES[:2], convert_to_tensor=True)

    # By hand: the last 4 hidden states, concatenated per token, averaged over the real (unpadded) tokens.
    encoder = SentenceTransformer(minilm_path)
    features = encoder.preprocess(SENTENCES[:2])
    with torch.no_grad():
        hidden = (
            encoder[0]
            .auto_model(
                input_ids=features["input_ids"], attention_mask=features["attention_mask"], output_hidden_states=True
            )
            .hidden_states
        )
    tokens = torch.cat(hidden[-4:], dim=-1)
    mask = features["attention_mask"].unsqueeze(-1).float()
    expected = (tokens * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)

    _randomise(get_pair_head(student))
    student.save(str(tmp_path))
    # TopLayersConcat is st_dse's own module: plain sentence-transformers refuses it without trust_remote_code.
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(tmp_path))
    for reloaded in (load_student(str(tmp_path)),):
        assert [type(module).__name__ for module in reloaded] == [type(module).__name__ for module in student]
        np.testing.assert_allclose(reloaded.encode(SENTENCES), student.encode(SENTENCES), atol=1e-5)
        scores = st_dse.score_pairs(student, SENTENCES[:2], SENTENCES[2:])
        np.testing.assert_allclose(st_dse.score_pairs(reloaded, SENTENCES[:2], SENTENCES[2:]), scores, atol=1e-5)


def test_top_layers_pooling_errors_are_clear(minilm_path):
    with pytest.raises(ValueError, match="only 6 layers"):
        build_student(minilm_path, pooling_layers=7)
    with pytest.raises(ValueError, match="must be >= 1"):
        build_student(minilm_path, pooling_layers=0)
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        st_dse.TopLayersConcat(0)
    with pytest.raises(ValueError, match="output_hidden_states = True"):
        st_dse.TopLayersConcat(2)({"token_embeddings": torch.zeros(1, 3, 4)})
