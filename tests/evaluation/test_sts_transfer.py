"""evaluation.sts_transfer: which MTEB STS pairs a model trained on, and its scores without them."""

from __future__ import annotations

import csv
import json

import numpy as np
from sentence_transformers import SentenceTransformer

from evaluation import sts_transfer
from evaluation.mteb_data import SEMEVAL_STS_SOURCES, load_semeval_sts
from tests.test_reliability import build_tiny_encoder


def test_pairs_match_across_case_punctuation_spacing_and_order():
    keys = sts_transfer.pair_keys(["A man plays, the guitar."], ["Someone  plays a guitar!"])
    mask = sts_transfer.seen_mask(
        ["a man plays the guitar", "someone plays a guitar", "a man plays the piano"],
        ["SOMEONE PLAYS A GUITAR", "A man plays -- the guitar", "someone plays a guitar"],
        keys,
    )
    assert mask.tolist() == [True, True, False]


def test_report_counts_the_training_pairs_and_scores_the_rest(tmp_path, data_dir, minilm_path):
    sts16 = load_semeval_sts(data_dir / "senteval/data/downstream/STS/STS16-en-test", SEMEVAL_STS_SOURCES["STS16"])
    train = tmp_path / "train.csv"
    with train.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence1", "sentence2", "label"])
        for row in (0, 5, 7):  # three STS16 pairs, one of them in the other order and upper case
            first, second = sts16["sentence1"][row], sts16["sentence2"][row]
            writer.writerow([second.upper(), first, 1.0] if row == 5 else [first, second, 1.0])
        writer.writerow(["a sentence that is nowhere", "in any STS test set", 0.0])
    model_dir = tmp_path / "model"
    SentenceTransformer(str(build_tiny_encoder(tmp_path / "tiny", minilm_path)), device="cpu").save(str(model_dir))

    args = ["--train-file", str(train), "--models", str(model_dir), "--tasks", "STS16", "--data-dir", str(data_dir)]
    results = sts_transfer.main([*args, "--output-dir", str(tmp_path / "out")])
    assert results["overlap"]["STS16"]["seen"] == 3
    assert results["overlap"]["STS16"]["pairs"] == len(sts16["score"])
    assert json.loads((tmp_path / "out" / "sts_transfer.json").read_text())["overlap"] == results["overlap"]

    model = SentenceTransformer(str(model_dir), device="cpu")
    unseen = np.ones(len(sts16["score"]), dtype=bool)
    unseen[[0, 5, 7]] = False
    expected = sts_transfer.cosine_spearman(
        model,
        [s for s, keep in zip(sts16["sentence1"], unseen) if keep],
        [s for s, keep in zip(sts16["sentence2"], unseen) if keep],
        [s for s, keep in zip(sts16["score"], unseen) if keep],
    )
    scores = results["models"][str(model_dir)]["STS16"]
    assert abs(scores["unseen"] - expected) < 1e-6
    assert scores["all"] != scores["unseen"]
    assert "*" in sts_transfer.markdown_table(results)
