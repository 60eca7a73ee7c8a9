"""Saving a trained student with its model card section and run summary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import (
    SentenceTransformer,
)

from st_dse.data import TaskSpec
from st_dse.integrity import atomic_save_dir
from st_dse.losses import DSE_CITATION
from st_dse.student import get_pair_head


def save_student(
    student: SentenceTransformer,
    output_dir: str | os.PathLike,
    task: TaskSpec,
    teacher: str | None,
    results: dict[str, Any],
) -> None:
    """Save the student (model card included) and a ``dse.json`` with task, teacher and metrics, all or nothing.

    The folder is written beside ``output_dir`` and swapped in whole: a run killed at any moment leaves the earlier
    folder or the new one, never a mix, and nothing of an earlier model stays beside the new one.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return  # under torchrun every rank holds the same model; one writer avoids racing on the same files
    head = get_pair_head(student)
    student.model_card_data.model_name = f"DSE student for {task.name}"

    def write(folder: Path) -> None:
        student.save(str(folder))
        (folder / "dse.json").write_text(json.dumps({"task": task.name, "teacher": teacher, **results}, indent=2))
        card = folder / "README.md"
        section = _model_card_section(task, teacher, head.head_type, results)
        card.write_text((card.read_text(encoding="utf-8") if card.exists() else "") + section, encoding="utf-8")

    atomic_save_dir(output_dir, write)


def _model_card_section(task: TaskSpec, teacher: str | None, head_type: str, results: dict[str, Any]) -> str:
    rows = []
    for system, metrics in results.get("metrics", {}).items():
        values = ", ".join(f"{name} {value:.2f}" for name, value in metrics.items() if name != "main")
        rows.append(f"| {system} | {values} |")
    table = "\n".join(["| system | dev metrics |", "|---|---|", *rows]) if rows else ""
    return f"""

## Distilled Sentence Embedding (st_dse)

This model is a DSE student: a siamese sentence encoder with a `{head_type}` PairHead trained to reproduce the raw
logits of a cross-encoder teacher on **{task.name}** ({task.description}).

- Teacher: `{teacher}`
- Task: {task.name}, {task.problem_type}, {task.num_labels} head output(s), main metric {task.main_metric}

{table}

Load it with its head and score pairs:

```python
import st_dse

model = st_dse.load_student("path/to/this/model")  # the encoder and its PairHead
scores = st_dse.score_pairs(model, ["A man plays guitar."], ["Someone plays a guitar."])
```

`model.encode(...)` returns plain sentence embeddings (compare them with cosine similarity);
`SentenceTransformer(path)`
loads the same encoder without the head.

### DSE citation

```bibtex{DSE_CITATION}```
"""
