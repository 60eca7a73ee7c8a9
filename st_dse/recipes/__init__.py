"""The recipes behind ``st-dse distill | finetune-teacher | label`` and the scripts in ``recipes/``."""

from __future__ import annotations

import contextlib
import logging

import datasets
import transformers

from st_dse.data.pairs import HubUnreachableError


@contextlib.contextmanager
def refused():
    """A refusal (a bad setting, a missing file, an unreachable Hub) ends the recipe with one line, not a traceback."""
    try:
        yield
    except (FileExistsError, FileNotFoundError, HubUnreachableError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


def start_logging() -> None:
    """The recipes' log lines, and from the libraries progress bars only for training and long teacher labelling
    (none for loading weights, writing shards, dataset maps or encoding a dev split), and sentence-transformers'
    warnings, not its INFO lines."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
