"""Speed benchmark: one query against N cached candidates, DSE students against cross-encoder teachers.

What is measured (all on real sentences from the shared data, all on this machine's CPU):

1. **Query against N candidates** for N in 1k, 10k, 100k, 1M: wall time of one query (query encoding included,
   candidates encoded beforehand), candidates per second, speedup over each teacher, and the extra resident memory
   during the search (peak RSS above the level before it, sampled every millisecond) next to the index's size.
   Systems: the MiniLM-L6 and the 12-layer all-mpnet-base-v2 cross-encoders (timed on a sample of pairs and
   extrapolated linearly beyond it: marked ``extrapolated``), the DSE concat head (exact float32; bfloat16 screen
   of every candidate + float32 rescoring of the best; from 100k on, a faiss prefilter that ranks by a linear
   surrogate of the head, then the head on the shortlist; at 100k also a cosine prefilter for comparison), the DSE
   factorized head (exact inner-product search, torch or faiss Flat), and plain cosine similarity of
   all-MiniLM-L6-v2 embeddings.
   Candidates are distinct sentences (QQP questions, SST-2, STS-B and MRPC sentences) up to the pool size; the 1M
   set samples them with repetition. Queries are held-out QQP questions, removed from the pool.
2. **Recall@10** of the approximate paths against exhaustive exact head scoring, averaged over queries, for heads
   trained on QQP-subset gold labels over frozen all-MiniLM-L6-v2 embeddings (a realistic duplicate-question head;
   an untrained random head would make recall meaningless). Ties (repeated candidates) count as hits. The exact
   reference scores every distinct candidate once in float32 and gathers them to the N rows.
3. **Head options at N=10k**: hidden size, compute precision and storage dtype: time, recall@10 against the same
   head's exact float32 ranking, and the head's QQP-subset validation accuracy.
4. **Teacher labelling throughput**: ``st_dse.label_with_teacher`` (no cache, cold cache, warm cache) against raw
   ``CrossEncoder.predict`` on the same pairs.
5. **One training step**: ``st_dse.DSELoss`` against sentence-transformers' ``SoftmaxLoss`` on the same batches
   with the same encoder (forward, backward, optimizer step).

Usage:
    python -m evaluation.speed --output-dir runs/speed                         # everything (about an hour)
    python -m evaluation.speed --sizes 1000 10000 --skip-mpnet --output-dir runs/speed-small   # quick look
    python -m evaluation.speed --students runs/mrpc runs/mrpc-top4 --sizes 1000 10000 --output-dir runs/speed-students

``--ten-million`` runs only the large-corpus benchmark: real embeddings of the candidate pool repeated with small
Gaussian noise up to 10M rows (``--ten-million-size``), stored as int8 in chunks, with a compressed prefilter over the
head surrogate (faiss PQ fast-scan, 192 bytes a row, scanned in full). It reports the median latency of single
held-out queries, recall@10 against exhaustive exact head scoring of all rows, the index's memory and the build
time, in ``ten_million.json``. With ``--ten-million-index-dir`` the built index is saved there and later runs load it
instead of building; the exhaustive reference (about a minute a query) is written query by query to
``ten_million.partial.json`` and a rerun resumes it:

    python -m evaluation.speed --ten-million --threads 2 --output-dir runs/speed-10m \\
        --ten-million-index-dir runs/index-10m

``--students`` times only saved DSE students against each other (what a different pooling or head costs): one
query against N cached candidates, query encoding included, exact float32 head, written to ``students.json``.

Writes ``speed.json`` (every number and the settings) and ``speed.png`` (log-log time against N) to --output-dir.
Timings on a shared machine vary with its load; the JSON records ``os.getloadavg()`` before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import datasets
import numpy as np
import sentence_transformers
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer, losses
from sentence_transformers.base.losses.merged_forward import column_merging_disabled

import st_dse
from st_dse.data import get_task, load_task, resolve_data_dir
from st_dse.fingerprint import model_fingerprint
from st_dse.hub import resolve_model_name
from st_dse.inference.index import CandidateIndex
from st_dse.inference.storage import StoredMatrix

logger = logging.getLogger("speed")

DEFAULT_SIZES = (1_000, 10_000, 100_000, 1_000_000)
TOP_K = 10


# -- measuring ------------------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every millisecond by a thread."""

    def __enter__(self) -> PeakMemory:
        self.baseline = rss_bytes()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def faiss_version() -> str | None:
    try:
        import faiss
    except ImportError:
        return None
    return faiss.__version__


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


# -- data -----------------------------------------------------------------------------------------------------------


def load_sentences(data_dir: Path, num_queries: int, seed: int) -> tuple[list[str], list[str]]:
    """Held-out QQP questions as queries, and a pool of distinct candidate sentences without them."""
    validation = load_task(get_task("qqp-subset"), "validation", data_dir)
    train = load_task(get_task("qqp-subset"), "train", data_dir)
    rng = np.random.default_rng(seed)
    query_pool = sorted(set(validation["sentence1"]))
    queries = [query_pool[i] for i in rng.choice(len(query_pool), size=num_queries, replace=False)]
    pool: dict[str, None] = {}
    for dataset in (train, validation):
        for column in ("sentence1", "sentence2"):
            pool.update(dict.fromkeys(dataset[column]))
    for task in ("stsb", "mrpc"):
        split = load_task(get_task(task), "train", data_dir)
        pool.update(dict.fromkeys(list(split["sentence1"]) + list(split["sentence2"])))
    sst2 = data_dir / "glue" / "SST-2" / "train.tsv"
    if sst2.is_file():  # single sentences (movie-review phrases), so not a pair task: read the column directly
        with open(sst2, encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        pool.update(dict.fromkeys(row[0].strip() for row in rows[1:] if row))
    excluded = set(queries)
    candidates = [s for s in pool if isinstance(s, str) and s.strip() and s not in excluded]
    rng.shuffle(candidates)
    return queries, candidates


def cached_embeddings(model: SentenceTransformer, sentences: list[str], cache_dir: Path, name: str) -> np.ndarray:
    """Encode once per (encoder, sentence list); later runs read the .npy."""
    # Key by the encoder alone: a PairHead does not change embeddings, and a fresh head's weights are random.
    encoder = SentenceTransformer(modules=[m for m in model if not isinstance(m, st_dse.PairHead)], device="cpu")
    key = model_fingerprint(encoder)[:16]
    text_key = _text_digest(sentences)
    path = cache_dir / f"{name}-{key}-{text_key}.npy"
    if path.is_file():
        return np.load(path)
    logger.info("Encoding %d %s sentences (cached in %s)", len(sentences), name, path)
    start = time.perf_counter()
    embeddings = model.encode(sentences, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
    logger.info(
        "Encoded in %.0f s (%.0f sentences/s)",
        time.perf_counter() - start,
        len(sentences) / (time.perf_counter() - start),
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, embeddings.astype(np.float32))
    return embeddings.astype(np.float32)


def _text_digest(sentences: list[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for sentence in sentences:
        digest.update(sentence.encode())
        digest.update(b"\x1f")
    return digest.hexdigest()[:16]


def candidate_rows(num_unique: int, size: int, seed: int) -> np.ndarray:
    """Rows of the first ``size`` candidates: distinct while the pool lasts, sampled with repetition beyond it."""
    if size <= num_unique:
        return np.arange(size)
    rng = np.random.default_rng(seed)
    return np.concatenate([np.arange(num_unique), rng.integers(0, num_unique, size=size - num_unique)])


# -- realistic heads ------------------------------------------------------------------------------------------------


def train_head_on_gold(
    student: SentenceTransformer,
    embeddings: dict[str, np.ndarray],
    train: datasets.Dataset,
    validation: datasets.Dataset,
    epochs: int,
    seed: int,
) -> float:
    """Fit the student's PairHead (encoder frozen) to QQP gold labels; return validation accuracy (%)."""
    head = st_dse.get_pair_head(student)
    torch.manual_seed(seed)

    def pair_tensors(dataset):
        first = torch.from_numpy(np.stack([embeddings[s] for s in dataset["sentence1"]]))
        second = torch.from_numpy(np.stack([embeddings[s] for s in dataset["sentence2"]]))
        return first, second, torch.tensor(dataset["label"], dtype=torch.float32)

    first, second, labels = pair_tensors(train)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    head.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels)).split(128):
            # Both orders, so the head learns a symmetric duplicate score.
            u = torch.cat([first[batch], second[batch]])
            v = torch.cat([second[batch], first[batch]])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                head.score(u, v)[:, 0], labels[batch].repeat(2)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    head.eval()
    first, second, labels = pair_tensors(validation)
    with torch.inference_mode():
        predictions = (head.score(first, second)[:, 0] > 0).float()
    return float((predictions == labels).float().mean() * 100)


def build_trained_student(base: str, head_type: str, hidden_dim: int, embeddings, train, validation, args):
    torch.manual_seed(args.seed)
    student = st_dse.build_student(base, head_type=head_type, hidden_dim=hidden_dim, device="cpu")
    accuracy = train_head_on_gold(student, embeddings, train, validation, args.head_epochs, args.seed)
    logger.info(
        "%s head (hidden %d) trained on QQP-subset gold: validation accuracy %.2f", head_type, hidden_dim, accuracy
    )
    return student, accuracy


# -- one query against N candidates ----------------------------------------------------------------------------------


def recall_at_k(returned_ids: torch.Tensor, exact_scores: torch.Tensor, k: int = TOP_K) -> float:
    """Share of returned ids whose exact score reaches the k-th best exact score (ties count as hits)."""
    threshold = exact_scores.topk(k).values[-1]
    tolerance = 1e-4 * max(1.0, float(threshold.abs()))
    return float((exact_scores[returned_ids] >= threshold - tolerance).float().sum() / k)


def time_student(index: CandidateIndex, student: SentenceTransformer, queries: list[str], repeats: int, **search):
    """Median wall time of encode + search for single queries; also its parts and the search's peak extra memory."""
    encode_times, search_times, totals, peaks, returned = [], [], [], [], []
    index.search_embeddings(student.encode(queries[0], convert_to_tensor=True), TOP_K, **search)  # warm-up
    for query in queries[:repeats]:
        with PeakMemory() as memory:
            encode_time, embedding = timed(student.encode, query, convert_to_tensor=True)
            search_time, (_, ids) = timed(index.search_embeddings, embedding, TOP_K, **search)
        encode_times.append(encode_time)
        search_times.append(search_time)
        totals.append(encode_time + search_time)
        peaks.append(memory.extra_mb)
        returned.append(ids[0])
    return {
        "seconds": statistics.median(totals),
        "encode_seconds": statistics.median(encode_times),
        "search_seconds": statistics.median(search_times),
        "peak_extra_rss_mb": max(peaks),
        "index_mb": index.nbytes / 2**20,
        "queries_timed": len(totals),
    }, returned


def time_cosine(model: SentenceTransformer, candidate_embeddings: torch.Tensor, queries: list[str], repeats: int):
    """Plain cosine: normalised embeddings, one matrix-vector product, top-k."""

    def search(query: str):
        embedding = model.encode(query, convert_to_tensor=True, normalize_embeddings=True)
        return (candidate_embeddings @ embedding).topk(TOP_K)

    search(queries[0])
    totals, peaks = [], []
    for query in queries[:repeats]:
        with PeakMemory() as memory:
            seconds, _ = timed(search, query)
        totals.append(seconds)
        peaks.append(memory.extra_mb)
    return {
        "seconds": statistics.median(totals),
        "peak_extra_rss_mb": max(peaks),
        "index_mb": candidate_embeddings.numel() * 4 / 2**20,
        "queries_timed": len(totals),
    }


def time_teacher(cross_encoder: CrossEncoder, query: str, candidates: list[str], batch_size: int) -> dict:
    """Cross-encoder seconds per pair, from one query against a sample of candidates."""
    pairs = [(query, candidate) for candidate in candidates]
    cross_encoder.predict(pairs[:batch_size], batch_size=batch_size, show_progress_bar=False)  # warm-up
    with PeakMemory() as memory:
        seconds, _ = timed(cross_encoder.predict, pairs, batch_size=batch_size, show_progress_bar=False)
    return {"seconds_per_pair": seconds / len(pairs), "sample_pairs": len(pairs), "peak_extra_rss_mb": memory.extra_mb}


# -- labelling and training step ------------------------------------------------------------------------------------


def benchmark_labelling(cross_encoder: CrossEncoder, train: datasets.Dataset, num_pairs: int, repeats: int) -> dict:
    subset = train.select(range(min(num_pairs, len(train))))
    pairs = list(zip(subset["sentence1"], subset["sentence2"]))
    runs: dict[str, list[float]] = {
        "raw_predict": [],
        "label_no_cache": [],
        "label_no_cache_chunk_size_512": [],
        "label_cold_cache": [],
        "label_warm_cache": [],
    }
    cross_encoder.predict(pairs[:64], batch_size=32, show_progress_bar=False)
    with tempfile.TemporaryDirectory() as cache_root:
        for repeat in range(repeats):
            runs["raw_predict"].append(
                timed(
                    cross_encoder.predict,
                    pairs,
                    batch_size=32,
                    activation_fn=torch.nn.Identity(),
                    apply_softmax=False,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )[0]
            )
            runs["label_no_cache"].append(
                timed(st_dse.label_with_teacher, cross_encoder, subset, batch_size=32, use_cache=False)[0]
            )
            # The default chunk is one batch (pairs sorted by length first); 512 shows what fewer cache writes buy.
            runs["label_no_cache_chunk_size_512"].append(
                timed(
                    st_dse.label_with_teacher, cross_encoder, subset, batch_size=32, use_cache=False, chunk_size=512
                )[0]
            )
            cache_dir = Path(cache_root) / f"cache{repeat}"
            runs["label_cold_cache"].append(
                timed(st_dse.label_with_teacher, cross_encoder, subset, batch_size=32, cache_dir=cache_dir)[0]
            )
            runs["label_warm_cache"].append(
                timed(st_dse.label_with_teacher, cross_encoder, subset, batch_size=32, cache_dir=cache_dir)[0]
            )
    best = {name: min(times) for name, times in runs.items()}
    return {
        "pairs": len(pairs),
        "repeats": repeats,
        "best_seconds": best,
        "all_seconds": runs,
        "pairs_per_second": {name: len(pairs) / seconds for name, seconds in best.items()},
        "throughput_relative_to_raw_predict": {name: best["raw_predict"] / seconds for name, seconds in best.items()},
    }


def benchmark_training_step(base: str, train: datasets.Dataset, batch_size: int, steps: int, seed: int) -> dict:
    """Forward + backward + AdamW step, DSELoss and SoftmaxLoss alternating on the same batches and encoder."""
    torch.manual_seed(seed)
    student = st_dse.build_student(base, hidden_dim=512, device="cpu")
    student.train()
    dse_loss = st_dse.DSELoss(student, distillation_weight=0.5)
    softmax_loss = losses.SoftmaxLoss(student, student.get_embedding_dimension(), num_labels=2)
    optimizers = {
        "DSELoss": torch.optim.AdamW(list(dse_loss.parameters()), lr=1e-6),
        "SoftmaxLoss": torch.optim.AdamW(list(softmax_loss.parameters()), lr=1e-6),
    }
    optimizers["DSELoss, per-column forwards"] = optimizers["DSELoss"]
    rng = np.random.default_rng(seed)
    # SoftmaxLoss embeds its two columns in two forwards; DSELoss merges them into one padded forward (faster on a
    # GPU, more padding on a CPU). "DSELoss, per-column forwards" isolates that difference.
    times: dict[str, list[float]] = {"DSELoss": [], "SoftmaxLoss": [], "DSELoss, per-column forwards": []}
    for step in range(steps + 2):  # the first two steps warm up and are not counted
        rows = rng.choice(len(train), size=batch_size, replace=False).tolist()
        batch = train.select(rows)
        features = [student.tokenize(batch["sentence1"]), student.tokenize(batch["sentence2"])]
        gold = torch.tensor(batch["label"], dtype=torch.float32)
        packed = torch.stack([gold, torch.randn(batch_size)], dim=1)  # [gold, teacher logit]
        order = list(times) if step % 2 == 0 else list(reversed(times))
        for name in order:
            loss_fn, labels = (softmax_loss, gold.long()) if name == "SoftmaxLoss" else (dse_loss, packed)
            optimizer = optimizers[name]
            start = time.perf_counter()
            with column_merging_disabled() if name.endswith("per-column forwards") else contextlib.nullcontext():
                loss = loss_fn([dict(f) for f in features], labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step >= 2:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "batch_size": batch_size,
        "steps": steps,
        "median_seconds": medians,
        "all_seconds": times,
        "dse_over_softmax": medians["DSELoss"] / medians["SoftmaxLoss"],
        "dse_per_column_over_softmax": medians["DSELoss, per-column forwards"] / medians["SoftmaxLoss"],
    }


# -- ten million candidates ----------------------------------------------------------------------------------------


def noisy_copies(pool: np.ndarray, size: int, noise: float, seed: int, chunk_rows: int = 262144):
    """A function yielding, chunk by chunk, ``size`` rows: row ``r`` is ``pool[r % len(pool)]`` plus Gaussian noise of
    standard deviation ``noise`` times each dimension's standard deviation over the pool; the same rows every call."""
    scale = (pool.std(axis=0) * noise).astype(np.float32)

    def chunks():
        for start in range(0, size, chunk_rows):
            rows = np.arange(start, min(start + chunk_rows, size)) % len(pool)
            rng = np.random.default_rng([seed, start])
            yield pool[rows] + rng.standard_normal((len(rows), pool.shape[1]), dtype=np.float32) * scale

    return chunks


def benchmark_ten_million(args, data_dir: Path, cache_dir: Path, output_dir: Path) -> dict:
    """One query against 10M int8 candidates via a PQ head-surrogate prefilter: latency, recall, RAM, build time."""
    queries, pool, texts, train, validation = benchmark_texts(data_dir, args)
    base = resolve_model_name(st_dse.DEFAULT_MODEL)
    all_embeddings = cached_embeddings(st_dse.build_student(base, device="cpu"), texts, cache_dir, "unnormalised")
    row_of = {text: row for row, text in enumerate(texts)}
    embedding_of = {text: all_embeddings[row] for text, row in row_of.items()}
    pool_embeddings = all_embeddings[[row_of[text] for text in pool]]
    query_embeddings = torch.from_numpy(all_embeddings[[row_of[q] for q in queries]])
    concat, accuracy = cached_concat_head(base, embedding_of, train, validation, args, cache_dir)
    fingerprint = model_fingerprint(concat)
    size, noise = args.ten_million_size, args.ten_million_noise
    logger.info("%d rows: %d distinct candidates repeated with noise %.3g x per-dimension std", size, len(pool), noise)

    index_dir = Path(args.ten_million_index_dir) if args.ten_million_index_dir else None
    build_file = index_dir.with_name(index_dir.name + ".build.json") if index_dir else None
    baseline_rss = rss_bytes()
    if index_dir is None or not (index_dir / "candidate_index.json").is_file():
        # With an index folder, the int8 rows are built into a memory-mapped scratch file, the index is saved, and
        # then opened from the folder as a user would: its rows are file pages, not process memory.
        scratch = index_dir.with_name(index_dir.name + ".rows.npy") if index_dir is not None else None
        with PeakMemory() as build_memory:
            start = time.perf_counter()
            rows = noisy_copies(pool_embeddings, size, noise, args.seed)
            stored = StoredMatrix.from_chunks(rows, "int8", path=scratch)
            storage_seconds = time.perf_counter() - start
            logger.info("int8 storage of %d rows built in %.0f s", size, storage_seconds)
            index = CandidateIndex(
                concat,
                stored,
                faiss_index=args.ten_million_prefilter,
                rerank_k=args.rerank_k,
                rescore_k=100,
            )
            index.faiss_params = args.ten_million_params or None
            build_seconds = time.perf_counter() - start
        logger.info("Index built in %.0f s (%.2f GB)", build_seconds, index.nbytes / 1e9)
        build = {
            "build_seconds": build_seconds,
            "build_seconds_int8_storage": storage_seconds,
            "build_seconds_prefilter": build_seconds - storage_seconds,
            "rss_gb_before_build": baseline_rss / 1e9,
            "rss_gb_after_build": rss_bytes() / 1e9,
            "peak_rss_gb_during_build": build_memory.peak / 1e9,
            "extra_rss_gb_held_by_index": (rss_bytes() - baseline_rss) / 1e9,
            "peak_extra_rss_gb_during_build": (build_memory.peak - baseline_rss) / 1e9,
        }
        if index_dir is not None:
            start = time.perf_counter()
            index.save(index_dir)
            build["save_seconds"] = time.perf_counter() - start
            build_file.write_text(json.dumps(build, indent=2))
            del index, stored
            scratch.unlink()
    if index_dir is not None:
        start = time.perf_counter()
        index = CandidateIndex.load(index_dir, concat, faiss_params=args.ten_million_params or None)
        build = {**json.loads(build_file.read_text()), "load_seconds_verify_full": time.perf_counter() - start}
        logger.info("Opened the saved index %s in %.0f s (verified)", index_dir, build["load_seconds_verify_full"])
    stored = index.embeddings

    timing_queries = queries[1 : args.recall_queries + 1]
    stats, _ = time_student(index, concat, timing_queries, len(timing_queries))
    latencies = []
    for query in timing_queries:  # the search alone once more, for its spread
        embedding = concat.encode(query, convert_to_tensor=True)
        latencies.append(timed(index.search_embeddings, embedding, TOP_K)[0])
    logger.info(
        "Median time per query %.1f ms (search %.1f ms)", stats["seconds"] * 1e3, stats["search_seconds"] * 1e3
    )

    partial_file = output_dir / "ten_million.partial.json"
    partial = {"model_fingerprint": fingerprint, "median_seconds_per_query": stats["seconds"], **build}
    recall_embeddings = query_embeddings[1 : args.recall_queries + 1]
    if args.ten_million_skip_recall:
        recall_embeddings = recall_embeddings[:0]
    _, returned = index.search_embeddings(recall_embeddings, TOP_K)
    exact = CandidateIndex(concat, stored)
    start = time.perf_counter()
    recalls = []
    if partial_file.is_file():  # a killed run's queries are not measured again
        earlier = json.loads(partial_file.read_text())
        if earlier.get("model_fingerprint") == fingerprint and earlier.get("rows") == size:
            recalls = earlier["recalls"]
    partial["rows"] = size
    for row in range(len(recalls), len(recall_embeddings)):
        best_scores, _ = exact.search_embeddings(recall_embeddings[row : row + 1], TOP_K)
        returned_scores = exact.score_candidates(recall_embeddings[row : row + 1], returned[row : row + 1])[0]
        threshold = float(best_scores[0, -1])
        tolerance = 1e-4 * max(1.0, abs(threshold))
        recalls.append(float((returned_scores >= threshold - tolerance).float().sum() / TOP_K))
        # Written after every query: the exhaustive reference takes an hour, and a killed run keeps what it measured.
        partial_file.write_text(json.dumps({**partial, "recalls": recalls}, indent=2))
        logger.info(
            "Exhaustive reference, query %d: recall@10 %.2f (%.0f s so far)",
            row,
            recalls[-1],
            time.perf_counter() - start,
        )
    return {
        "rows": size,
        "distinct_candidates": len(pool),
        "rows_note": f"the {len(pool):,} distinct pool embeddings (real sentences) repeated to {size:,} rows, every "
        f"row plus Gaussian noise of {noise} x the per-dimension standard deviation over the pool",
        "head": f"concat, hidden 512, fitted to qqp-subset gold labels over frozen all-MiniLM-L6-v2 embeddings "
        f"({args.head_epochs} epochs, AdamW 1e-3): validation accuracy {accuracy:.2f}",
        "storage": "int8 (per-dimension affine)",
        "prefilter": args.ten_million_prefilter,
        "prefilter_params": args.ten_million_params,
        "prefilter_metric": "head (linear surrogate of the head over [v, v*v])",
        "rerank_k": args.rerank_k,
        "precision": "bfloat16 screen of the shortlist + float32 rescoring of the best 100",
        "queries": len(timing_queries),
        "median_seconds_per_query": stats["seconds"],
        "median_encode_seconds": stats["encode_seconds"],
        "median_search_seconds": stats["search_seconds"],
        "search_seconds_p90": float(np.percentile(latencies, 90)),
        "peak_extra_rss_mb_during_search": stats["peak_extra_rss_mb"],
        "model_fingerprint": fingerprint,
        "recall_at_10": statistics.mean(recalls) if recalls else None,
        "recall_at_10_per_query": recalls,
        "exhaustive_reference_seconds": time.perf_counter() - start,
        "index_bytes": index.nbytes,
        "index_bytes_int8_embeddings": stored.nbytes,
        "index_bytes_prefilter": index.prefilter.nbytes,
        "rss_gb_during_timing": rss_bytes() / 1e9,
        **build,
    }


def cached_concat_head(base: str, embedding_of, train, validation, args, cache_dir: Path):
    """The benchmark's trained concat head (hidden 512), fitted once and kept in ``cache_dir``, and its accuracy."""
    path = cache_dir / f"concat-512-qqp-subset-seed{args.seed}-epochs{args.head_epochs}.pt"
    if path.is_file():
        student = st_dse.build_student(base, head_type="concat", hidden_dim=512, device="cpu")
        saved = torch.load(path)
        st_dse.get_pair_head(student).load_state_dict(saved["state_dict"])
        return student, saved["accuracy"]
    student, accuracy = build_trained_student(base, "concat", 512, embedding_of, train, validation, args)
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": st_dse.get_pair_head(student).state_dict(), "accuracy": accuracy}, path)
    return student, accuracy


def benchmark_texts(data_dir: Path, args):
    """Held-out queries, the candidate pool, every text to encode, and the qqp-subset train/validation splits."""
    queries, pool = load_sentences(data_dir, max(args.queries, args.recall_queries) + 1, args.seed)
    train = load_task(get_task("qqp-subset"), "train", data_dir)
    validation = load_task(get_task("qqp-subset"), "validation", data_dir)
    texts = sorted(
        set(pool)
        | set(train["sentence1"])
        | set(train["sentence2"])
        | set(validation["sentence1"])
        | set(validation["sentence2"])
        | set(queries)
    )
    return queries, pool, texts, train, validation


# -- main -----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="benchmark data root holding glue/ (default: $ST_DSE_DATA_DIR)")
    parser.add_argument("--output-dir", default="runs/speed")
    parser.add_argument("--cache-dir", default="runs/speed/cache", help="where candidate embeddings are cached")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--queries", type=int, default=10, help="queries timed per system and size (median)")
    parser.add_argument("--recall-queries", type=int, default=20, help="queries for recall against exhaustive search")
    parser.add_argument(
        "--exhaustive-concat-max-queries", type=int, default=2, help="timed queries for exact concat at 1M"
    )
    parser.add_argument("--teacher-sample", type=int, default=1024, help="pairs timed for the MiniLM cross-encoder")
    parser.add_argument("--mpnet-sample", type=int, default=256, help="pairs timed for the mpnet cross-encoder")
    parser.add_argument(
        "--mpnet-model",
        default="sentence-transformers/all-mpnet-base-v2",
        help="the 12-layer cross-encoder base to time (a Hub id or a local folder)",
    )
    parser.add_argument("--skip-mpnet", action="store_true")
    parser.add_argument("--prefilter", default="PQ384x4fs", help="faiss index of the concat head's surrogate")
    parser.add_argument("--prefilter-params", default="", help="faiss search parameters, e.g. nprobe=64")
    parser.add_argument("--rerank-k", type=int, default=10000, help="prefiltered candidates the head screens")
    parser.add_argument("--threads", type=int, help="torch and faiss threads (default: torch's choice)")
    parser.add_argument("--head-epochs", type=int, default=4)
    parser.add_argument("--labelling-pairs", type=int, default=1024)
    parser.add_argument("--labelling-repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--train-batch-size", type=int, default=32)
    parser.add_argument("--skip", nargs="*", default=[], choices=["search", "options", "labelling", "training"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ten-million", action="store_true", help="run only the 10M-candidate benchmark (see Usage)")
    parser.add_argument("--ten-million-size", type=int, default=10_000_000, help="rows of the large corpus")
    parser.add_argument(
        "--ten-million-noise", type=float, default=0.1, help="noise std of each copy, x the per-dimension std"
    )
    # An inverted file (IVF) partitions by embedding proximity or by inner product, neither of which follows the
    # surrogate closely enough: a full fast-scan of compact codes is both faster and exact enough (see RESULTS.md).
    parser.add_argument("--ten-million-prefilter", default="PQ384x4fs", help="faiss index of the head surrogate")
    parser.add_argument("--ten-million-params", default="", help="its faiss search parameters, e.g. nprobe=64")
    parser.add_argument(
        "--ten-million-index-dir", help="save the built index here, and load it instead of building when it exists"
    )
    parser.add_argument(
        "--ten-million-skip-recall", action="store_true", help="time only: skip the (long) exhaustive reference"
    )
    parser.add_argument(
        "--students", nargs="+", metavar="PATH", help="only time these saved students against each other (see Usage)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        import faiss

        faiss.omp_set_num_threads(args.threads)
    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        raise SystemExit("no benchmark data: pass --data-dir DIR (the folder holding glue/) or set ST_DSE_DATA_DIR.")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(args.cache_dir)
    base = resolve_model_name(st_dse.DEFAULT_MODEL)
    results: dict = {
        "settings": vars(args),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "faiss": faiss_version(),
            "load_average_start": os.getloadavg(),
        },
        "notes": [
            "One query against N cached candidates; student times include encoding the query.",
            "Teacher times beyond their sample are extrapolated linearly (seconds per pair x N).",
            "peak_extra_rss_mb: peak resident memory above the level before the search, sampled every 1 ms.",
        ],
    }
    started = time.perf_counter()
    if args.ten_million:
        results["ten_million"] = benchmark_ten_million(args, data_dir, cache_dir, output_dir)
        results["machine"]["load_average_end"] = os.getloadavg()
        results["wall_seconds"] = time.perf_counter() - started
        (output_dir / "ten_million.json").write_text(json.dumps(results, indent=2, default=float))
        print(json.dumps(results["ten_million"], indent=2, default=float))
        return results
    if args.students:
        results["students"] = benchmark_students(args, data_dir, cache_dir)
        results["machine"]["load_average_end"] = os.getloadavg()
        results["wall_seconds"] = time.perf_counter() - started
        (output_dir / "students.json").write_text(json.dumps(results, indent=2, default=float))
        for path, row in results["students"].items():
            times = ", ".join(f"N={n}: {t['seconds'] * 1000:.1f} ms" for n, t in row["sizes"].items())
            print(f"{path} ({row['embedding_dimension']}-d): {times}")
        return results

    queries, pool, texts, train, validation = benchmark_texts(data_dir, args)
    encoder = SentenceTransformer(base, device="cpu")
    encoder_plain = st_dse.build_student(base, device="cpu")  # Normalize dropped: what the heads see
    all_embeddings = cached_embeddings(encoder_plain, texts, cache_dir, "unnormalised")
    row_of = {text: row for row, text in enumerate(texts)}
    embedding_of = {text: all_embeddings[row] for text, row in row_of.items()}
    pool_embeddings = all_embeddings[[row_of[text] for text in pool]]
    query_embeddings = torch.from_numpy(all_embeddings[[row_of[q] for q in queries]])
    results["data"] = {"queries": len(queries), "distinct_candidates": len(pool), "head_training_pairs": len(train)}
    logger.info("%d queries, %d distinct candidates", len(queries), len(pool))

    concat, concat_accuracy = build_trained_student(base, "concat", 512, embedding_of, train, validation, args)
    factorized, factorized_accuracy = build_trained_student(
        base, "factorized", 512, embedding_of, train, validation, args
    )
    results["heads"] = {
        "training": f"PairHead fitted to qqp-subset train gold labels over frozen all-MiniLM-L6-v2 embeddings "
        f"({args.head_epochs} epochs, AdamW 1e-3); accuracy on the qqp-subset validation part",
        "concat_512_accuracy": concat_accuracy,
        "factorized_512_accuracy": factorized_accuracy,
    }

    if "search" not in args.skip:
        results["search"] = benchmark_search(
            args, queries, pool, pool_embeddings, query_embeddings, encoder, concat, factorized
        )
    if "options" not in args.skip:
        results["head_options"] = benchmark_head_options(
            args, queries, pool_embeddings, query_embeddings, embedding_of, train, validation, base
        )
    if "labelling" not in args.skip:
        teacher = CrossEncoder(base, num_labels=1, device="cpu")
        results["labelling"] = benchmark_labelling(teacher, train, args.labelling_pairs, args.labelling_repeats)
        logger.info("Labelling: %s", results["labelling"]["throughput_relative_to_raw_predict"])
    if "training" not in args.skip:
        results["training_step"] = benchmark_training_step(
            base, train, args.train_batch_size, args.train_steps, args.seed
        )
        logger.info("Training step: %s", results["training_step"]["median_seconds"])

    results["machine"]["load_average_end"] = os.getloadavg()
    results["wall_seconds"] = time.perf_counter() - started
    (output_dir / "speed.json").write_text(json.dumps(results, indent=2, default=float))
    if "search" in results:
        plot(results["search"], output_dir / "speed.png")
    print(markdown_tables(results))
    (output_dir / "speed.md").write_text(markdown_tables(results))
    return results


def benchmark_students(args, data_dir: Path, cache_dir: Path) -> dict:
    """One query against N cached candidates for each saved student: its own embeddings, its own head."""
    queries, pool = load_sentences(data_dir, args.queries + 1, args.seed)
    pool = pool[: max(args.sizes)]  # encode only the candidates some size uses
    rows = {}
    for path in args.students:
        student = st_dse.load_student(path, device="cpu")
        embeddings = cached_embeddings(student, pool, cache_dir, "student")
        row = {"embedding_dimension": int(embeddings.shape[1]), "sizes": {}}
        for size in args.sizes:
            index = CandidateIndex(student, embeddings[candidate_rows(len(pool), size, args.seed)])
            row["sizes"][size], _ = time_student(index, student, queries[1:], args.queries)
            logger.info("%s, N=%d: %.1f ms", path, size, row["sizes"][size]["seconds"] * 1000)
        rows[path] = row
    return rows


def benchmark_search(args, queries, pool, pool_embeddings, query_embeddings, encoder, concat, factorized) -> dict:
    timing_queries = queries[1 : args.queries + 1]
    recall_queries = query_embeddings[1 : args.recall_queries + 1]
    start = time.perf_counter()
    unique_exact_scores = CandidateIndex(concat, pool_embeddings).score_all(recall_queries)
    logger.info("Exact reference scores for %d queries in %.0f s", len(recall_queries), time.perf_counter() - start)

    teachers = {}
    base = resolve_model_name(st_dse.DEFAULT_MODEL)
    minilm_teacher = CrossEncoder(base, num_labels=1, device="cpu")
    teachers["teacher MiniLM-L6 cross-encoder"] = time_teacher(
        minilm_teacher, queries[0], pool[: args.teacher_sample], batch_size=32
    )
    del minilm_teacher
    if not args.skip_mpnet:
        mpnet_teacher = CrossEncoder(args.mpnet_model, num_labels=1, device="cpu")
        teachers["teacher mpnet-base (12-layer) cross-encoder"] = time_teacher(
            mpnet_teacher, queries[0], pool[: args.mpnet_sample], batch_size=32
        )
        del mpnet_teacher
    for name, stats in teachers.items():
        logger.info("%s: %.1f pairs/s (%d pairs)", name, 1 / stats["seconds_per_pair"], stats["sample_pairs"])

    sizes = []
    for size in args.sizes:
        rows = candidate_rows(len(pool), size, args.seed)
        embeddings = np.ascontiguousarray(pool_embeddings[rows])
        entry: dict = {"n": size, "sampled_with_repetition": size > len(pool), "systems": {}}
        systems = entry["systems"]
        for name, stats in teachers.items():
            systems[name] = {
                "seconds": stats["seconds_per_pair"] * size,
                "extrapolated": size > stats["sample_pairs"],
                "measured_on_pairs": stats["sample_pairs"],
                "peak_extra_rss_mb": stats["peak_extra_rss_mb"],
            }

        normalized = torch.nn.functional.normalize(torch.from_numpy(embeddings), dim=-1)
        systems["cosine (all-MiniLM-L6-v2)"] = time_cosine(encoder, normalized, timing_queries, args.queries)
        del normalized

        stored = CandidateIndex(concat, embeddings).embeddings
        exact_index = CandidateIndex(concat, stored)
        # Exhaustive exact float32 scores of the recall queries against all N rows: scored once per distinct
        # candidate and gathered to the rows (the same numbers as scoring every row; repeated rows are copies).
        exact_scores = unique_exact_scores[:, torch.from_numpy(rows)]
        repeats = args.queries if size <= 100_000 else args.exhaustive_concat_max_queries
        systems["DSE concat head, exact float32"], _ = time_student(exact_index, concat, timing_queries, repeats)

        def recall(index: CandidateIndex, reference: torch.Tensor) -> float:
            _, ids = index.search_embeddings(recall_queries, TOP_K)
            return statistics.mean(recall_at_k(ids[row], reference[row]) for row in range(len(ids)))

        bf16_index = CandidateIndex(concat, stored, rescore_k=100)
        stats, _ = time_student(bf16_index, concat, timing_queries, args.queries)
        stats["recall_at_10"] = recall(bf16_index, exact_scores)
        systems[f"DSE concat head, bfloat16 screen of all + float32 rescoring of {bf16_index.rescore_k}"] = stats

        prefilters = []
        if size >= 100_000:
            prefilters.append(("head", args.prefilter, args.prefilter_params or None, args.rerank_k, "bfloat16"))
        if size == 100_000:
            # For comparison: embedding similarity as the prefilter (exact cosine top 1000), the usual shortcut.
            prefilters.append(("cosine", "Flat", None, 1000, "float32"))
        for metric, spec, params, rerank_k, precision in prefilters:
            start = time.perf_counter()
            prefilter_index = CandidateIndex(
                concat,
                stored,
                faiss_index=spec,
                prefilter_metric=metric,
                rerank_k=rerank_k,
                rescore_k=100 if precision == "bfloat16" else None,
            )
            prefilter_index.faiss_params = params
            build_seconds = time.perf_counter() - start
            stats, _ = time_student(prefilter_index, concat, timing_queries, args.queries)
            stats["recall_at_10"] = recall(prefilter_index, exact_scores)
            stats["build_seconds"] = build_seconds
            rescoring = (
                f"bfloat16 screen + float32 rescoring of {prefilter_index.rescore_k}"
                if precision == "bfloat16"
                else "float32 scoring"
            )
            name = f"DSE concat head, faiss {spec} {metric} prefilter of {rerank_k}, {rescoring}"
            systems[name] = stats
            del prefilter_index
        del exact_scores

        factorized_stored = CandidateIndex(factorized, embeddings)
        systems["DSE factorized head, exact (torch)"], _ = time_student(
            factorized_stored, factorized, timing_queries, args.queries
        )
        flat_index = CandidateIndex(
            factorized,
            factorized_stored.embeddings,
            faiss_index="Flat",
        )
        systems["DSE factorized head, exact (faiss Flat)"], _ = time_student(
            flat_index, factorized, timing_queries, args.queries
        )
        del flat_index, factorized_stored, exact_index, bf16_index, stored

        reference = {name: systems[name]["seconds"] for name in teachers}
        for name, stats in systems.items():
            stats["candidates_per_second"] = size / stats["seconds"]
            stats["speedup_over"] = {teacher: seconds / stats["seconds"] for teacher, seconds in reference.items()}
        sizes.append(entry)
        logger.info("N=%d: %s", size, {name: round(s["seconds"], 4) for name, s in systems.items()})
        del embeddings
    return {"teachers": teachers, "sizes": sizes, "top_k": TOP_K}


def benchmark_head_options(args, queries, pool_embeddings, query_embeddings, embedding_of, train, validation, base):
    """At N=10k: what hidden size, compute precision and storage dtype cost in time and ranking fidelity."""
    size = 10_000
    timing_queries = queries[1 : args.queries + 1]
    recall_queries = query_embeddings[1 : args.recall_queries + 1]
    embeddings = np.ascontiguousarray(pool_embeddings[candidate_rows(len(pool_embeddings), size, args.seed)])
    rows = []
    for hidden_dim in (128, 512):
        student, accuracy = build_trained_student(base, "concat", hidden_dim, embedding_of, train, validation, args)
        exact_scores = CandidateIndex(student, embeddings).score_all(recall_queries)
        for storage_dtype in ("float32", "float16", "int8"):
            for precision in ("float32", "bfloat16"):
                index = CandidateIndex(
                    student,
                    embeddings,
                    storage_dtype=storage_dtype,
                    rescore_k=100 if precision == "bfloat16" else None,
                )
                stats, _ = time_student(index, student, timing_queries, args.queries)
                _, ids = index.search_embeddings(recall_queries, TOP_K)
                stats["recall_at_10_vs_exact_float32"] = statistics.mean(
                    recall_at_k(ids[row], exact_scores[row]) for row in range(len(ids))
                )
                rows.append(
                    {
                        "hidden_dim": hidden_dim,
                        "storage_dtype": storage_dtype,
                        "precision": precision,
                        "validation_accuracy": accuracy,
                        **stats,
                    }
                )
                logger.info("options %s", rows[-1])
    return {"n": size, "rows": rows}


def plot(search: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(search["sizes"][0]["systems"])
    for entry in search["sizes"][1:]:
        names += [name for name in entry["systems"] if name not in names]
    figure, axes = plt.subplots(figsize=(10, 6.5))
    for name in names:
        points = [(e["n"], e["systems"][name]) for e in search["sizes"] if name in e["systems"]]
        sizes = [n for n, _ in points]
        seconds = [s["seconds"] for _, s in points]
        extrapolated = [s.get("extrapolated", False) for _, s in points]
        (line,) = axes.plot(sizes, seconds, linestyle="--" if any(extrapolated) else "-", label=_short(name))
        measured = [(n, s) for n, s, e in zip(sizes, seconds, extrapolated) if not e]
        if measured:
            axes.plot(*zip(*measured), "o", color=line.get_color())
        guessed = [(n, s) for n, s, e in zip(sizes, seconds, extrapolated) if e]
        if guessed:
            axes.plot(*zip(*guessed), "o", mfc="none", color=line.get_color())
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("candidates N (one query, candidates cached)")
    axes.set_ylabel("wall time per query (s), query encoding included")
    axes.set_title("One query against N candidates, 2-core CPU (open markers, dashed: teacher extrapolated)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _short(name: str) -> str:
    return name if len(name) < 70 else name[:67] + "..."


def markdown_tables(results: dict) -> str:
    lines = []
    load = results["machine"]
    lines.append(f"Load average at start {load['load_average_start']}, at end {load.get('load_average_end')}.\n")
    if "search" in results:
        teachers = list(results["search"]["teachers"])
        header = "| N | system | time per query | candidates/s | " + " | ".join(f"speedup vs {t}" for t in teachers)
        header += " | recall@10 | peak extra RSS (MB) | index (MB) |"
        lines += [header, "|" + "---|" * (7 + len(teachers))]
        for entry in results["search"]["sizes"]:
            for name, stats in entry["systems"].items():
                seconds = stats["seconds"]
                shown = f"{seconds:.3g} s" + (" (extrapolated)" if stats.get("extrapolated") else "")
                speedups = " | ".join(f"{stats['speedup_over'][t]:,.0f}x" for t in teachers)
                recall = stats.get("recall_at_10")
                lines.append(
                    f"| {entry['n']:,} | {name} | {shown} | {stats['candidates_per_second']:,.0f} | {speedups} | "
                    f"{'' if recall is None else f'{recall:.3f}'} | {stats.get('peak_extra_rss_mb', 0):.0f} | "
                    f"{stats.get('index_mb', 0):.0f} |"
                )
        lines.append("")
    if "head_options" in results:
        lines += [
            f"Concat head options at N={results['head_options']['n']:,} "
            "(recall@10 against the same head, exact float32):",
            "",
            "| hidden | storage | precision | time per query | encode | head | recall@10 | QQP-subset val. acc. |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in results["head_options"]["rows"]:
            lines.append(
                f"| {row['hidden_dim']} | {row['storage_dtype']} | {row['precision']} | "
                f"{row['seconds'] * 1e3:.1f} ms | "
                f"{row['encode_seconds'] * 1e3:.1f} ms | {row['search_seconds'] * 1e3:.1f} ms | "
                f"{row['recall_at_10_vs_exact_float32']:.3f} | {row['validation_accuracy']:.2f} |"
            )
        lines.append("")
    if "labelling" in results:
        labelling = results["labelling"]
        lines += [f"Teacher labelling, {labelling['pairs']} pairs, best of {labelling['repeats']}:", ""]
        lines += ["| path | seconds | pairs/s | throughput vs raw predict |", "|---|---|---|---|"]
        for name, seconds in labelling["best_seconds"].items():
            lines.append(
                f"| {name} | {seconds:.2f} | {labelling['pairs_per_second'][name]:.1f} | "
                f"{labelling['throughput_relative_to_raw_predict'][name]:.3f} |"
            )
        lines.append("")
    if "training_step" in results:
        step = results["training_step"]
        lines += [f"Training step (batch {step['batch_size']}, median of {step['steps']}):", ""]
        lines += ["| loss | seconds per step |", "|---|---|"]
        for name, seconds in step["median_seconds"].items():
            lines.append(f"| {name} | {seconds:.3f} |")
        lines.append(
            f"\nDSELoss / SoftmaxLoss step time: {step['dse_over_softmax']:.3f}; with per-column forwards: "
            f"{step['dse_per_column_over_softmax']:.3f}\n"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
