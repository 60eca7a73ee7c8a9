"""Saving a trained student with a model card that tells what it is: base model, teacher, data, dev metrics, usage.

The card is sentence-transformers' own, generated from :class:`DSEModelCardData` (its card data, with sample tables
that leave out the packed DSE labels), followed by an st_dse section: teacher, task, dev metrics and a usage snippet.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
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
from st_dse.modules import PairHead
from st_dse.student import get_pair_head

# The card's snippets load the model from this placeholder; replace it with the folder's path or its Hub id.
MODEL_PATH_PLACEHOLDER = "path/to/this/model"
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
DEFAULT_LICENSE = "apache-2.0"
DEFAULT_LANGUAGE = "en"
USAGE_PAIRS = (
    ("A man is playing a guitar.", "Someone plays a guitar."),
    ("A dog runs through the park.", "A cat sleeps on the sofa."),
)


@dataclass
class DSEModelCardData(SentenceTransformerModelCardData):
    """sentence-transformers' card data for a DSE student.

    The sample tables leave out list-valued columns (DSELoss's packed ``[gold, *teacher_logits]`` labels; the st_dse
    section explains them), and the usage snippet loads the card's ``model_id`` or ``"path/to/this/model"``.
    """

    packed_labels: bool = False

    def compute_dataset_metrics(self, dataset, dataset_info, loss, router_mapping=None):
        if isinstance(dataset, datasets.Dataset) and len(dataset):
            packed = [column for column, value in dataset[0].items() if isinstance(value, (list, tuple))]
            if packed:
                self.packed_labels = True
                dataset = dataset.remove_columns(packed)
        return super().compute_dataset_metrics(dataset, dataset_info, loss, router_mapping)

    def generate_usage_snippet(self) -> str:
        # Without a model_id, sentence-transformers' snippet loads a placeholder id; ours names the folder to use.
        snippet = super().generate_usage_snippet()
        return snippet.replace('"sentence_transformers_model_id"', f'"{self.model_id or MODEL_PATH_PLACEHOLDER}"')


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
    for part in path.resolve().parts:
        if part.startswith("models--") and part.count("--") >= 2:
            return part[len("models--") :].replace("--", "/")
    return None


def model_display_name(name_or_path: str | os.PathLike | None) -> str | None:
    """How a card names a model: its Hub id (see :func:`hub_model_id`), else a local folder's name, never a path."""
    if not name_or_path:
        return None
    return hub_model_id(name_or_path) or Path(os.fspath(name_or_path)).expanduser().resolve().name


def training_data_name(task: TaskSpec, settings: Mapping[str, Any] | None = None) -> str:
    """The training data's name: the file name of your own pairs, the Hub dataset's id, or else the task's name."""
    settings = settings or {}
    if settings.get("train_file"):
        return Path(settings["train_file"]).name
    if settings.get("dataset"):
        config = settings.get("dataset_config")
        return f"{settings['dataset']} ({config})" if config else str(settings["dataset"])
    return task.name


def _training_data_line(task: TaskSpec, settings: Mapping[str, Any]) -> str:
    name = training_data_name(task, settings)
    return f"{name}, train split; {task.description}" if name == task.name else name


def _dev_data_name(task: TaskSpec, settings: Mapping[str, Any]) -> str:
    if settings.get("dev_file"):
        return Path(settings["dev_file"]).name
    if settings.get("dataset"):
        return f"{settings['dataset']} {settings.get('dev_split') or 'dev'}"
    return f"{task.name} {task.benchmark.dev_split}"


def describe_training(
    student: SentenceTransformer,
    task: TaskSpec,
    base_model: str | None = None,
    data_name: str | None = None,
) -> None:
    """Fill the card data sentence-transformers cannot find out offline; call it before the trainer is made.

    Makes the card data a :class:`DSEModelCardData`, sets the base model's public id (see :func:`hub_model_id`;
    ``base_model`` defaults to the encoder's ``name_or_path``) and names the model and its training data
    (``data_name``, default: the task's name).
    """
    card = student.model_card_data
    if not isinstance(card, DSEModelCardData):
        public = {item.name: getattr(card, item.name) for item in fields(card) if not item.name.startswith("_")}
        del public["model"], public["template_path"]
        card = DSEModelCardData()
        for name, value in public.items():
            setattr(card, name, value)
        card.register_model(student)
        student.model_card_data = card
    if not card.base_model:
        encoder = student.transformers_model
        card.base_model = hub_model_id(base_model) or hub_model_id(encoder.config.name_or_path if encoder else None)
    name = data_name or task.name
    card.model_name = f"DSE student for {name}"
    if not card.train_datasets:
        card.train_datasets = [{"name": name}]
    elif len(card.train_datasets) == 1:
        card.train_datasets[0]["name"] = name


def save_student(
    student: SentenceTransformer,
    output_dir: str | os.PathLike,
    task: TaskSpec,
    teacher: str | None,
    results: dict[str, Any],
    *,
    license: str = DEFAULT_LICENSE,  # noqa: A002 -- the model card's field name
    language: str | Sequence[str] = DEFAULT_LANGUAGE,
) -> None:
    """Save the student with its model card and a ``dse.json`` (task, teacher, metrics), all or nothing.

    The folder is written beside ``output_dir`` and swapped in whole. The card's snippets load
    ``"path/to/this/model"`` (or the card's ``model_id``); with the folder's path in its place they run as written.

    Args:
        student: The trained student (a SentenceTransformer with a PairHead).
        output_dir: The folder to save to.
        task: The task it was trained on.
        teacher: The teacher's Hub id or folder, as the user gave it (None for a gold-only student).
        results: The run summary written to ``dse.json``; the card reads its ``metrics`` (system -> dev metrics),
            ``student_base`` and ``settings`` (``train_file``, ``dev_file``, ``dataset``: names of your own data).
        license: The model's license, e.g. ``"apache-2.0"``.
        language: The language code(s) of the model, e.g. ``"en"``.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return  # under torchrun every rank holds the same model; one writer avoids racing on the same files
    head = get_pair_head(student)
    settings = results.get("settings") or {}
    describe_training(student, task, results.get("student_base"), training_data_name(task, settings))
    card = student.model_card_data
    # An entry the trainer never filled in (a student saved untrained) breaks sentence-transformers' card template.
    card.train_datasets = [info for info in card.train_datasets if "columns" in info]
    card.set_license(license)
    card.set_language(language if isinstance(language, str) else list(language))
    model_reference = card.model_id or MODEL_PATH_PLACEHOLDER
    section = _model_card_section(student, head, task, teacher, results, settings, model_reference)

    def write(folder: Path) -> None:
        # The card is generated, never reused: a student loaded from a folder with a README would keep that one.
        student.save(str(folder), create_model_card=False)
        (folder / "dse.json").write_text(json.dumps({"task": task.name, "teacher": teacher, **results}, indent=2))
        (folder / "README.md").write_text(generate_model_card(student) + section, encoding="utf-8")

    atomic_save_dir(output_dir, write, kind="student")


def _model_link(name_or_path: str | None) -> str:
    hub_id = hub_model_id(name_or_path)
    if hub_id is None:
        return f"`{model_display_name(name_or_path)}` (a local model folder)"
    if _HUB_ID.fullmatch(hub_id):
        return f"[{hub_id}](https://huggingface.co/{hub_id})"
    return f"`{hub_id}`"


def _metrics_table(task: TaskSpec, metrics: Mapping[str, Mapping[str, Any]]) -> str:
    names = [name for name in task.metrics if any(name in values for values in metrics.values())]
    names += sorted({name for values in metrics.values() for name in values} - set(names) - {"main"})
    rows = ["| model | " + " | ".join(names) + " |", "|:--|" + "--:|" * len(names)]
    for system, values in metrics.items():
        label = "student (this model)" if system == "student" else system
        cells = [f"{values[name]:.2f}" if isinstance(values.get(name), (int, float)) else "-" for name in names]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _score_meaning(task: TaskSpec, head: PairHead) -> str:
    if head.problem_type == "regression":
        return "one score per pair, on the scale of the task's gold scores (what the teacher predicts)"
    names = head.label_names or list(task.label_names)
    if head.problem_type == "binary":
        positive = f" (`{names[1]}`)" if len(names) == 2 else ""
        return (
            f'one logit per pair, class 1{positive} when it is above 0; pass `output="probabilities"` or '
            '`output="labels"` for those instead'
        )
    order = f", in the order {', '.join(f'`{name}`' for name in names)}" if names else ""
    return f'{head.num_labels} logits per pair{order}; pass `output="probabilities"` or `output="labels"` for those'


def _usage_snippet(student: SentenceTransformer, model_reference: str) -> str:
    first = [pair[0] for pair in USAGE_PAIRS]
    second = [pair[1] for pair in USAGE_PAIRS]
    scores = np.asarray(score_pairs(student, first, second))
    printed = np.array2string(scores, precision=4, suppress_small=True)
    lines = [
        "import st_dse",
        "from sentence_transformers import SentenceTransformer",
        "",
        f"sentences1 = {first!r}",
        f"sentences2 = {second!r}",
        "",
        "# Sentence embeddings: the folder is a standard sentence-transformers model",
        f'encoder = SentenceTransformer("{model_reference}")',
        "embeddings = encoder.encode(sentences1 + sentences2)",
        "print(encoder.similarity(embeddings[:2], embeddings[2:]))",
        "",
        "# Pair scores from the distilled PairHead",
        f'student = st_dse.load_student("{model_reference}")',
        "scores = st_dse.score_pairs(student, sentences1, sentences2)",
        "print(scores)",
        *(f"# {line}" for line in printed.splitlines()),
    ]
    return "```python\n" + "\n".join(lines) + "\n```"


def _model_card_section(
    student: SentenceTransformer,
    head: PairHead,
    task: TaskSpec,
    teacher: str | None,
    results: Mapping[str, Any],
    settings: Mapping[str, Any],
    model_reference: str,
) -> str:
    card = student.model_card_data
    base = card.base_model or results.get("student_base")
    facts = [
        f"- **Base model:** {_model_link(base)}" if base else None,
        f"- **Teacher:** {_model_link(teacher)}" if teacher else "- **Teacher:** none (trained on gold labels only)",
        f"- **Training data:** {_training_data_line(task, settings)}",
        f"- **Task:** {task.problem_type}, {task.num_labels} head output{'s' if task.num_labels > 1 else ''}, "
        f"main metric {task.main_metric}",
        f"- **License:** {card.license}" if card.license else None,
        f"- **Language:** {', '.join(card.language)}" if card.language else None,
    ]
    metrics = {system: values for system, values in (results.get("metrics") or {}).items() if values}
    if metrics:
        evaluation = (
            f"### Dev metrics\n\nOn the dev split ({_dev_data_name(task, settings)}), on a 0-100 scale:\n\n"
            f"{_metrics_table(task, metrics)}\n"
        )
    else:
        evaluation = "### Dev metrics\n\nNo dev metrics were recorded for this model.\n"
    packed_note = ""
    if card.packed_labels:
        packed_note = (
            "\nIn training, each pair's `label` packed its gold label with the teacher's logits "
            "(`[gold, *teacher_logits]`), as DSELoss takes them; the sample tables above show the sentence pairs.\n"
        )
    replace_note = ""
    if model_reference == MODEL_PATH_PLACEHOLDER:
        replace_note = f"Replace `{MODEL_PATH_PLACEHOLDER}` with this model's folder or Hub id. "
    return f"""

## Distilled Sentence Embedding (st_dse)

This model is a DSE student: a siamese sentence encoder with a `{head.head_type}` PairHead, trained with DSELoss to
reproduce the raw logits of a cross-encoder teacher on sentence pairs. The folder is a standard sentence-transformers
model with the head saved beside it in `pair_head/`: `SentenceTransformer(path)` loads the encoder for embeddings,
`st_dse.load_student(path)` loads the encoder and its head to score pairs as the teacher would, at the cost of one
encoding per sentence.

{chr(10).join(fact for fact in facts if fact)}

{evaluation}{packed_note}
### Usage with st_dse

```bash
pip install -U st_dse sentence-transformers
```

{_usage_snippet(student, model_reference)}

{replace_note}`score_pairs` gives {_score_meaning(task, head)}.

### DSE citation

```bibtex{DSE_CITATION}```
"""
