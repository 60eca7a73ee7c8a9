"""Distil a cross-encoder teacher into a fast siamese student (DSE) on sentence pairs: a benchmark task or your own.

Usage:
    # A registered task; without --teacher a quick teacher is fine-tuned first (kept in OUTPUT_DIR-teacher).
    st-dse distill --task mrpc --data-dir DATA --output-dir runs/mrpc
    st-dse distill --task stsb --teacher runs/stsb-teacher --output-dir runs/stsb
    st-dse distill --task mrpc --distillation-weight 0 --output-dir runs/mrpc-gold   # gold-only baseline
    # Also distil the teacher's ranking of 1000 training sentences' lists of 32 candidates (listwise KL).
    st-dse distill --task mrpc --ranking-weight 1 --list-size 32 --ranking-queries 1000 --output-dir out

    # Your own teacher and pairs (CSV, TSV, JSONL or Parquet; the label column is optional).
    st-dse distill --teacher cross-encoder/quora-distilroberta-base --train-file my.csv --output-dir out

The student is saved in OUTPUT_DIR as a standard sentence-transformers folder: ``SentenceTransformer(OUTPUT_DIR)``
loads the encoder, ``st_dse.load_student(OUTPUT_DIR)`` the encoder and its PairHead (in OUTPUT_DIR/pair_head).
OUTPUT_DIR/dse.json holds the settings, the teacher's and student's dev metrics and their agreement. Checkpoints go
to OUTPUT_DIR-checkpoints, a teacher fine-tuned here to OUTPUT_DIR-teacher. Each run records its settings and inputs
in OUTPUT_DIR-checkpoints/run.json before any work: --resume continues only that run. Under torchrun the teacher
labelling is split across the processes and the summary is written once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from sentence_transformers import CrossEncoder
from transformers import AutoConfig

from st_dse.data import augment_pairs, candidate_lists, get_task, list_labels, list_pairs, with_augmented
from st_dse.data.sources import DataConfig, load_pairs
from st_dse.hub import is_hub_id, resolve_model_name
from st_dse.inference import score_pairs
from st_dse.integrity import recover_interrupted_save
from st_dse.losses import check_teacher_logit_scale
from st_dse.recipes import refused, start_logging
from st_dse.student import load_model
from st_dse.teacher import raw_logits
from st_dse.training import distill_student, evaluate_student, finetune_teacher, save_student
from st_dse.training import run_record as records
from st_dse.training.config import DistillConfig, RunConfig, TeacherConfig, config_fields, parse_config
from st_dse.training.evaluator import EVAL_BATCH_SIZE, agreement_report, format_report, relative_degradation
from st_dse.training.train import barrier, check_output_dir, is_main_process, label_across_ranks, sibling_dir

logger = logging.getLogger("distill")


def parse_args(argv: list[str] | None = None, task: str | None = None):
    data, config, run = parse_config(
        (DataConfig, DistillConfig, RunConfig), argv, description=__doc__, defaults={"task": task} if task else None
    )
    if data.task is not None:  # your own pairs' task is known once they are loaded (step 1 of main)
        with refused():
            check_teacher_logit_scale(config.teacher_logit_scale, get_task(data.task).problem_type)
    return data, config, run


def check_before_work(data: DataConfig, config: DistillConfig, run: RunConfig) -> None:
    """Before any work: the output folders may be written (none is an input, the working directory or a folder
    holding what st_dse did not write), the models load (see resolve_model_name), --teacher is a cross-encoder, and
    the student's encoder has the layers and positions --pooling-layers and --max-seq-length ask for."""
    checkpoints, teacher_dir = sibling_dir(run.output_dir, "checkpoints"), sibling_dir(run.output_dir, "teacher")
    outputs = [run.output_dir, checkpoints]
    if not config.teacher:  # a teacher fine-tuned here goes to OUTPUT_DIR-teacher, its checkpoints beside it
        outputs += [teacher_dir, sibling_dir(teacher_dir, "checkpoints")]
    sources = [data.train_file, data.dev_file, data.data_dir, config.teacher, config.teacher_base, config.student]
    records.check_output_folders(outputs, sources)
    check_output_dir(run.output_dir, run.overwrite, run.resume)
    if not config.teacher:  # refuse a foreign OUTPUT_DIR-teacher now, whatever the flags
        check_output_dir(teacher_dir, True, True, kind="teacher")
    for name in (config.student, config.teacher or config.teacher_base):
        if not os.path.exists(name) and not is_hub_id(name):
            raise FileNotFoundError(f"No model folder at {name!r}, and it is not a Hub id: pass an existing folder.")
    student = AutoConfig.from_pretrained(resolve_model_name(config.student))
    teacher = resolve_model_name(config.teacher or config.teacher_base)
    if config.teacher and os.path.isdir(teacher):
        saved = Path(teacher, "config_sentence_transformers.json")
        kind = json.loads(saved.read_text()).get("model_type") if saved.is_file() else None
        architectures = AutoConfig.from_pretrained(teacher).architectures or []
        if kind != "CrossEncoder" and not any(name.endswith("ForSequenceClassification") for name in architectures):
            raise ValueError(
                f"--teacher {teacher} is not a cross-encoder (a sentence encoder scores no pairs): pass a "
                "CrossEncoder folder or Hub id, or fine-tune one with st-dse finetune-teacher."
            )
    limits = {"--pooling-layers": ("num_hidden_layers", config.pooling_layers, "layers")}
    limits["--max-seq-length"] = ("max_position_embeddings", config.max_seq_length, "positions")
    for option, (field_name, value, what) in limits.items():
        if value is not None and value > getattr(student, field_name, value):
            raise ValueError(
                f"{option} {value}: the student's encoder {config.student} has {getattr(student, field_name)} {what}."
            )


def plan_teacher(config: DistillConfig, run: RunConfig, task, train, dev) -> tuple | None:
    """Without --teacher: None when OUTPUT_DIR-teacher holds a teacher of this very run (reused), else how one is
    fine-tuned here on the gold labels: (its settings, its pairs, its run record)."""
    labelled = train.filter(lambda row: row["label"] is not None) if "label" in train.column_names else []
    if not len(labelled):
        raise SystemExit(
            "error: the pairs have no gold labels to fine-tune a teacher on: pass --teacher (a CrossEncoder)."
        )
    teacher_config = TeacherConfig(base_model=config.teacher_base, epochs=config.teacher_epochs, seed=config.seed)
    inputs = records.data_inputs(task, labelled, dev, base_model=config.teacher_base)
    record = records.run_record("teacher", [teacher_config], inputs)
    teacher_dir = sibling_dir(run.output_dir, "teacher")
    if is_main_process():  # a teacher save killed between its two renames left the teacher beside its folder
        recover_interrupted_save(teacher_dir)
    barrier()
    if not (teacher_dir / "config.json").is_file() or run.overwrite:
        return teacher_config, labelled, record
    old = records.read_run_record(sibling_dir(teacher_dir, "checkpoints"))
    changes = records.changed_settings(old, record) if old else [f"no {records.RUN_FILE} records how it was trained"]
    if changes:
        raise SystemExit(
            f"error: {teacher_dir} holds a teacher of another run ({'; '.join(changes)}): pass --teacher "
            f"{teacher_dir} to distil from it as it is, --overwrite to fine-tune a new one, or another --output-dir."
        )
    return None


def load_or_train_teacher(config: DistillConfig, run: RunConfig, task, dev, plan) -> tuple[CrossEncoder, str]:
    """The teacher: given, reused from OUTPUT_DIR-teacher, or fine-tuned now as :func:`plan_teacher` planned."""
    if config.teacher:
        return CrossEncoder(resolve_model_name(config.teacher)), config.teacher
    teacher_dir = sibling_dir(run.output_dir, "teacher")
    if plan is None:
        logger.info("Reusing the teacher fine-tuned earlier in %s", teacher_dir)
        return CrossEncoder(str(teacher_dir)), str(teacher_dir)
    teacher_config, labelled, _ = plan
    logger.info("No --teacher given: fine-tuning %s as the teacher in %s", config.teacher_base, teacher_dir)
    return finetune_teacher(task, labelled, dev, teacher_dir, teacher_config, resume=run.resume), str(teacher_dir)


def label_training_pairs(teacher, config: DistillConfig, train, timings: dict):
    """The teacher's logits for every training pair, plus teacher-labelled augmentation pairs when asked for."""
    start = time.perf_counter()
    options = {"batch_size": config.label_batch_size, "cache_dir": config.cache_dir}
    train = label_across_ranks(teacher, train, **options)
    timings["labelling"] = time.perf_counter() - start
    if config.augment > 0:
        start = time.perf_counter()
        needs_model = "neighbours" in config.augment_strategies
        extra = augment_pairs(
            train,
            factor=config.augment,
            strategies=config.augment_strategies,
            model=load_model(config.student) if needs_model else None,
            seed=config.seed,
        )
        train = with_augmented(train, label_across_ranks(teacher, extra, **options))
        timings["augmentation"] = time.perf_counter() - start
        logger.info("Training on %d pairs, %d of them teacher-labelled only", len(train), len(extra))
    return train


def label_candidate_lists(teacher, config: DistillConfig, train, timings: dict):
    """Candidate lists of training sentences for the ranking term, every (query, candidate) pair teacher-labelled."""
    start = time.perf_counter()
    lists = candidate_lists(train, load_model(config.student), config.list_size, config.ranking_queries, config.seed)
    options = {"batch_size": config.label_batch_size, "cache_dir": config.cache_dir}
    pairs = label_across_ranks(teacher, list_pairs(lists), **options)
    timings["candidate_labelling"] = time.perf_counter() - start
    message = "Ranking term: %d lists, %d teacher-labelled (query, candidate) pairs, %.1f s"
    logger.info(message, len(lists), len(pairs), timings["candidate_labelling"])
    return lists.add_column("label", list_labels(pairs["teacher_logits"], len(lists)))


def dev_report(student, teacher, task, dev, metrics: dict) -> dict | None:
    """Student against teacher on the dev pairs (and both against gold where the dev pairs have labels)."""
    if dev is None:
        return None
    gold = dev["label"] if "label" in dev.column_names else None
    if teacher is None:
        if gold is not None:
            metrics["student"] = evaluate_student(student, task, dev)
        return None
    # In evaluate_student's and evaluate_cross_encoder's batches, so that the metrics equal theirs exactly.
    student_logits = score_pairs(student, dev["sentence1"], dev["sentence2"], batch_size=EVAL_BATCH_SIZE)
    teacher_logits = raw_logits(teacher, list(zip(dev["sentence1"], dev["sentence2"])), batch_size=EVAL_BATCH_SIZE)
    report = agreement_report(student_logits, teacher_logits, task, gold=gold)
    if report.get("student_metrics"):
        metrics["student"], metrics["teacher"] = report["student_metrics"], report["teacher_metrics"]
    print(format_report(report))
    return report


def main(argv: list[str] | None = None, task: str | None = None) -> dict:
    start_logging()
    data, config, run = parse_args(argv, task)
    with refused():
        check_before_work(data, config, run)
    checkpoints, teacher_dir = sibling_dir(run.output_dir, "checkpoints"), sibling_dir(run.output_dir, "teacher")
    timings: dict[str, float] = {}

    # 1. The pairs and the task they form (with your own pairs: the task's shape comes from the teacher).
    teacher, teacher_name = None, None
    if config.teacher and data.own_pairs:
        teacher, teacher_name = CrossEncoder(resolve_model_name(config.teacher)), config.teacher
    with refused():
        task, train, dev = load_pairs(data, teacher)
        if data.own_pairs:  # a registered task's was checked when parsed
            check_teacher_logit_scale(config.teacher_logit_scale, task.problem_type)
    labelled = "label" in train.column_names and any(label is not None for label in train["label"])
    logger.info("%s: %d train pairs, %s dev pairs", task.name, len(train), len(dev) if dev is not None else "no")
    if not labelled:
        if config.distillation_weight == 0:
            raise SystemExit("error: --distillation-weight 0 trains on gold labels, and the pairs have none.")
        if config.distillation_weight < 1:
            logger.info("The training pairs carry no gold labels: the student learns from the teacher alone.")
            config.distillation_weight = 1.0

    # 2. Record the runs this command starts (the student's, a teacher's fine-tuned here), refusing, before any
    # work, a --resume of another run and an --overwrite of anything an st_dse run did not write.
    models = {"student": config.student, "teacher": config.teacher or config.teacher_base}
    inputs = records.data_inputs(task, train, dev, **models)
    runs = [(checkpoints, records.run_record("student", (data, config, run), inputs))]
    plan = None if config.teacher or config.distillation_weight == 0 else plan_teacher(config, run, task, train, dev)
    if plan is not None:
        runs.append((sibling_dir(teacher_dir, "checkpoints"), plan[2]))
    with refused():
        records.check_runs(runs, run.overwrite, run.resume)
    records.start_runs(runs, run.resume)

    # 3. Teacher: given, found beside the output folder, or fine-tuned now; then label the training pairs (and the
    #    candidate lists of the ranking term).
    if config.distillation_weight > 0:
        start = time.perf_counter()
        if teacher is None:
            teacher, teacher_name = load_or_train_teacher(config, run, task, dev, plan)
        timings["teacher"] = time.perf_counter() - start
        train = label_training_pairs(teacher, config, train, timings)
    lists = None  # the ranking term's candidate lists, labelled by the teacher (a config check ensures one)
    if config.ranking_weight > 0:
        lists = label_candidate_lists(teacher, config, train, timings)

    # 4. Train the student with DSELoss, evaluating on dev each epoch and keeping the best checkpoint.
    start = time.perf_counter()
    dev_with_gold = None  # the dev pairs that carry a gold label pick the best epoch
    if dev is not None and "label" in dev.column_names:
        dev_with_gold = dev.filter(lambda row: row["label"] is not None)
        dev_with_gold = dev_with_gold if len(dev_with_gold) else None
    student = distill_student(task, train, dev_with_gold, checkpoints, config, resume=run.resume, ranking_lists=lists)
    timings["student"] = time.perf_counter() - start

    # 5. Evaluate the student against the teacher and the gold labels; save it with its head, card and summary.
    barrier()
    if not is_main_process():
        return {}
    return save_run(student, teacher, teacher_name, task, dev, (data, config, run), timings)


def save_run(student, teacher, teacher_name, task, dev, configs: tuple, timings: dict) -> dict:
    """Step 5 of :func:`main`: the dev report, the student saved (and pushed) with its summary, no checkpoints left."""
    data, config, run = configs
    metrics: dict[str, dict] = {}
    report = dev_report(student, teacher, task, dev, metrics)
    if "teacher" in metrics and "student" in metrics:
        degradation = relative_degradation(metrics["teacher"], metrics["student"], task.main_metric)
        logger.info("Relative degradation of %s against the teacher: %.2f%%", task.main_metric, degradation)
    results = {
        "distillation_weight": config.distillation_weight,
        "student_base": config.student,
        "settings": {**config_fields(data), **config_fields(config)},
        "metrics": metrics,
        "agreement": report,
        "timings_s": timings,
    }
    save_student(student, run.output_dir, task, teacher_name, results, model_id=run.push_to_hub)
    if run.push_to_hub:
        # The saved folder as it is (card, head, dse.json); nothing from beside it (teacher, checkpoints).
        student.push_to_hub(run.push_to_hub, local_model_path=run.output_dir, exist_ok=True)
    print(json.dumps({"task": task.name, "metrics": metrics, "timings_s": timings}, indent=2))
    checkpoints = sibling_dir(run.output_dir, "checkpoints")
    if not run.keep_checkpoints:  # the run is saved: its checkpoints (and a teacher's fine-tuned here) are not needed
        for folder in (checkpoints, sibling_dir(sibling_dir(run.output_dir, "teacher"), "checkpoints")):
            records.remove_checkpoints(folder)
    kept = f" (checkpoints in {checkpoints})" if run.keep_checkpoints else ""
    print(f"Saved the student to {Path(run.output_dir)}{kept}.")
    return results


if __name__ == "__main__":
    main()
