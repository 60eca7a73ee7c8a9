"""Saving a trained student with its model card (st_dse's template: teacher, data, dev metrics, PairHead usage)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from sentence_transformers import SentenceTransformer, SentenceTransformerModelCardData
from sentence_transformers.base.model_card import generate_model_card

from st_dse.data import TaskSpec
from st_dse.hub import DEFAULT_MODEL, DEFAULT_MODEL_ALIASES, packaged_default_model_path
from st_dse.inference.scoring import score_pairs
from st_dse.integrity import atomic_save_dir
from st_dse.losses import DSE_CITATION
from st_dse.student import get_pair_head

# The card's snippets load a model saved to an absolute path from this placeholder (a path of this machine would
# mean nothing elsewhere); replace it with the folder's path.
MODEL_PATH_PLACEHOLDER = "path/to/this/model"
# The Hub's task types (model-index) for the PairHead's problem types.
CLASSIFICATION, SIMILARITY = "text-classification", "sentence-similarity"
HUB_TASK_TYPES = {"binary": CLASSIFICATION, "multiclass": CLASSIFICATION, "regression": SIMILARITY}
USAGE_PAIRS = (
    ["A man is playing a guitar.", "A dog runs through the park."],
    ["Someone plays a guitar.", "A cat sleeps on the sofa."],
)


@dataclass
class DSEModelCardData(SentenceTransformerModelCardData):
    """sentence-transformers' card data for a DSE student, rendered with st_dse's template: sample tables without the
    packed DSE labels, dev metrics filed under the pair task's Hub type and data, usage snippets that load
    ``model_path``.

    Args:
        packed_labels: Whether the training pairs' labels packed the teacher's logits (set from the data).
        model_path: What the snippets load: the Hub id, the folder as the user named it, or ``"path/to/this/model"``.
        pair_task_type: The Hub task type of the head's task (``"text-classification"``, ``"sentence-similarity"``).
        dev_dataset: The model-index ``dataset`` of the dev metrics (``name``, ``type``, ``config``, ``split``).
        dse: What :func:`save_student` adds to the card (teacher, task, dev metrics, the head's example scores).
    """

    packed_labels: bool = False
    model_path: str = MODEL_PATH_PLACEHOLDER
    pair_task_type: str | None = None
    dev_dataset: dict[str, str] = field(default_factory=dict)
    dse: dict[str, Any] = field(default_factory=dict)
    template_path: Path = field(default=Path(__file__).with_name("model_card_template.jinja"), init=False, repr=False)

    def compute_dataset_metrics(self, dataset, dataset_info, loss, router_mapping=None):
        if isinstance(dataset, datasets.Dataset) and len(dataset):
            packed = [name for name, value in dataset[0].items() if isinstance(value, list)]
            self.packed_labels = self.packed_labels or bool(packed)
            dataset = dataset.remove_columns(packed)
        return super().compute_dataset_metrics(dataset, dataset_info, loss, router_mapping)

    def format_eval_metrics(self) -> dict[str, Any]:
        formatted = super().format_eval_metrics()
        # sentence-transformers files a result under its evaluator's description ("pair-task" for st_dse's), which
        # the Hub does not know: file the dev metrics under the task's Hub type and the data they were measured on.
        name = (self.pair_task_type or "").replace("-", " ").title()
        for entry in formatted.get("model-index") or []:
            for result in entry.get("results", []):
                if self.pair_task_type and result.get("task", {}).get("type") == "pair-task":
                    result["task"] = {"type": self.pair_task_type, "name": name}  # one dict each: no YAML aliases
                    result["dataset"] = {**result.get("dataset", {}), **self.dev_dataset}
        return formatted


def hub_model_id(name_or_path: str | os.PathLike | None) -> str | None:
    """The Hub id a model name stands for, or None for a local folder with no public id.

    The packaged offline copy of the default model and a Hugging Face cache snapshot folder
    (``.../models--org--name/snapshots/<commit>``) stand for their Hub ids.
    """
    if not name_or_path:
        return None
    name = os.fspath(name_or_path)
    if name in DEFAULT_MODEL_ALIASES:
        return DEFAULT_MODEL
    path = Path(name).expanduser()
    if not (path.exists() or path.is_absolute() or name.startswith((".", "~"))):
        return name
    packaged = packaged_default_model_path()
    if packaged is not None and path.exists() and path.resolve() == Path(packaged).resolve():
        return DEFAULT_MODEL
    cached = [part for part in path.resolve().parts if part.startswith("models--") and part.count("--") >= 2]
    return cached[0][len("models--") :].replace("--", "/") if cached else None


def model_display_name(name_or_path: str | os.PathLike | None) -> str | None:
    """How a card names a model: its Hub id (see :func:`hub_model_id`), else a local folder's name, never a path."""
    if not name_or_path:
        return None
    return hub_model_id(name_or_path) or Path(os.fspath(name_or_path)).expanduser().resolve().name


def _linkable_hub_id(name_or_path: str | None) -> str | None:
    hub_id = hub_model_id(name_or_path)
    return hub_id if hub_id and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", hub_id) else None


def _model_link(name_or_path: str) -> str:
    if hub_id := _linkable_hub_id(name_or_path):
        return f"[{hub_id}](https://huggingface.co/{hub_id})"
    hub_id = hub_model_id(name_or_path)
    return f"`{hub_id}`" if hub_id else f"`{model_display_name(name_or_path)}` (a local model folder)"


def training_data_name(task: TaskSpec, settings: Mapping[str, Any] | None = None) -> str:
    """The training data's name: the file name of your own pairs, the Hub dataset's id, or else the task's name."""
    settings = settings or {}
    if settings.get("train_file"):
        return Path(settings["train_file"]).name
    config = settings.get("dataset_config")
    return f"{settings['dataset']}{f' ({config})' if config else ''}" if settings.get("dataset") else task.name


def training_dataset(task: TaskSpec, settings: Mapping[str, Any] | None = None) -> tuple[str | None, str | None]:
    """The training data's Hub dataset id and configuration: ``--dataset``'s, else the registered task's (its local
    files hold the same data), ``(None, None)`` for your own files or a task that is not on the Hub."""
    settings = settings or {}
    if settings.get("train_file"):
        return None, None
    if settings.get("dataset"):
        return settings["dataset"], settings.get("dataset_config")
    benchmark = task.benchmark
    return (benchmark.hub_dataset, benchmark.hub_config) if benchmark and benchmark.hub_dataset else (None, None)


def _dev_dataset(task: TaskSpec, settings: Mapping[str, Any]) -> dict[str, str]:
    if settings.get("dev_file"):
        return {"name": Path(settings["dev_file"]).name, "type": task.name}
    dataset_id, config = training_dataset(task, settings)
    split = settings.get("dev_split") if settings.get("dataset") else task.benchmark and task.benchmark.dev_split
    dataset = {"name": f"{settings.get('dataset') or task.name} {split or 'dev'}", "type": dataset_id or task.name}
    return {**dataset, **({"config": config} if config else {}), **({"split": split} if split else {})}


def describe_training(student: SentenceTransformer, task: TaskSpec, base_model=None, data_name=None) -> None:
    """Make the card data a :class:`DSEModelCardData`, and set the base model's public id (``base_model``, default the
    encoder's ``name_or_path``), the model's name and its training data's (``data_name``, default the task's name).

    Call it before the trainer is made: the trainer's card callback adds the data's statistics to it.
    """
    card = student.model_card_data
    if not isinstance(card, DSEModelCardData):
        card = DSEModelCardData()
        for item in fields(student.model_card_data):
            if not item.name.startswith("_") and item.name not in ("model", "template_path"):
                setattr(card, item.name, getattr(student.model_card_data, item.name))
        card.register_model(student)
        student.model_card_data = card
    if not card.base_model:
        encoder = student.transformers_model
        card.base_model = hub_model_id(base_model) or hub_model_id(encoder.config.name_or_path if encoder else None)
    name = data_name or task.name
    card.model_name = f"DSE student for {name}"
    card.pair_task_type = HUB_TASK_TYPES[task.problem_type]
    card.dev_dataset = card.dev_dataset or _dev_dataset(task, {})
    if len(card.train_datasets) <= 1:
        card.train_datasets = [{**(card.train_datasets or [{}])[0], "name": name}]


def save_student(
    student: SentenceTransformer,
    output_dir: str | os.PathLike,
    task: TaskSpec,
    teacher: str | None,
    results: dict[str, Any],
    *,
    license: str = "apache-2.0",  # noqa: A002 -- the model card's field name
    language: str | Sequence[str] = "en",
    model_id: str | None = None,
) -> None:
    """Save the student with its model card and a ``dse.json`` (task, teacher, metrics), all or nothing.

    The card's snippets load the model by ``model_id`` (the Hub id it is pushed to), else by ``output_dir`` when that
    is a relative path, else from ``"path/to/this/model"``: a path of this machine would mean nothing elsewhere.

    Args:
        student: The trained student (a SentenceTransformer with a PairHead).
        output_dir: The folder to save to; it is written beside it and swapped in whole.
        task: The task it was trained on.
        teacher: The teacher's Hub id or folder, as the user gave it (None for a gold-only student).
        results: The run summary written to ``dse.json``; the card reads its ``metrics`` (system -> dev metrics),
            ``student_base`` and ``settings`` (``train_file``, ``dev_file``, ``dataset``: names of your own data).
        license: The model's license, e.g. ``"apache-2.0"``.
        language: The language code(s) of the model, e.g. ``"en"``.
        model_id: The Hub id the saved folder is pushed to, e.g. ``"my-org/mrpc-dse-student"``.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return  # under torchrun every rank holds the same model; one writer avoids racing on the same files
    head = get_pair_head(student)
    settings = results.get("settings") or {}
    describe_training(student, task, results.get("student_base"), training_data_name(task, settings))
    card = student.model_card_data
    if model_id:
        card.set_model_id(model_id)
    relative = None if Path(output_dir).is_absolute() else Path(output_dir).as_posix()
    card.model_path = card.model_id or relative or MODEL_PATH_PLACEHOLDER
    card.dev_dataset = _dev_dataset(task, settings)
    # Hub metadata: where the training data and the teacher come from (a tag, as the Hub has no teacher field).
    dataset_id, _ = training_dataset(task, settings)
    if dataset_id and dataset_id not in card.datasets:
        card.datasets.append(dataset_id)
    for info in card.train_datasets if dataset_id else ():
        info.setdefault("id", dataset_id)
    teacher_id = _linkable_hub_id(teacher)
    card.add_tags(["st_dse", f"teacher:{teacher_id}"] if teacher_id else "st_dse")
    # An entry the trainer never filled in (a student saved untrained) has no statistics to show.
    card.train_datasets = [info for info in card.train_datasets if "columns" in info]
    card.set_license(license)
    card.set_language(language if isinstance(language, str) else list(language))
    if DSE_CITATION not in card.citations.values():
        card.citations["DSELoss"] = DSE_CITATION
    metrics = {system: values for system, values in (results.get("metrics") or {}).items() if values}
    names = [name for name in task.metrics if any(name in values for values in metrics.values())]
    names += sorted({name for values in metrics.values() for name in values} - set(names) - {"main"})
    data, base = training_data_name(task, settings), card.base_model or results.get("student_base")
    scores = np.array2string(np.asarray(score_pairs(student, *USAGE_PAIRS)), precision=4, suppress_small=True)
    card.dse = {
        "head": head,
        "task": task,
        "base": base and _model_link(base),
        "teacher": teacher and _model_link(teacher),
        "data": f"{data}, train split; {task.description}" if data == task.name else data,
        "metrics": {system: {name: values.get(name) for name in names} for system, values in metrics.items()},
        "names": names,
        "dev_data": card.dev_dataset["name"],
        "pairs": USAGE_PAIRS,
        "scores": scores.splitlines(),
        "label_names": head.label_names or list(task.label_names),
        "placeholder": MODEL_PATH_PLACEHOLDER,
    }

    def write(folder: Path) -> None:
        # The card is generated, never reused: a student loaded from a folder with a README would keep that one.
        student.save(str(folder), create_model_card=False)
        (folder / "dse.json").write_text(json.dumps({"task": task.name, "teacher": teacher, **results}, indent=2))
        (folder / "README.md").write_text(generate_model_card(student), encoding="utf-8")

    atomic_save_dir(output_dir, write, kind="student")
