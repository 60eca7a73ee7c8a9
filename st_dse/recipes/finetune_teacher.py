"""Fine-tune a CrossEncoder teacher on sentence pairs with gold labels: a benchmark task or your own labelled pairs.

Usage:
    st-dse finetune-teacher --task mrpc --data-dir DATA --output-dir runs/mrpc-teacher
    st-dse finetune-teacher --task stsb --base-model sentence-transformers/all-mpnet-base-v2 --output-dir t
    st-dse finetune-teacher --train-file labelled.csv --dev-file dev.csv --output-dir runs/my-teacher

The teacher outputs raw logits (one for binary tasks and regression, k for k-way tasks), which
``recipes/distill.py --teacher runs/mrpc-teacher`` distils into a fast siamese student. Checkpoints go to
OUTPUT_DIR-checkpoints. Your own pairs need gold labels here: class ids 0..k-1 or graded scores.
"""

from __future__ import annotations

import logging
import time

from st_dse.data.sources import DataConfig, load_pairs
from st_dse.hub import resolve_model_name
from st_dse.recipes import refused, start_logging
from st_dse.training import finetune_teacher
from st_dse.training import run_record as records
from st_dse.training.config import RunConfig, TeacherConfig, parse_config
from st_dse.training.train import barrier, check_output_dir, is_main_process, sibling_dir


def main(argv: list[str] | None = None) -> None:
    start_logging()
    data, config, run = parse_config((DataConfig, TeacherConfig, RunConfig), argv, description=__doc__)
    checkpoints = sibling_dir(run.output_dir, "checkpoints")
    with refused():
        sources = [data.train_file, data.dev_file, data.data_dir, config.base_model]
        records.check_output_folders([run.output_dir, checkpoints], sources)
        check_output_dir(run.output_dir, run.overwrite, run.resume, kind="teacher")
        resolve_model_name(config.base_model)  # loadable now, not after the data
        # 1. Load the train and dev pairs; the task's shape comes from the registry or from the gold labels.
        task, train, dev = load_pairs(data)
        train = train.filter(lambda row: row["label"] is not None)
        if dev is not None and "label" not in dev.column_names:
            dev = None
        # Recorded before any work: --resume continues only this run, --overwrite deletes only an st_dse run's files.
        inputs = records.data_inputs(task, train, dev, base_model=config.base_model)
        runs = [(checkpoints, records.run_record("teacher", (data, config, run), inputs))]
        records.check_runs(runs, run.overwrite, run.resume)
    records.start_runs(runs, run.resume)
    logging.info("%s: %d labelled train pairs, %s dev pairs", task.name, len(train), len(dev) if dev else "no")

    # 2. Fine-tune, evaluate on dev, save.
    start = time.perf_counter()
    finetune_teacher(task, train, dev, run.output_dir, config, resume=run.resume)
    logging.info("Teacher trained in %.0f s and saved to %s", time.perf_counter() - start, run.output_dir)
    barrier()
    if is_main_process() and not run.keep_checkpoints:
        records.remove_checkpoints(checkpoints)


if __name__ == "__main__":
    main()
