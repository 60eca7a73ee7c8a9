"""Reranking speed as a search or RAG reranker feels it, and what the int8 ONNX encoder costs in accuracy.

Three situations, each timed for the teacher (``CrossEncoder.rank``) and the student, side by side in one process:

- **cold**: one query against documents never seen before (the student encodes them all, then runs its head);
- **partly warm**: the same documents ranked for several queries in a row, time per query (the student encodes the
  documents once, on the first query);
- **warm**: the documents' embeddings are already cached, time per query (one query encoding and the head).

Student paths: :class:`st_dse.DSEReranker` (torch; its document cache), and the student's ONNX export run by
onnxruntime (:class:`st_dse.inference.export.OnnxStudent`, caching the documents' embeddings the way its README
example does) with a float32 encoder and with an int8 one (``export_onnx(..., quantize=True)``). Medians over repeats;
queries and documents are distinct sentences of the task's dev split. The accuracy cost is the task's dev metric and
the largest logit difference for each student path, on every dev pair.

Usage:
    python -m evaluation.rerank_speed --student runs/mrpc --teacher runs/mrpc-teacher --task mrpc \\
        --data-dir ../shared/data --output-dir runs/rerank-speed

Writes ``rerank_speed.json`` (numbers, settings, machine, load average before and after) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime
import sentence_transformers
import torch
from sentence_transformers import CrossEncoder

import st_dse
from evaluation.arguments import int_at_least, task_name
from evaluation.speed import cpu_model
from st_dse.data import compute_metrics, get_task, load_task, logits_to_predictions, resolve_data_dir
from st_dse.inference.export import OnnxStudent, export_onnx

SITUATIONS = ("cold", "partly_warm", "warm")


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_teacher(teacher: CrossEncoder, queries: list[str], documents: list[str], repeats: int) -> dict:
    # A cross-encoder has nothing to cache: every query costs one pass per document, in every situation.
    seconds = median_seconds(lambda: teacher.rank(queries[0], documents), repeats)
    return dict.fromkeys(SITUATIONS, seconds)


def time_reranker(reranker: st_dse.DSEReranker, queries: list[str], documents: list[str], repeats: int) -> dict:
    def cold():
        reranker.clear_cache()
        reranker.rank(queries[0], documents)

    def partly_warm():
        reranker.clear_cache()
        for query in queries:
            reranker.rank(query, documents)

    times = {"cold": median_seconds(cold, repeats), "partly_warm": median_seconds(partly_warm, repeats) / len(queries)}
    reranker.rank(queries[0], documents)  # documents cached
    times["warm"] = median_seconds(lambda: [reranker.rank(query, documents) for query in queries], repeats)
    times["warm"] /= len(queries)
    return times


def time_onnx(student: OnnxStudent, queries: list[str], documents: list[str], repeats: int) -> dict:
    def rank(query: str, document_embeddings: np.ndarray) -> np.ndarray:
        return np.argsort(-student.score_embeddings(student.encode([query]), document_embeddings), axis=0)

    def partly_warm():
        document_embeddings = student.encode(documents)
        for query in queries:
            rank(query, document_embeddings)

    cached = student.encode(documents)
    return {
        "cold": median_seconds(lambda: rank(queries[0], student.encode(documents)), repeats),
        "partly_warm": median_seconds(partly_warm, repeats) / len(queries),
        "warm": median_seconds(lambda: [rank(query, cached) for query in queries], repeats) / len(queries),
    }


def dev_accuracy(task, dev, logits_of: dict[str, np.ndarray]) -> dict:
    reference = logits_of["torch"]
    return {
        name: {
            **compute_metrics(task, logits_to_predictions(task, logits), dev["label"]),
            "max_abs_logit_difference_vs_torch": float(np.abs(logits - reference).max()),
        }
        for name, logits in logits_of.items()
    }


def markdown(results: dict) -> str:
    timing = results["timing"]
    teacher = next(iter(timing.values()))  # the first row is the teacher: ratios are against it
    lines = [
        "| system | cold: 1 query, new documents | partly warm: per query, same documents | warm: per query, cached |",
        "|---|---:|---:|---:|",
    ]
    for name, times in timing.items():
        cells = [f"{times[s] * 1000:,.1f} ms ({teacher[s] / times[s]:.1f}x)" for s in SITUATIONS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| student path | " + " | ".join(results["task_metrics"]) + " | max logit difference vs torch |"]
    lines.append("|---|" + "---:|" * (len(results["task_metrics"]) + 1))
    for name, metrics in results["accuracy"].items():
        values = " | ".join(f"{metrics[m]:.2f}" for m in results["task_metrics"])
        lines.append(f"| {name} | {values} | {metrics['max_abs_logit_difference_vs_torch']:.4f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="a saved DSE student folder")
    parser.add_argument("--teacher", required=True, help="its cross-encoder teacher (a folder or a Hub id)")
    parser.add_argument("--task", type=task_name, default="mrpc", help="the task whose dev split gives the texts")
    parser.add_argument("--data-dir", help="the folder holding glue/ (default: $ST_DSE_DATA_DIR)")
    parser.add_argument("--output-dir", required=True, help="where rerank_speed.json and the ONNX exports go")
    parser.add_argument("--documents", type=int_at_least(1), default=100, help="documents per query (default 100)")
    parser.add_argument("--queries", type=int_at_least(1), default=20, help="queries on the same documents (20)")
    parser.add_argument("--repeats", type=int_at_least(1), default=5, help="timed repeats, median kept (default 5)")
    parser.add_argument("--threads", type=int_at_least(1), default=1, help="CPU threads for torch and onnxruntime (1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        raise SystemExit("no benchmark data: pass --data-dir DIR (the folder holding glue/) or set ST_DSE_DATA_DIR.")
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    dev = load_task(task, "validation", data_dir)
    documents = list(dict.fromkeys(dev["sentence2"]))  # distinct, in dev order
    if len(documents) < args.documents:
        available = len(documents)
        raise SystemExit(f"{task.name} dev has {available} distinct documents: pass --documents {available}.")
    documents = documents[: args.documents]
    taken = set(documents)
    queries = [text for text in dict.fromkeys(dev["sentence1"]) if text not in taken]
    if len(queries) < args.queries:
        raise SystemExit(f"{task.name} dev has {len(queries)} distinct queries: pass --queries {len(queries)}.")
    queries = queries[: args.queries]

    output_dir = Path(args.output_dir)
    load_average_start = os.getloadavg()
    student = st_dse.load_student(args.student, device="cpu")
    teacher = CrossEncoder(args.teacher, device="cpu")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    folders = {"onnx float32": output_dir / "onnx-float32", "onnx int8": output_dir / "onnx-int8"}
    onnx_students = {
        name: OnnxStudent(export_onnx(student, folder, quantize=name == "onnx int8"), session_options=options)
        for name, folder in folders.items()
    }

    with torch.inference_mode():
        timing = {"teacher CrossEncoder.rank": time_teacher(teacher, queries, documents, args.repeats)}
        timing["DSEReranker.rank (torch)"] = time_reranker(
            st_dse.DSEReranker(student), queries, documents, args.repeats
        )
        for name, onnx_student in onnx_students.items():
            timing[name] = time_onnx(onnx_student, queries, documents, args.repeats)
        logits_of = {"torch": st_dse.score_pairs(student, dev["sentence1"], dev["sentence2"])}
    logits_of.update({name: s.score_pairs(dev["sentence1"], dev["sentence2"]) for name, s in onnx_students.items()})

    results = {
        "settings": vars(args),
        "data": {"task": task.name, "documents": len(documents), "queries": len(queries), "dev_pairs": len(dev)},
        "timing": timing,
        "task_metrics": list(task.metrics),
        "accuracy": dev_accuracy(task, dev, logits_of),
        "encoder_onnx_bytes": {name: (folder / "encoder.onnx").stat().st_size for name, folder in folders.items()},
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "load_average_start": load_average_start,
            "load_average_end": os.getloadavg(),
        },
    }
    (output_dir / "rerank_speed.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
