"""Where a run writes: the student folder, with its teacher and checkpoints beside it; never over a model unasked."""

from __future__ import annotations

import os
from pathlib import Path

MODEL_MARKERS = ("modules.json", "config.json", "dse.json", "dev_metrics.json", "model.safetensors")


def sibling_dir(path: str | os.PathLike, suffix: str) -> Path:
    """``<path>-<suffix>``: where a run keeps what belongs beside a saved model (its checkpoints, its teacher)."""
    path = Path(path)
    return path.with_name(f"{path.name}-{suffix}")


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool, resume: bool) -> None:
    """Refuse to start a run whose output folder already holds a model or results, unless the user said so.

    ``overwrite``: the run may replace what is there (the new model is swapped in whole at the end). ``resume``: the
    same run continues, so its output folder, teacher and checkpoints may exist. An empty folder is always fine.

    Raises:
        FileExistsError: with the option to pass.
    """
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--output-dir {path} is a file, not a folder: choose another --output-dir.")
    if overwrite or resume or not path.is_dir() or not any(path.iterdir()):
        return
    found = sorted(name for name in MODEL_MARKERS if (path / name).exists()) or sorted(p.name for p in path.iterdir())
    raise FileExistsError(
        f"--output-dir {path} already holds a model or results ({', '.join(found[:5])}). Choose another "
        "--output-dir, pass --overwrite to replace it, or --resume to continue the run that wrote it."
    )
