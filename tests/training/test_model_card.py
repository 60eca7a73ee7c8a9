"""The saved student's model card: true names, dev metrics, license, and usage snippets that run as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

import st_dse
from st_dse.data import get_task
from st_dse.data.tasks import custom_task
from st_dse.hub import DEFAULT_MODEL
from st_dse.training import distill_student, save_student
from st_dse.training.config import DistillConfig
from st_dse.training.evaluator import PairTaskEvaluator
from st_dse.training.model_card import (
    HUB_TASK_TYPES,
    MODEL_PATH_PLACEHOLDER,
    DSEModelCardData,
    hub_model_id,
    model_display_name,
)

PAIRS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8, 4.6),
    ("A dog runs in the park.", "A cat sleeps on the sofa.", 0.8, 1.1),
    ("The chef is cooking pasta.", "A cook prepares spaghetti.", 3.6, 3.2),
    ("A plane is taking off.", "An airplane departs from the runway.", 4.2, 4.0),
    ("The baby is crying.", "Bananas are rich in potassium.", 0.0, 0.3),
    ("Two men are fighting.", "Two men are shaking hands.", 1.4, 1.9),
    ("She is reading a book.", "He is writing a letter.", 1.0, 1.3),
    ("The children are singing.", "The kids sing a song.", 4.3, 4.1),
]
RESULTS_METRICS = {"student": {"spearman": 71.25, "pearson": 70.5}, "teacher": {"spearman": 88.75, "pearson": 87.5}}


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n", 2)[1])


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, re.DOTALL)


def run_block(block: str, number: int) -> dict:
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, f"README.md#{number}", "exec"), namespace)
    return namespace


def sample_tables(card: str) -> list[str]:
    return re.findall(r"\* Samples:\n((?:  \|.*\n)+)", card)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, minilm_path, one_torch_thread):
    """A student trained for a few steps on packed DSE labels and saved with an absolute-path teacher folder."""
    work = tmp_path_factory.mktemp("card")
    teacher = work / "teachers" / "stsb-teacher"
    teacher.mkdir(parents=True)
    columns = {
        "sentence1": [pair[0] for pair in PAIRS],
        "sentence2": [pair[1] for pair in PAIRS],
        "label": [pair[2] for pair in PAIRS],
    }
    train = datasets.Dataset.from_dict({**columns, "teacher_logits": [[pair[3]] for pair in PAIRS]})
    config = DistillConfig(student=minilm_path, epochs=1, batch_size=4, seed=0)
    student = distill_student(get_task("stsb"), train, datasets.Dataset.from_dict(columns), work / "ckpt", config)
    results = {"student_base": minilm_path, "metrics": RESULTS_METRICS}
    save_student(student, work / "student", get_task("stsb"), str(teacher), results)
    return work, work / "student", (work / "student" / "README.md").read_text(encoding="utf-8")


def test_card_names_the_public_base_model_the_teacher_folder_and_the_task(saved):
    work, _, card = saved
    meta = front_matter(card)
    assert meta["base_model"] == DEFAULT_MODEL  # loaded from the packaged copy, shown by its public id
    assert f"finetuned from [{DEFAULT_MODEL}](https://huggingface.co/{DEFAULT_MODEL})" in card
    assert "Unknown" not in card.split("### Model Sources")[0]
    assert "**Teacher:** `stsb-teacher` (a local model folder)" in card
    assert str(work) not in card  # no path of this machine anywhere
    assert "Unnamed Dataset" not in card
    assert "#### stsb\n" in card and "- **Training data:** stsb, train split;" in card
    assert meta["model-index"][0]["name"] == "DSE student for stsb"


def test_card_metadata_names_the_data_the_task_type_and_the_architecture(saved):
    _, _, card = saved
    meta = front_matter(card)
    assert meta["datasets"] == ["nyu-mll/glue"]  # the registered task's Hub dataset
    assert "* Dataset: [stsb](https://huggingface.co/datasets/nyu-mll/glue)" in card
    assert "st_dse" in meta["tags"]
    assert not [tag for tag in meta["tags"] if tag.startswith("teacher:")]  # a local teacher folder has no public id
    (result,) = meta["model-index"][0]["results"]
    assert result["task"] == {"type": "sentence-similarity", "name": "Sentence Similarity"}
    assert result["dataset"] == {
        "name": "stsb validation",
        "type": "nyu-mll/glue",
        "config": "stsb",
        "split": "validation",
    }
    architecture = card.split("### Full Model Architecture", 1)[1].split("```", 2)[1]
    assert "PairHead(" in architecture and "'problem_type': 'regression'" in architecture


def test_classification_results_are_filed_as_text_classification():
    task = get_task("mrpc")
    dev = datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [1]})
    card = DSEModelCardData(model_name="DSE student for mrpc", pair_task_type=HUB_TASK_TYPES[task.problem_type])
    card.eval_results_dict = {PairTaskEvaluator(task, dev): {"mrpc_dev_accuracy": 80.0, "mrpc_dev_f1": 85.0}}
    (result,) = card.format_eval_metrics()["model-index"][0]["results"]
    assert result["task"] == {"type": "text-classification", "name": "Text Classification"}


def test_card_has_license_language_and_install_line(saved):
    _, _, card = saved
    meta = front_matter(card)
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]
    assert "- **License:** apache-2.0" in card and "- **Language:** en" in card
    assert "```bash\npip install -U st_dse sentence-transformers\n```" in card


def test_metrics_say_they_are_dev_metrics(saved):
    _, _, card = saved
    section = card.split("### Dev metrics", 1)[1].split("###", 1)[0]
    assert "On the dev split (stsb validation)" in section
    assert "| student (this model) | 70.50 | 71.25 |" in section
    assert "| teacher | 87.50 | 88.75 |" in section
    assert "stsb_dev_spearman" in card  # the trainer's own evaluation is named by its split too


def test_sample_tables_show_no_packed_labels(saved):
    _, _, card = saved
    tables = sample_tables(card)
    assert tables, "the trainer's card lists training samples"
    for table in tables:
        assert "label" not in table.splitlines()[0]
        assert not re.search(r"<code>\[[-\d.e, nan]*\]</code>", table)
    for _, _, gold, teacher_logit in PAIRS:
        assert f"[{gold}, {teacher_logit}]" not in card
    assert "`[gold, *teacher_logits]`" in card  # what the label column held is explained instead


def test_usage_snippets_run_against_the_saved_folder(saved, monkeypatch):
    _, folder, card = saved
    blocks = [block for block in python_blocks(card) if MODEL_PATH_PLACEHOLDER in block]
    assert len(blocks) == 3  # sentence-transformers' Direct Usage, st_dse's pair scoring and its reranking
    assert "SentenceTransformer(" in blocks[0]
    assert "st_dse.load_student(" in blocks[1] and "st_dse.score_pairs(" in blocks[1]
    assert "SentenceTransformer(" in blocks[1]
    assert "st_dse.DSEReranker.from_pretrained(" in blocks[2] and "reranker.rank(" in blocks[2]
    monkeypatch.chdir(folder.parent)
    namespaces = [
        run_block(block.replace(MODEL_PATH_PLACEHOLDER, str(folder)), number) for number, block in enumerate(blocks)
    ]
    printed = re.search(r"print\(scores\)\n# \[(.*)\]", blocks[1]).group(1)
    np.testing.assert_allclose(namespaces[1]["scores"], np.array(printed.split(), dtype=float), atol=1e-3)
    ranking = namespaces[2]["ranking"]
    assert sorted(result["corpus_id"] for result in ranking) == [0, 1]
    assert ranking[0]["score"] >= ranking[1]["score"]


def test_snippets_load_a_relative_folder_as_named_and_the_hub_id_once_pushed(tmp_path, minilm_path, monkeypatch):
    student = st_dse.build_student(minilm_path, num_labels=3, problem_type="multiclass")
    task = get_task("mnli")
    monkeypatch.chdir(tmp_path)
    save_student(student, Path("runs") / "student", task, None, {})
    card = (tmp_path / "runs" / "student" / "README.md").read_text(encoding="utf-8")
    assert MODEL_PATH_PLACEHOLDER not in card and str(tmp_path) not in card
    assert 'SentenceTransformer("runs/student")' in card
    assert "DSEReranker" not in card  # rank() needs a one-logit head
    (block,) = [block for block in python_blocks(card) if "st_dse.score_pairs(" in block]
    assert 'st_dse.load_student("runs/student")' in block
    assert np.asarray(run_block(block, 0)["scores"]).shape == (2, 3)  # runs as written, from where it was saved
    save_student(student, tmp_path / "pushed", task, None, {}, model_id="my-org/dse-student")
    card = (tmp_path / "pushed" / "README.md").read_text(encoding="utf-8")
    assert MODEL_PATH_PLACEHOLDER not in card and "runs/student" not in card
    assert 'SentenceTransformer("my-org/dse-student")' in card and 'load_student("my-org/dse-student")' in card


def test_own_pairs_are_named_by_their_file_and_an_untrained_student_gets_its_own_card(tmp_path, minilm_path):
    student = st_dse.build_student(minilm_path)
    task = custom_task("binary", 1, ("different", "same"), "your own pairs, binary", "custom")
    settings = {"train_file": str(tmp_path / "data" / "my_pairs.csv"), "dev_file": str(tmp_path / "my_dev.csv")}
    save_student(student, tmp_path / "student", task, "cross-encoder/quora-distilroberta-base", {"settings": settings})
    card = (tmp_path / "student" / "README.md").read_text(encoding="utf-8")
    assert "# DSE student for my_pairs.csv" in card and "- **Training data:** my_pairs.csv" in card
    assert "**Teacher:** [cross-encoder/quora-distilroberta-base](https://huggingface.co/cross-encoder/quora" in card
    meta = front_matter(card)
    assert meta["base_model"] == DEFAULT_MODEL
    assert "teacher:cross-encoder/quora-distilroberta-base" in meta["tags"]
    assert "datasets" not in meta  # your own file has no Hub id
    assert "No dev metrics were recorded" in card
    assert "class 1 (`same`) when it is above 0" in card
    assert str(tmp_path) not in card
    assert "# all-MiniLM-L6-v2\n" not in card and "s2orc" not in card  # not the base model's card, reused


def test_model_names(tmp_path, minilm_path):
    assert hub_model_id(minilm_path) == DEFAULT_MODEL
    assert hub_model_id("all-MiniLM-L6-v2") == DEFAULT_MODEL
    assert hub_model_id("cross-encoder/stsb-roberta-base") == "cross-encoder/stsb-roberta-base"
    folder = tmp_path / "my-teacher"
    folder.mkdir()
    assert hub_model_id(folder) is None and model_display_name(folder) == "my-teacher"
    snapshot = tmp_path / "hub" / "models--cross-encoder--nli-deberta-v3-base" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    assert hub_model_id(snapshot) == "cross-encoder/nli-deberta-v3-base"
    assert model_display_name(None) is None
    assert Path(model_display_name(f"{tmp_path}/gone/teacher")).name == "teacher"
