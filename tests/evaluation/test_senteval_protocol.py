"""Tests for st_dse.senteval: SentEval's file layout, classifiers and STS aggregation, with a hashing bag-of-words
encoder so every number can be recomputed by hand (plus one slow check with the real all-MiniLM-L6-v2)."""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score

from evaluation.senteval_protocol import (
    STS_DATASETS,
    CachedEncoder,
    canonical_task_name,
    cosine_similarities,
    kfold_classification,
    load_trec,
    pair_features,
    relatedness_target_distribution,
    results_to_markdown,
    run_senteval,
    train_relatedness_regressor,
)
from tests.conftest import REPO_ROOT


class HashingEncoder:
    """Deterministic bag-of-words: token counts hashed into ``dim`` buckets. Records every sentence it encodes."""

    def __init__(self, dim: int = 128):
        self.dim = dim
        self.encoded: list[str] = []

    def encode(self, sentences: list[str]) -> np.ndarray:
        self.encoded.extend(sentences)
        vectors = np.zeros((len(sentences), self.dim), dtype=np.float32)
        for row, sentence in enumerate(sentences):
            for token in sentence.split():
                vectors[row, zlib.crc32(token.encode()) % self.dim] += 1.0
        return vectors


VOCABULARY = [f"w{index}" for index in range(300)]


def random_sentence(rng: random.Random, length: int = 6) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(length))


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


def write_sts12(data_dir: Path, rng: random.Random) -> dict[str, tuple[list[str], list[str], list[float]]]:
    """STS12 in SentEval's layout; every dataset has a different size and one pair without gold (an empty line)."""
    year_dir = data_dir / "downstream" / "STS" / "STS12-en-test"
    kept = {}
    for size, dataset in zip((12, 20, 9, 15, 30), STS_DATASETS["STS12"]):
        first, second, gold_lines = [], [], []
        for _ in range(size):
            sentence = random_sentence(rng)
            # Keep a random number of words so similarity and gold are correlated but not perfectly.
            shared = rng.randint(0, 6)
            first.append(sentence)
            second.append(" ".join(sentence.split()[:shared] + random_sentence(rng, 6 - shared).split()))
            gold_lines.append(f"{shared * 5 / 6 + rng.uniform(-0.8, 0.8):.3f}")
        gold_lines[3] = ""  # no gold score: SentEval skips the pair
        write_lines(year_dir / f"STS.input.{dataset}.txt", [f"{a}\t{b}" for a, b in zip(first, second)])
        write_lines(year_dir / f"STS.gs.{dataset}.txt", gold_lines)
        keep = [index for index, gold in enumerate(gold_lines) if gold]
        kept[dataset] = ([first[i] for i in keep], [second[i] for i in keep], [float(gold_lines[i]) for i in keep])
    return kept


def write_mr(data_dir: Path, positives: list[str], negatives: list[str]) -> None:
    write_lines(data_dir / "downstream" / "MR" / "rt-polarity.pos", positives, "latin-1")
    write_lines(data_dir / "downstream" / "MR" / "rt-polarity.neg", negatives, "latin-1")


def test_sts_correlations_match_scipy_and_all_aggregates_match_hand_computation(tmp_path):
    kept = write_sts12(tmp_path, random.Random(0))
    encoder = HashingEncoder()
    results = run_senteval(encoder, tmp_path, tasks=["STS12"], show_progress_bar=False)["STS12"]

    for dataset, (first, second, gold) in kept.items():
        reference = HashingEncoder()
        u, v = reference.encode(first), reference.encode(second)
        cosines = (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
        assert results[dataset]["nsamples"] == len(gold)
        assert results[dataset]["spearman"] == pytest.approx(spearmanr(cosines, gold)[0], abs=1e-9)
        assert results[dataset]["pearson"] == pytest.approx(pearsonr(cosines, gold)[0], abs=1e-6)

    spearmans = [results[dataset]["spearman"] for dataset in kept]
    sizes = [len(kept[dataset][2]) for dataset in kept]
    assert results["all"]["spearman"]["mean"] == pytest.approx(sum(spearmans) / len(spearmans))
    weighted = sum(size * value for size, value in zip(sizes, spearmans)) / sum(sizes)
    assert results["all"]["spearman"]["wmean"] == pytest.approx(weighted)
    assert results["all"]["spearman"]["wmean"] != pytest.approx(results["all"]["spearman"]["mean"])
    assert "STS12" in results_to_markdown({"STS12": results})


def write_relatedness_split(data_dir: Path, split: str, rng: random.Random, size: int = 25) -> tuple[list, list]:
    """One split of STSBenchmark (scores 0-5) and SICK (scores 1-5) with the same pairs; returns pairs and scores."""
    pairs = [(random_sentence(rng), random_sentence(rng)) for _ in range(size)]
    scores = [rng.uniform(0, 5) for _ in pairs]
    write_lines(
        data_dir / "downstream" / "STS" / "STSBenchmark" / f"sts-{split}.csv",
        [
            f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s:.3f}\t{a}\t{b}"
            for i, ((a, b), s) in enumerate(zip(pairs, scores))
        ],
    )
    sick_file = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}[split]
    sick_rows = [f"{i}\t{a}\t{b}\t{1 + 0.8 * s:.1f}\tNEUTRAL" for i, ((a, b), s) in enumerate(zip(pairs, scores))]
    write_lines(data_dir / "downstream" / "SICK" / sick_file, ["pair_ID\tsentence_A\tsentence_B\tx\ty"] + sick_rows)
    return pairs, scores


def test_stsbenchmark_and_sick_relatedness_use_cosine_on_their_test_files(tmp_path):
    pairs, scores = write_relatedness_split(tmp_path, "test", random.Random(1))

    # Only the test files exist: the cosine protocol must not need train/dev.
    results = run_senteval(HashingEncoder(), tmp_path, tasks=["STS-B", "SICK-R"], show_progress_bar=False)
    u, v = HashingEncoder().encode([a for a, _ in pairs]), HashingEncoder().encode([b for _, b in pairs])
    cosines = cosine_similarities(u, v)
    stsb_gold = [round(score, 3) for score in scores]
    sick_gold = [round(1 + 0.8 * score, 1) for score in scores]
    assert results["STSBenchmark"]["spearman"] == pytest.approx(spearmanr(cosines, stsb_gold)[0])
    assert results["STSBenchmark"]["pearson"] == pytest.approx(pearsonr(cosines, stsb_gold)[0])
    assert results["SICKRelatedness"]["spearman"] == pytest.approx(spearmanr(cosines, sick_gold)[0])
    assert results["SICKRelatedness"]["ntest"] == 25
    assert "regressor" not in results["STSBenchmark"]


def test_relatedness_regressor_option_needs_and_uses_train_and_dev(tmp_path):
    rng = random.Random(8)
    write_relatedness_split(tmp_path, "test", rng)
    with pytest.raises(FileNotFoundError, match="sts-train.csv"):
        run_senteval(HashingEncoder(), tmp_path, tasks=["STS-B"], relatedness_regressor=True, show_progress_bar=False)
    write_relatedness_split(tmp_path, "train", rng, size=40)
    write_relatedness_split(tmp_path, "dev", rng, size=10)
    results = run_senteval(
        HashingEncoder(), tmp_path, tasks=["STS-B", "SICK-R"], relatedness_regressor=True, show_progress_bar=False
    )
    for task in ("STSBenchmark", "SICKRelatedness"):
        regressor = results[task]["regressor"]
        assert (regressor["ndev"], regressor["ntest"]) == (10, 25)
        assert -1.0 <= regressor["spearman"] <= 1.0 and regressor["mse"] >= 0.0
    assert "SentEval regressor" in results_to_markdown(results)


def test_relatedness_targets_follow_senteval_encoding():
    targets = relatedness_target_distribution(np.array([3.6, 5.0, 1.0, 0.5]))
    np.testing.assert_allclose(
        targets,
        [[0, 0, 0.4, 0.6, 0], [0, 0, 0, 0, 1], [1, 0, 0, 0, 0], [0.5, 0, 0, 0, 0]],  # 0.5: SentEval's STS-B quirk
        atol=1e-6,
    )
    np.testing.assert_allclose(targets[:3] @ np.arange(1, 6), [3.6, 5.0, 1.0], atol=1e-6)


def test_relatedness_regressor_learns_a_linear_score():
    rng = np.random.default_rng(7)
    weights = rng.normal(size=16)
    features = rng.normal(size=(300, 16)).astype(np.float32)
    scores = 1 + 4 / (1 + np.exp(-(features @ weights)))
    dev_pearson, predictions = train_relatedness_regressor(
        (features[:200], scores[:200]), (features[200:250], scores[200:250]), features[250:], seed=1111, max_epochs=200
    )
    assert dev_pearson > 0.9
    assert pearsonr(predictions, scores[250:])[0] > 0.9
    assert predictions.min() >= 1.0 and predictions.max() <= 5.0  # an expectation over classes 1..5


def test_separable_binary_task_reaches_100_percent(tmp_path):
    rng = random.Random(2)
    positives = [f"good great fine {random_sentence(rng, 4)}" for _ in range(30)]
    negatives = [f"bad awful poor {random_sentence(rng, 4)}" for _ in range(30)]
    write_mr(tmp_path, positives, negatives)
    results = run_senteval(HashingEncoder(), tmp_path, tasks=["MR"], kfold=3, show_progress_bar=False)["MR"]
    assert results["acc"] == 100.0
    assert results["ntest"] == 60
    assert len(results["C"]) == len(results["fold_accs"]) == 3


def test_random_labels_give_chance_accuracy(tmp_path):
    rng = random.Random(3)
    sentences = [random_sentence(rng) for _ in range(240)]
    write_mr(tmp_path, sentences[:120], sentences[120:])
    # 16 buckets: fewer features than examples, so the random labels cannot be fitted exactly (and lbfgs is quick).
    results = run_senteval(HashingEncoder(dim=16), tmp_path, tasks=["MR"], kfold=3, show_progress_bar=False)["MR"]
    # 240 examples: the standard error of a chance-level accuracy is about 3 points.
    assert 35.0 <= results["acc"] <= 65.0


def test_sst2_split_classifier_and_sick_entailment_pair_features(tmp_path):
    rng = random.Random(4)
    sst_dir = tmp_path / "downstream" / "SST" / "binary"
    for split, size in (("train", 60), ("dev", 20), ("test", 20)):
        lines = [
            f"{'good great fine' if i % 2 else 'bad awful poor'} {random_sentence(rng, 4)} \t{i % 2}"
            for i in range(size)
        ]
        write_lines(sst_dir / f"sentiment-{split}", lines)

    # SICK-E: the hypothesis is the premise (entailment), or the premise plus a negation (contradiction) or a hedge
    # (neutral): one |u - v| bucket tells the class apart, as negation words do in the real SICK.
    sick_dir = tmp_path / "downstream" / "SICK"
    extra_word = {"ENTAILMENT": "", "NEUTRAL": " maybe", "CONTRADICTION": " nobody"}
    for file_name, size in (("SICK_train.txt", 60), ("SICK_trial.txt", 30), ("SICK_test_annotated.txt", 30)):
        rows = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"]
        for i in range(size):
            premise = random_sentence(rng)
            label = ("ENTAILMENT", "NEUTRAL", "CONTRADICTION")[i % 3]
            rows.append(f"{i}\t{premise}\t{premise}{extra_word[label]}\t3.0\t{label}")
        write_lines(sick_dir / file_name, rows)

    results = run_senteval(HashingEncoder(), tmp_path, tasks=["SST2", "SICK-E"], show_progress_bar=False)
    assert results["SST2"]["acc"] == 100.0
    assert (results["SST2"]["ndev"], results["SST2"]["ntest"]) == (20, 20)
    assert results["SICKEntailment"]["acc"] == 100.0
    assert results["SICKEntailment"]["C"] in (0.25, 0.5, 1, 2, 4, 8)


def test_pair_features_are_senteval_abs_difference_and_product():
    u = np.array([[1.0, -2.0], [0.5, 3.0]])
    v = np.array([[3.0, 1.0], [0.5, -1.0]])
    np.testing.assert_array_equal(pair_features(u, v), np.c_[np.abs(u - v), u * v])
    assert pair_features(u, v).shape == (2, 4)


def test_kfold_classifier_accuracy_matches_sklearn_on_its_predictions():
    rng = np.random.default_rng(5)
    train = rng.normal(size=(120, 8))
    test = rng.normal(size=(40, 8))
    weights = rng.normal(size=8)
    train_labels, test_labels = (
        (train @ weights > 0).astype(int),
        (test @ weights + rng.normal(size=40) > 0).astype(int),
    )
    result = kfold_classification(train, train_labels, test, test_labels, kfold=4, seed=1111)
    assert result["acc"] == round(100 * accuracy_score(test_labels, result["predictions"]), 2)
    assert result["C"] in (0.5, 1, 2, 4, 8, 16, 32)
    assert 50.0 < result["acc"] < 100.0  # the noisy test labels cannot all be right


def test_mrpc_reports_accuracy_and_f1(tmp_path):
    rng = random.Random(6)
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    for split, size in (("train", 80), ("test", 30)):
        rows = [header]
        for i in range(size):
            first = random_sentence(rng)
            second = first if i % 2 else random_sentence(rng)
            rows.append(f"{i % 2}\t{i}\t{i + 1000}\t{first}\t{second}")
        write_lines(tmp_path / "downstream" / "MRPC" / f"msr_paraphrase_{split}.txt", rows)
    results = run_senteval(HashingEncoder(), tmp_path, tasks=["MRPC"], kfold=5, show_progress_bar=False)["MRPC"]
    assert (results["acc"], results["f1"]) == (100.0, 100.0)
    assert (results["ndev"], results["ntest"]) == (80, 30)


def test_trec_reads_latin1_and_maps_coarse_labels(tmp_path):
    trec_dir = tmp_path / "downstream" / "TREC"
    write_lines(trec_dir / "train_5500.label", ["HUM:ind Who was Pel\xe9 ?", "NUM:date When did it  end ?"], "latin-1")
    write_lines(trec_dir / "TREC_10.label", ["LOC:city Where is Paris ?"])
    splits = load_trec(tmp_path)
    assert sorted(zip(splits["train"].sentences, splits["train"].labels.tolist())) == [
        ("When did it end ?", 5),
        ("Who was Pel\xe9 ?", 3),
    ]
    assert splits["test"].labels.tolist() == [4]


def test_encoder_encodes_each_distinct_sentence_once_in_input_order():
    encoder = HashingEncoder()
    cached = CachedEncoder(encoder, batch_size=2, show_progress_bar=False)
    sentences = ["b c", "a", "b c", "d e f", "a"]
    embeddings = cached(sentences)
    np.testing.assert_array_equal(embeddings, HashingEncoder().encode(sentences))
    assert sorted(encoder.encoded) == ["a", "b c", "d e f"]
    cached(["a", "g"])
    assert sorted(encoder.encoded) == ["a", "b c", "d e f", "g"]


def test_task_aliases_and_unknown_task():
    assert canonical_task_name("sick-e") == "SICKEntailment"
    assert canonical_task_name("STS-B") == "STSBenchmark"
    assert canonical_task_name("mr") == "MR"
    with pytest.raises(ValueError, match="Unknown SentEval task 'SNLI'"):
        canonical_task_name("SNLI")


def test_missing_data_file_names_the_file_and_where_senteval_data_comes_from(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        run_senteval(HashingEncoder(), tmp_path, tasks=["MR"], show_progress_bar=False)
    message = str(error.value)
    assert str(tmp_path / "downstream" / "MR" / "rt-polarity.pos") in message
    assert "facebookresearch/SentEval" in message


def shared_senteval_dir() -> Path:
    root = os.environ.get("ST_DSE_DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data")
    return Path(root) / "senteval" / "data"


@pytest.mark.slow
def test_real_model_on_sts12_subset_matches_direct_cosine_spearman():
    data_dir = shared_senteval_dir()
    if not (data_dir / "downstream" / "STS" / "STS12-en-test").is_dir():
        pytest.skip(f"SentEval data not found at {data_dir} (set ST_DSE_DATA_DIR or put ../shared beside the repo)")
    from sentence_transformers import SentenceTransformer

    from st_dse.hub import DEFAULT_MODEL, resolve_model_name

    model = SentenceTransformer(resolve_model_name(DEFAULT_MODEL), device="cpu")
    results = run_senteval(model, data_dir, tasks=["STS12"], max_samples=60, show_progress_bar=False)["STS12"]

    # STS12 has gold for every pair, so the first 60 input lines are the 60 pairs evaluated.
    year_dir = data_dir / "downstream" / "STS" / "STS12-en-test"
    lines = (year_dir / "STS.input.MSRvid.txt").read_text(encoding="utf-8").splitlines()[:60]
    gold = [float(line) for line in (year_dir / "STS.gs.MSRvid.txt").read_text().splitlines()[:60]]
    first = model.encode([line.split("\t")[0] for line in lines], convert_to_numpy=True)
    second = model.encode([line.split("\t")[1] for line in lines], convert_to_numpy=True)
    expected = spearmanr(cosine_similarities(first, second), gold)[0]
    assert results["MSRvid"]["spearman"] == pytest.approx(expected, abs=1e-3)
    assert results["MSRvid"]["spearman"] > 0.7  # MSRvid is the easy STS12 set for any decent encoder
    assert results["all"]["spearman"]["mean"] > 0.5
