"""Saving a trained student with sentence-transformers' model card and an st_dse section: teacher, data, metrics."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import datasets
import jinja2
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

# The card's snippets load the model from this placeholder; replace it with the folder's path or its Hub id.
MODEL_PATH_PLACEHOLDER = "path/to/this/model"
USAGE_PAIRS = (
    ["A man is playing a guitar.", "A dog runs through the park."],
    ["Someone plays a guitar.", "A cat sleeps on the sofa."],
)
DSE_SECTION = jinja2.Template(
    """
## Distilled Sentence Embedding (st_dse)

This model is a DSE student: a siamese sentence encoder with a `{{ head.head_type }}` PairHead (saved in `pair_head/`),
trained with DSELoss to reproduce a cross-encoder teacher's raw logits on sentence pairs, at the cost of one encoding
per sentence. `SentenceTransformer(path)` loads the encoder for embeddings, `st_dse.load_student(path)` adds the head.

{% if base %}- **Base model:** {{ base }}
{% endif %}- **Teacher:** {{ teacher or "none (trained on gold labels only)" }}
- **Training data:** {{ data }}
- **Task:** {{ task.problem_type }}, {{ task.num_labels }} head output{{ "s" if task.num_labels > 1 }}, main metric \
{{ task.main_metric }}
{% if card.license %}- **License:** {{ card.license }}
{% endif %}{% if card.language %}- **Language:** {{ card.language | join(", ") }}
{% endif %}
### Dev metrics

{% if metrics %}On the dev split ({{ dev_data }}), on a 0-100 scale:

| model | {{ names | join(" | ") }} |
|:--|{{ "--:|" * names | length }}
{% for system, values in metrics.items() %}| {{ "student (this model)" if system == "student" else system }} |\
{% for name in names %} {{ "%.2f" % values[name] if values[name] is number else "-" }} |{% endfor %}
{% endfor %}{% else %}No dev metrics were recorded for this model.
{% endif %}{% if card.packed_labels %}
In training, each pair's `label` packed its gold label with the teacher's logits (`[gold, *teacher_logits]`), as \
DSELoss takes them; the sample tables above show the sentence pairs.
{% endif %}
### Usage with st_dse

```bash
pip install -U st_dse sentence-transformers
```

```python
import st_dse
from sentence_transformers import SentenceTransformer

sentences1 = {{ pairs[0] }}
sentences2 = {{ pairs[1] }}

# Sentence embeddings: the folder is a standard sentence-transformers model
encoder = SentenceTransformer("{{ model }}")
embeddings = encoder.encode(sentences1 + sentences2)
print(encoder.similarity(embeddings[:2], embeddings[2:]))

# Pair scores from the distilled PairHead
student = st_dse.load_student("{{ model }}")
scores = st_dse.score_pairs(student, sentences1, sentences2)
print(scores)
{% for line in scores %}# {{ line }}
{% endfor %}```

{% if model == placeholder %}Replace `{{ placeholder }}` with this model's folder or Hub id. {% endif %}\
`score_pairs` gives {% if head.problem_type == "regression" %}one score per pair, on the scale of the task's gold \
scores (what the teacher predicts){% else %}{% if head.problem_type == "binary" %}one logit per pair, class 1\
{% if label_names | length == 2 %} (`{{ label_names[1] }}`){% endif %} when it is above 0{% else %}\
{{ head.num_labels }} logits per pair{% if label_names %}, in the order `{{ label_names | join("`, `") }}`{% endif %}\
{% endif %}; pass `output="probabilities"` or `output="labels"` for those instead{% endif %}.
""",
    keep_trailing_newline=True,
)
DSE_SECTION.globals.update(pairs=USAGE_PAIRS, placeholder=MODEL_PATH_PLACEHOLDER)


@dataclass
class DSEModelCardData(SentenceTransformerModelCardData):
    """sentence-transformers' card data for a DSE student: sample tables without the packed DSE labels, and a usage
    snippet that loads the card's ``model_id`` or ``"path/to/this/model"``."""

    packed_labels: bool = False

    def compute_dataset_metrics(self, dataset, dataset_info, loss, router_mapping=None):
        if isinstance(dataset, datasets.Dataset) and len(dataset):
            packed = [name for name, value in dataset[0].items() if isinstance(value, list)]
            self.packed_labels = self.packed_labels or bool(packed)
            dataset = dataset.remove_columns(packed)
        return super().compute_dataset_metrics(dataset, dataset_info, loss, router_mapping)

    def generate_usage_snippet(self) -> str:
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
    cached = [part for part in path.resolve().parts if part.startswith("models--") and part.count("--") >= 2]
    return cached[0][len("models--") :].replace("--", "/") if cached else None


def model_display_name(name_or_path: str | os.PathLike | None) -> str | None:
    """How a card names a model: its Hub id (see :func:`hub_model_id`), else a local folder's name, never a path."""
    if not name_or_path:
        return None
    return hub_model_id(name_or_path) or Path(os.fspath(name_or_path)).expanduser().resolve().name


def _model_link(name_or_path: str) -> str:
    hub_id = hub_model_id(name_or_path)
    if hub_id is None:
        return f"`{model_display_name(name_or_path)}` (a local model folder)"
    link = f"[{hub_id}](https://huggingface.co/{hub_id})"
    return link if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", hub_id) else f"`{hub_id}`"


def training_data_name(task: TaskSpec, settings: Mapping[str, Any] | None = None) -> str:
    """The training data's name: the file name of your own pairs, the Hub dataset's id, or else the task's name."""
    settings = settings or {}
    if settings.get("train_file"):
        return Path(settings["train_file"]).name
    config = settings.get("dataset_config")
    return f"{settings['dataset']}{f' ({config})' if config else ''}" if settings.get("dataset") else task.name


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
) -> None:
    """Save the student with its model card and a ``dse.json`` (task, teacher, metrics), all or nothing.

    The card's snippets load ``"path/to/this/model"`` (or the card's ``model_id``); put the folder's path in its place.

    Args:
        student: The trained student (a SentenceTransformer with a PairHead).
        output_dir: The folder to save to; it is written beside it and swapped in whole.
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
    if DSE_CITATION not in card.citations.values():
        card.citations["DSELoss"] = DSE_CITATION
    metrics = {system: values for system, values in (results.get("metrics") or {}).items() if values}
    names = [name for name in task.metrics if any(name in values for values in metrics.values())]
    names += sorted({name for values in metrics.values() for name in values} - set(names) - {"main"})
    data = training_data_name(task, settings)
    dev_data = f"{task.name} {task.benchmark.dev_split if task.benchmark else 'dev'}"
    if settings.get("dev_file") or settings.get("dataset"):
        dev_data = settings.get("dev_file") and Path(settings["dev_file"]).name
        dev_data = dev_data or f"{settings['dataset']} {settings.get('dev_split') or 'dev'}"
    base, scores = card.base_model or results.get("student_base"), score_pairs(student, *USAGE_PAIRS)
    section = DSE_SECTION.render(
        head=head,
        task=task,
        card=card,
        base=base and _model_link(base),
        teacher=teacher and _model_link(teacher),
        data=f"{data}, train split; {task.description}" if data == task.name else data,
        metrics={system: {name: values.get(name) for name in names} for system, values in metrics.items()},
        names=names,
        dev_data=dev_data,
        model=card.model_id or MODEL_PATH_PLACEHOLDER,
        scores=np.array2string(np.asarray(scores), precision=4, suppress_small=True).splitlines(),
        label_names=head.label_names or list(task.label_names),
    )

    def write(folder: Path) -> None:
        # The card is generated, never reused: a student loaded from a folder with a README would keep that one.
        student.save(str(folder), create_model_card=False)
        (folder / "dse.json").write_text(json.dumps({"task": task.name, "teacher": teacher, **results}, indent=2))
        (folder / "README.md").write_text(generate_model_card(student) + "\n" + section, encoding="utf-8")

    atomic_save_dir(output_dir, write, kind="student")
