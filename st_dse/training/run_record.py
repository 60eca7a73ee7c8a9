"""What a training run is: its settings and the fingerprints of its inputs, recorded as ``run.json`` in the folder the
trainer writes its checkpoints to before any work, so that ``--resume`` continues only the same run and ``--overwrite``
deletes only what an st_dse run wrote there (:data:`RUN_OUTPUTS`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets

from st_dse.data import TaskSpec
from st_dse.integrity import file_sha256
from st_dse.training.config import config_fields
from st_dse.training.train import barrier, is_main_process

RUN_FILE = "run.json"
#: What a run writes into its checkpoint folder: its record, the trainer's checkpoints and its evaluator's results.
RUN_OUTPUTS = (RUN_FILE, "checkpoint-*", "eval")
#: Settings a resumed run may change: where its outputs, data and caches live, and how fast the teacher labels.
NOT_COMPARED = frozenset(
    "output_dir overwrite resume push_to_hub cache_dir label_batch_size data_dir keep_checkpoints".split()
)


def fingerprint_pairs(pairs: datasets.Dataset | None) -> str | None:
    """A SHA-256 of the pairs' content (every column, every row, in order); None for no pairs."""
    return None if pairs is None else hashlib.sha256(json.dumps(pairs.to_dict()).encode()).hexdigest()


def fingerprint_path(name: str | None) -> str | None:
    """A SHA-256 of a local file's or folder's content (names and bytes); None for a Hub id, whose name is recorded."""
    path = Path(name) if name else None
    if path is None or not path.exists():
        return None
    digest = hashlib.sha256()
    for file in [path] if path.is_file() else sorted(file for file in path.rglob("*") if file.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}:{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def data_inputs(task: TaskSpec, train: datasets.Dataset, dev: datasets.Dataset | None, **models: str) -> dict:
    """The task's shape, the fingerprints of the pairs a run trains and picks its checkpoints on, and of the local
    ``models`` it starts from (``base_model="folder"`` is recorded as ``"base model files"``)."""
    shape = [task.name, task.problem_type, task.num_labels, list(task.label_names)]
    inputs = {"task": shape, "train pairs": fingerprint_pairs(train), "dev pairs": fingerprint_pairs(dev)}
    return inputs | {f"{role.replace('_', ' ')} files": fingerprint_path(name) for role, name in models.items()}


def run_record(kind: str, configs: Iterable[object], inputs: dict[str, Any]) -> dict[str, Any]:
    """The record of a ``kind`` run ("student", "teacher"): every field of ``configs``, and its ``inputs``."""
    settings = {name: value for config in configs for name, value in config_fields(config).items()}
    return json.loads(json.dumps({"st_dse_run": kind, "settings": settings, "inputs": inputs}))  # as read back


def read_run_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The run recorded in ``folder``, or None when it holds no record that st_dse wrote."""
    try:
        record = json.loads((Path(folder) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"st_dse_run", "settings", "inputs"} <= record.keys() else None


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"name old -> new"`` for each setting or input (all but :data:`NOT_COMPARED`) that differs between records."""
    before = {"run": old["st_dse_run"], **old["settings"], **old["inputs"]}
    after = {"run": new["st_dse_run"], **new["settings"], **new["inputs"]}
    names = [name for name in {**before, **after} if name not in NOT_COMPARED and before.get(name) != after.get(name)]
    return [f"{name} {_shown(before.get(name))} -> {_shown(after.get(name))}" for name in names]


def _shown(value: Any) -> str:
    is_digest = isinstance(value, str) and len(value) == 64  # a content hash: its start tells two apart
    return f"{value[:12]}..." if is_digest else repr(value)


def check_runs(runs: Sequence[tuple[Path, dict]], overwrite: bool, resume: bool) -> None:
    """Refuse, before any work, a ``(checkpoint folder, record)`` run that may not start there: with ``resume``, a
    folder holding no run or another run (ValueError naming each change); otherwise a folder holding anything an
    st_dse run did not write, or an earlier run without ``overwrite`` (FileExistsError)."""
    for folder, record in runs:
        old = read_run_record(folder)
        if resume:
            if old is None:
                raise ValueError(
                    f"--resume: {folder} holds no st_dse run to continue; start the run without --resume."
                )
            if changes := changed_settings(old, record):
                raise ValueError(
                    f"--resume continues only the run recorded in {folder / RUN_FILE}, and this one differs "
                    f"({'; '.join(changes)}): rerun with its settings and inputs, or start again with --overwrite or "
                    "another --output-dir."
                )
            continue
        entries = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
        ours = {path.name for pattern in RUN_OUTPUTS for path in folder.glob(pattern)} if old else set()
        if foreign := [name for name in entries if name not in ours]:
            raise FileExistsError(
                f"{folder} holds files that no st_dse run wrote ({', '.join(foreign[:5])}); st_dse never deletes "
                "them, even with --overwrite. Choose another --output-dir, or move those files away."
            )
        if entries and not overwrite:
            raise FileExistsError(
                f"{folder} holds the checkpoints of an earlier run: pass --resume to continue it, --overwrite to "
                "start again, or choose another --output-dir."
            )


def start_runs(runs: Sequence[tuple[Path, dict]], resume: bool) -> None:
    """Record each run :func:`check_runs` allowed; a new run first deletes the earlier run's record and checkpoints.

    Under torchrun every rank checks first, and the main process writes while the others wait.
    """
    barrier()
    if is_main_process() and not resume:
        for folder, record in runs:
            for path in [path for pattern in RUN_OUTPUTS[1:] for path in folder.glob(pattern)]:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f".{RUN_FILE}.tmp"  # renamed into place: never a half-written record
            partial.write_text(json.dumps(record, indent=2), encoding="utf-8")
            os.replace(partial, folder / RUN_FILE)
    barrier()


def remove_checkpoints(folder: str | os.PathLike) -> None:
    """After a successful run: delete the trainer's ``checkpoint-*`` folders in the run's ``folder``, keeping its
    ``run.json`` (what the run was, for a later ``--overwrite`` or teacher reuse) and ``eval/`` results."""
    if read_run_record(folder) is not None:  # only a folder an st_dse run recorded
        for path in Path(folder).glob("checkpoint-*"):
            shutil.rmtree(path)


def check_output_folders(folders: Iterable[str | os.PathLike], inputs: Iterable[str | None]) -> None:
    """Refuse (ValueError), before any work, output ``folders`` that would take the place of the working directory
    or a folder above it, of an input (a data file or folder, a model folder) or a folder around one, or of a file or
    a path under one."""
    here = Path.cwd().resolve()
    local_inputs = [Path(name).resolve() for name in inputs if name and os.path.exists(name)]
    for folder in map(lambda name: Path(name).resolve(), folders):
        if folder == here or folder in here.parents:
            problem = "is the working directory or a folder above it"
        elif covered := [str(path) for path in local_inputs if folder == path or folder in path.parents]:
            problem = f"is or holds an input of the run ({covered[0]})"
        elif files := [str(path) for path in (folder, *folder.parents) if path.is_file()]:
            problem = f"is or lies under the file {files[0]}"
        else:
            continue
        raise ValueError(f"The run would write to {folder}, which {problem}: choose another --output-dir.")
