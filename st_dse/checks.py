"""Argument checks shared by teacher labelling and inference, each raising a ValueError that names the argument."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any


def int_at_least(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int, or a ValueError naming ``name`` when it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}.")
    return int(value)


def one_of(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value``, or a ValueError naming ``name`` when it is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")
    return value
