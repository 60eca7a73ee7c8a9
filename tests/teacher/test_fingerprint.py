"""The teacher fingerprint (the teacher-logit cache's key) changes with everything that changes a teacher's logits."""

from __future__ import annotations

import copy

import pytest
import torch
from sentence_transformers import CrossEncoder
from tokenizers import normalizers

from st_dse.teacher import teacher_fingerprint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher(minilm_path) -> CrossEncoder:
    torch.manual_seed(0)  # the classifier on top of the packaged encoder is freshly initialised
    return CrossEncoder(minilm_path, num_labels=1, device="cpu")


def _nudge_weight(teacher: CrossEncoder) -> None:
    with torch.no_grad():
        teacher[0].auto_model.classifier.bias += 1.0


def _change_model_config(teacher: CrossEncoder) -> None:
    teacher[0].auto_model.config.hidden_act = "relu"


def _change_module_config(teacher: CrossEncoder) -> None:
    teacher[0].unpad_inputs = False  # written to sentence_bert_config.json


def _add_prompt(teacher: CrossEncoder) -> None:
    teacher.prompts = {"pair": "Are these paraphrases? "}


def _set_default_prompt(teacher: CrossEncoder) -> None:
    teacher.prompts = {"pair": "Are these paraphrases? "}
    teacher.default_prompt_name = "pair"


def _change_activation(teacher: CrossEncoder) -> None:
    teacher.activation_fn = torch.nn.Identity()


def _stop_lowercasing(teacher: CrossEncoder) -> None:
    teacher.tokenizer.backend_tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)


def _add_special_token(teacher: CrossEncoder) -> None:
    teacher.tokenizer.add_special_tokens({"additional_special_tokens": ["[QUERY]"]})


def _shorten(teacher: CrossEncoder) -> None:
    teacher.max_seq_length = 64


@pytest.mark.parametrize(
    "change",
    [
        _nudge_weight,
        _change_model_config,
        _change_module_config,
        _add_prompt,
        _set_default_prompt,
        _change_activation,
        _stop_lowercasing,
        _add_special_token,
        _shorten,
    ],
)
def test_each_change_gives_a_new_fingerprint(teacher, change):
    changed = copy.deepcopy(teacher)
    assert teacher_fingerprint(changed) == teacher_fingerprint(teacher)
    change(changed)
    assert teacher_fingerprint(changed) != teacher_fingerprint(teacher)


def test_prompts_are_told_apart_from_one_another(teacher):
    first, second = copy.deepcopy(teacher), copy.deepcopy(teacher)
    first.prompts, second.prompts = {"pair": "Paraphrase? "}, {"pair": "Same meaning? "}
    assert teacher_fingerprint(first) != teacher_fingerprint(second)


def test_the_same_teacher_loaded_twice_or_saved_and_reloaded_keeps_it(teacher, minilm_path, tmp_path):
    torch.manual_seed(0)
    assert teacher_fingerprint(CrossEncoder(minilm_path, num_labels=1, device="cpu")) == teacher_fingerprint(teacher)
    tuned = copy.deepcopy(teacher)
    tuned.max_seq_length = 128
    tuned.prompts = {"pair": "Are these paraphrases? "}
    tuned.predict([("A man plays.", "Someone plays.")])  # a call sets the tokenizer's padding and truncation
    tuned.save(str(tmp_path / "teacher"))
    reloaded = CrossEncoder(str(tmp_path / "teacher"), device="cpu")
    reloaded.predict([("A man plays.", "Someone plays.")] * 3, batch_size=2)
    assert teacher_fingerprint(reloaded) == teacher_fingerprint(tuned)
