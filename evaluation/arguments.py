"""argparse ``type`` functions shared by the evaluation commands: argparse names the option in the one-line refusal."""

from __future__ import annotations

import argparse

from st_dse.data import TASKS, get_task


def int_at_least(low: int):
    """An argparse ``type``: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def task_name(text: str) -> str:
    """An argparse ``type``: a task st_dse knows (its registry resolves aliases)."""
    try:
        get_task(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown task {text!r}; known tasks: {', '.join(TASKS)}") from None
    return text
