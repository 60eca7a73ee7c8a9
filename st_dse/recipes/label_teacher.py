r"""Label pairs (a task's split or your own file) with a teacher's raw logits into the cache, in shards if you like.

Usage:
    # One shard per process or machine (here 4); each labels about a quarter of the pairs into the cache.
    st-dse label --task qqp-subset --teacher runs/qqp/teacher --data-dir DATA \
        --shard-index 0 --num-shards 4 --cache-dir /shared/cache
    ...
    # Then check that every pair is cached and fold the shards' files into one (labels nothing):
    st-dse label --task qqp-subset --teacher runs/qqp/teacher --data-dir DATA \
        --merge --num-shards 4 --cache-dir /shared/cache

Pairs are assigned to shards by a hash of their text, so every process agrees on the split whatever its row order.
Shards may run at the same time with one shared --cache-dir, or on machines with their own cache folders: copy the
folders' files into one folder (file names are unique) before --merge. Without shard options and without --merge,
every missing pair is labelled. A killed shard loses at most its batch in flight: rerun the same command.

recipes/distill.py with the same --teacher and --cache-dir then finds every logit cached.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

from sentence_transformers import CrossEncoder

from st_dse.data import get_task, load_task
from st_dse.data.sources import DataConfig, load_pairs
from st_dse.hub import resolve_model_name
from st_dse.recipes import refused, start_logging
from st_dse.teacher import (
    TeacherLogitCache,
    default_cache_dir,
    label_with_teacher,
    pair_key,
    shard_of,
    teacher_fingerprint,
)
from st_dse.training.config import LabelConfig, parse_config

logger = logging.getLogger("label_teacher")


def load_split(data: DataConfig, config: LabelConfig, teacher: CrossEncoder):
    """The pairs to label: a split of the registered task, or your own training pairs."""
    if data.own_pairs:
        return load_pairs(data, teacher)[1]
    return load_task(get_task(data.task), config.split, data.data_dir, max_samples=data.max_train_samples)


def merge_shards(teacher: CrossEncoder, dataset, args: LabelConfig, cache_dir) -> dict:
    """--merge: check that every pair is cached (naming the unfinished shards), then fold the cache files into one."""
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
    return {"cached": len(keys), "labelled": 0, "cache_files": [str(path) for path in cache.files]}


def label_shard(teacher: CrossEncoder, dataset, args: LabelConfig, cache_dir) -> dict:
    """Label the pairs of one shard (all pairs without shard options) that the cache lacks."""
    start, scored, predict = time.perf_counter(), [], teacher.predict
    # Count the pairs the teacher actually scores (the rest come from the cache).
    teacher.predict = lambda pairs, *rest, **options: scored.append(len(pairs)) or predict(pairs, *rest, **options)
    shard = {"shard_index": args.shard_index, "num_shards": args.num_shards}
    labelled = label_with_teacher(teacher, dataset, batch_size=args.batch_size, cache_dir=cache_dir, **shard)
    seconds = round(time.perf_counter() - start, 1)
    return {**shard, "rows_in_shard": len(labelled), "labelled": sum(scored), "seconds": seconds}


def main(argv: list[str] | None = None) -> dict:
    start_logging()
    data, args = parse_config((DataConfig, LabelConfig), argv, description=__doc__)
    with refused():
        teacher = CrossEncoder(resolve_model_name(args.teacher))
        dataset = load_split(data, args, teacher)
    cache_dir = args.cache_dir or default_cache_dir()
    source = data.task or data.train_file or data.dataset
    summary = {"task": source, "split": args.split, "pairs": len(dataset), "teacher": args.teacher}
    summary |= (merge_shards if args.merge else label_shard)(teacher, dataset, args, cache_dir)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
