"""Label a task's pairs with a teacher's raw logits into the cache, in shards across processes or machines.

Usage:
    # One shard per process or machine (here 4); each labels about a quarter of the pairs into the cache.
    python recipes/label_teacher.py --task qqp-subset --teacher runs/qqp/teacher --data-dir ../shared/data \
        --shard-index 0 --num-shards 4 --cache-dir /shared/cache
    ...
    # Then check that every pair is cached and fold the shards' files into one (labels nothing):
    python recipes/label_teacher.py --task qqp-subset --teacher runs/qqp/teacher --data-dir ../shared/data \
        --merge --num-shards 4 --cache-dir /shared/cache

Pairs are assigned to shards by a hash of their text, so every process agrees on the split whatever its row order.
Shards may run at the same time with one shared --cache-dir, or on machines with their own cache folders: copy the
folders' files into one folder (file names are unique) before --merge. Without shard options and without --merge,
every missing pair is labelled. A killed shard loses at most its batch in flight: rerun the same command.

recipes/distill.py with the same --teacher and --cache-dir then finds every logit cached.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter

from sentence_transformers import CrossEncoder

from st_dse.models import resolve_model_name
from st_dse.tasks import TASKS, get_task, load_task
from st_dse.teacher import (
    TeacherLogitCache,
    default_cache_dir,
    label_with_teacher,
    pair_key,
    shard_of,
    teacher_fingerprint,
)

logger = logging.getLogger("label_teacher")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help=f"one of {sorted(TASKS)}")
    parser.add_argument("--teacher", required=True, help="the fine-tuned CrossEncoder (a path or Hub id)")
    parser.add_argument("--data-dir", help="local GLUE/SentEval data (default: $ST_DSE_DATA_DIR, else the hub)")
    parser.add_argument("--split", default="train", help="which split to label (default: train)")
    parser.add_argument("--max-samples", type=int, help="label only the first N rows (as distill.py's option)")
    parser.add_argument("--cache-dir", help="teacher-logit cache (default: $ST_DSE_CACHE or ~/.cache/st_dse)")
    parser.add_argument("--batch-size", type=int, default=32, help="teacher batch size")
    parser.add_argument("--shard-index", type=int, help="which shard to label, 0 to --num-shards - 1")
    parser.add_argument("--num-shards", type=int, help="how many shards the pairs are split into")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="label nothing: check that every pair is cached (naming unfinished shards when --num-shards is given) "
        "and merge the cache files into one",
    )
    args = parser.parse_args(argv)
    if (args.shard_index is None) != (args.num_shards is None) and not args.merge:
        parser.error("--shard-index and --num-shards go together")
    if args.merge and args.shard_index is not None:
        parser.error("--merge checks every shard; leave out --shard-index")
    return args


def _count_scored_pairs(teacher: CrossEncoder) -> list[int]:
    """Count the pairs the teacher actually scores (the rest came from the cache) in the returned one-item list."""
    scored = [0]
    predict = teacher.predict

    def counting_predict(pairs, *args, **kwargs):
        scored[0] += len(pairs)
        return predict(pairs, *args, **kwargs)

    teacher.predict = counting_predict
    return scored


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    task = get_task(args.task)
    dataset = load_task(task, args.split, args.data_dir, max_samples=args.max_samples)
    teacher = CrossEncoder(resolve_model_name(args.teacher))
    cache_dir = args.cache_dir or default_cache_dir()
    summary = {"task": task.name, "split": args.split, "pairs": len(dataset), "teacher": args.teacher}

    if args.merge:
        cache = TeacherLogitCache(cache_dir, teacher_fingerprint(teacher))
        keys = [pair_key(a, b) for a, b in zip(dataset["sentence1"], dataset["sentence2"])]
        missing = [key for key in dict.fromkeys(keys) if key not in cache]
        if missing:
            where = ""
            if args.num_shards:
                per_shard = Counter(shard_of(key, args.num_shards) for key in missing)
                where = " Unfinished shards (pairs missing): " + ", ".join(
                    f"{shard} ({count})" for shard, count in sorted(per_shard.items())
                )
            raise SystemExit(
                f"{len(missing)} of {len(set(keys))} distinct pairs have no cached logits in {cache.directory}."
                f"{where}. Rerun those shards (a rerun labels only what is missing), then --merge again."
            )
        cache.merge()
        summary.update(cached=len(keys), labelled=0, cache_files=[str(path) for path in cache.files])
    else:
        start = time.perf_counter()
        scored = _count_scored_pairs(teacher)
        labelled = label_with_teacher(
            teacher,
            dataset,
            batch_size=args.batch_size,
            cache_dir=cache_dir,
            shard_index=args.shard_index,
            num_shards=args.num_shards,
        )
        summary.update(
            shard_index=args.shard_index,
            num_shards=args.num_shards,
            rows_in_shard=len(labelled),
            labelled=scored[0],
            seconds=round(time.perf_counter() - start, 1),
        )
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
