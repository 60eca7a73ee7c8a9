#!/usr/bin/env python3
"""The issue-7 grid on one GPU: mpnet teachers for six tasks, then DSE / gold-only students and ablations.

Every job is a plain recipe command (recipes/finetune_teacher.py, recipes/distill.py); this script only runs them
in parallel (GRID_WORKERS at a time), a task's students as soon as its teachers are done (gold-only ones at once),
the most important jobs first, and appends one JSON line per finished job to $OUT/grid.jsonl, so a run cut short at
GRID_HARD_S seconds still returns what finished. Each task's teacher is the better of its learning rates on dev.

Layout under GRID_ROOT (default /root/w): data/ (the --data-dir), mpnet/ (all-mpnet-base-v2, from
../shared/tools/get-mpnet.sh), minilm/ (all-MiniLM-L6-v2), runs/, cache/, logs/. GRID_SMOKE=1 makes every job tiny
(24 pairs, one epoch, no bf16) to check the plumbing on a CPU. GRID_PLAN picks the job list: "round1" (the first
GPU session: two teacher learning rates per task, the main table, first ablations) or "round2" (the second: the QQP
rows, MRPC/STS-B teachers again at round 1's chosen rates, the remaining ablations and a second seed). RESULTS.md
(issue 7) lists the runs that used it.

    OUT=runs/grid GRID_ROOT=/root/w GRID_HARD_S=500 GRID_PLAN=round2 python evaluation/grid.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

START = time.time()
SMOKE = os.environ.get("GRID_SMOKE") == "1"
HARD = float(os.environ.get("GRID_HARD_S", "440"))
WORKERS = int(os.environ.get("GRID_WORKERS", "14"))
OUT = Path(os.environ.get("OUT", "/tmp/grid_out"))
ROOT = Path(os.environ.get("GRID_ROOT", "/root/w"))
DATA, RUNS, CACHE, LOGS = ROOT / "data", ROOT / "runs", ROOT / "cache", ROOT / "logs"
TEACHER_BASE = os.environ.get("GRID_TEACHER_BASE", str(ROOT / "mpnet"))
STUDENT = os.environ.get("GRID_STUDENT", str(ROOT / "minilm"))
PLAN = os.environ.get("GRID_PLAN", "round1")
DEFAULT_TASKS = "qqp-subset,mrpc,stsb,rte,sick-e,sick-r" if PLAN == "round1" else "qqp-subset,mrpc,stsb"
TASKS = os.environ.get("GRID_TASKS", DEFAULT_TASKS).split(",")
ABLATION_TASKS = [t for t in ("mrpc", "stsb") if t in TASKS]
PY = sys.executable
GPU = [] if SMOKE else ["--bf16"]
TINY = ["--max-train-samples", "24"] if SMOKE else []

for d in (OUT, RUNS, CACHE, LOGS):
    d.mkdir(parents=True, exist_ok=True)
DRIVER_LOG = open(OUT / "driver.log", "a")


def log(msg: str) -> None:
    line = f"[{time.time() - START:6.1f}s] {msg}"
    print(line, flush=True)
    DRIVER_LOG.write(line + "\n")
    DRIVER_LOG.flush()


def aug_factor(task: str) -> int:
    # Round 1 gave QQP (the largest task) a factor of 1 to fit the GPU time; round 2 runs the recipes' default.
    return 1 if task == "qqp-subset" and PLAN == "round1" else 2


# ---- jobs -------------------------------------------------------------------------------------------------------
if PLAN == "round1":
    TEACHER_LRS = {t: (["2e-5"] if t == "qqp-subset" else ["2e-5", "5e-5"]) for t in TASKS}
else:  # the learning rates round 1 chose on dev
    TEACHER_LRS = {t: ["2e-5" if t in ("qqp-subset", "sick-e") else "5e-5"] for t in TASKS}
jobs: list[dict] = []
for task in TASKS:
    for lr in TEACHER_LRS[task]:
        name = f"teacher/{task}-lr{lr}"
        cmd = [
            PY,
            "recipes/finetune_teacher.py",
            "--task",
            task,
            "--data-dir",
            str(DATA),
            "--base-model",
            TEACHER_BASE,
            "--output-dir",
            str(RUNS / name),
            "--lr",
            lr,
            *GPU,
            *TINY,
        ]
        if SMOKE:
            cmd += ["--epochs", "1"]
        jobs.append(
            {"name": name, "task": task, "kind": "teacher", "cmd": cmd, "needs": None, "out": str(RUNS / name)}
        )


def student(task: str, name: str, *extra: str, weight: float = 0.5, epochs: int = 4, urgent: bool = False) -> dict:
    # A DSE job's name states its augmentation factor and its command must pass it: the recipe's own default
    # depends on --teacher (round 2 first ran a "dse-aug0" job that the default silently gave factor 2).
    if name.startswith("dse-aug"):
        factor = name.removeprefix("dse-aug").split("-")[0]
        given = extra[extra.index("--augment") + 1] if "--augment" in extra else None
        if given != factor:
            raise ValueError(f"{task}/{name}: pass --augment {factor} explicitly (got {given})")
    out = RUNS / task / name
    cmd = [
        PY,
        "recipes/distill.py",
        "--task",
        task,
        "--data-dir",
        str(DATA),
        "--output-dir",
        str(out),
        "--student",
        STUDENT,
        "--cache-dir",
        str(CACHE),
        "--distillation-weight",
        str(weight),
        "--epochs",
        str(1 if SMOKE else epochs),
        *GPU,
        *TINY,
        *(["--label-batch-size", "256"] if PLAN != "round1" and weight > 0 else []),
        *extra,
    ]
    needs = task if weight > 0 else None  # gold-only students need no teacher: they start at once
    # An urgent job starts as soon as its teacher is ready, beyond GRID_WORKERS: the longest chain must not queue.
    return {
        "name": f"{task}/{name}",
        "task": task,
        "kind": "student",
        "cmd": cmd,
        "needs": needs,
        "out": str(out),
        "urgent": urgent,
    }


def main_jobs(task: str) -> list[dict]:
    a = aug_factor(task)
    return [
        student(task, f"dse-aug{a}-w0.5", "--augment", str(a)),
        student(task, f"gold-e{4 * (1 + a)}", weight=0.0, epochs=4 * (1 + a)),
        student(task, "dse-aug0-w0.5", "--augment", "0"),
        student(task, "gold-e4", weight=0.0),
        student(task, f"dse-aug{a}-w1.0", "--augment", str(a), weight=1.0),
    ]


def ablation_jobs(task: str) -> list[dict]:
    a = aug_factor(task)
    base = ["--augment", str(a)]
    return [
        student(task, f"dse-aug{a}-w0.8", *base, weight=0.8),
        student(task, "dse-aug1-w0.5", "--augment", "1"),
        student(task, f"dse-aug{a}-w0.5-normalize", *base, "--keep-normalize"),
        student(task, f"dse-aug{a}-w0.5-symmetric", *base, "--symmetric"),
        student(task, f"dse-aug{a}-w0.5-hidden1024", *base, "--hidden-dim", "1024"),
        student(task, "dse-aug4-w0.5", "--augment", "4"),
        student(task, "dse-aug0-w1.0", "--augment", "0", weight=1.0),
        student(task, f"dse-aug{a}-w0.5-hidden256", *base, "--hidden-dim", "256"),
        student(task, f"dse-aug{a}-w0.5-headlr5e-5", *base, "--head-lr", "5e-5"),
    ]


def round2_jobs() -> list[dict]:
    qqp = []
    if "qqp-subset" in TASKS:
        qqp = [
            student("qqp-subset", "gold-e12", weight=0.0, epochs=12),
            student("qqp-subset", "dse-aug2-w0.5", "--augment", "2", urgent=True),
            student("qqp-subset", "dse-aug0-w0.5", "--augment", "0", urgent=True),
        ]
    ablations = []
    for task in ABLATION_TASKS:
        base = ["--augment", "2"]
        ablations.append(
            [
                student(task, "dse-aug2-w0.5", *base),  # the default again, with this round's teacher
                student(task, "dse-aug2-w0.5-top4", *base, "--pooling-layers", "4"),
                student(task, "dse-aug4-w0.5", "--augment", "4"),
                student(task, "dse-aug2-w0.5-hidden256", *base, "--hidden-dim", "256"),
                student(task, "dse-aug2-w0.5-headlr5e-5", *base, "--head-lr", "5e-5"),
                student(task, "dse-aug2-w0.5-warmup0", *base, "--warmup-ratio", "0"),
                student(task, "dse-aug2-w0.5-seed1", *base, "--seed", "1"),
                student(task, "gold-e12-seed1", "--seed", "1", weight=0.0, epochs=12),
            ]
        )
    interleaved = [job for row in zip(*ablations) for job in row]
    if "mrpc" in ABLATION_TASKS:  # logit scaling applies to classification only, so not to STS-B
        interleaved.append(student("mrpc", "dse-aug2-w0.5-scale0.5", "--augment", "2", "--teacher-logit-scale", "0.5"))
    return qqp + interleaved


if PLAN == "round1":
    # Priority: the main table first (QQP first: its runs are the longest), then ablations, round-robin over tasks.
    main_lists = [main_jobs(t) for t in TASKS]
    for i in range(5):
        for lst in main_lists:
            jobs.append(lst[i])
    abl_lists = [ablation_jobs(t) for t in ABLATION_TASKS]
    for i in range(max((len(x) for x in abl_lists), default=0)):
        for lst in abl_lists:
            if i < len(lst):
                jobs.append(lst[i])
else:
    jobs += round2_jobs()


# ---- scheduler ----------------------------------------------------------------------------------------------------
def teachers_of(task: str) -> list[dict]:
    return [j for j in jobs if j["kind"] == "teacher" and j["task"] == task]


best_teacher: dict[str, str | None] = {}


def pick_teacher(task: str) -> str | None:
    from st_dse.tasks import get_task

    metric = get_task(task).main_metric
    best, best_value, table = None, None, {}
    for j in teachers_of(task):
        path = Path(j["out"])
        metrics_file = path / "dev_metrics.json"
        if not metrics_file.is_file():
            continue
        metrics = json.loads(metrics_file.read_text())
        table[j["name"]] = metrics
        shutil.rmtree(path / "checkpoints", ignore_errors=True)
        if best_value is None or metrics[metric] > best_value:
            best, best_value = str(path), metrics[metric]
    with open(OUT / "teachers.jsonl", "a") as handle:
        handle.write(json.dumps({"task": task, "metric": metric, "chosen": best, "teachers": table}) + "\n")
    log(f"teacher for {task}: {best} ({metric} {best_value})")
    return best


def record(job: dict, rc: int, wall: float) -> None:
    row = {
        "name": job["name"],
        "kind": job["kind"],
        "task": job["task"],
        "rc": rc,
        "wall_s": round(wall, 1),
        "cmd": " ".join(job["cmd"][1:]),
    }
    if job["kind"] == "student":
        result = Path(job["out"]) / "dse.json"
        if result.is_file():
            data = json.loads(result.read_text())
            row.update(metrics=data.get("metrics"), timings_s=data.get("timings_s"), teacher=data.get("teacher"))
        shutil.rmtree(Path(job["out"]) / "checkpoints", ignore_errors=True)
    with open(OUT / "grid.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")


env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
pending = list(jobs)
running: dict[str, tuple[subprocess.Popen, dict, float]] = {}
done_teachers: dict[str, int] = {}
log(f"{len(jobs)} jobs, {WORKERS} at a time, hard stop at {HARD:.0f} s")
while pending or running:
    now = time.time() - START
    for name, (proc, job, t0) in list(running.items()):
        rc = proc.poll()
        if rc is None and now > HARD:
            proc.kill()
            rc = proc.wait()
            log(f"killed {name} at the hard stop")
        if rc is None:
            continue
        del running[name]
        record(job, rc, time.time() - t0)
        log(f"done {name} rc={rc} in {time.time() - t0:.0f} s")
        if job["kind"] == "teacher":
            done_teachers[job["task"]] = done_teachers.get(job["task"], 0) + 1
            if done_teachers[job["task"]] == len(teachers_of(job["task"])):
                best_teacher[job["task"]] = pick_teacher(job["task"])
    if now > HARD:
        for job in pending:
            log(f"not started: {job['name']}")
        break
    while True:
        ready = [j for j in pending if j["needs"] is None or j["needs"] in best_teacher]
        if len(running) >= WORKERS:
            ready = [j for j in ready if j.get("urgent")]
        if not ready:
            break
        job = ready[0]
        pending.remove(job)
        if job["needs"]:  # a DSE student: give it its task's chosen teacher
            if not best_teacher[job["needs"]]:
                log(f"skip {job['name']}: no teacher")
                continue
            job["cmd"] += ["--teacher", best_teacher[job["needs"]]]
        logfile = open(LOGS / (job["name"].replace("/", "__") + ".log"), "w")
        proc = subprocess.Popen(job["cmd"], stdout=logfile, stderr=subprocess.STDOUT, env=env)
        running[job["name"]] = (proc, job, time.time())
        log(f"start {job['name']}")
    time.sleep(1)
log("finished")
