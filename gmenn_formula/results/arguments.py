"""Checks of the verbs' plain arguments (counts, seeds), each a DataError that names the argument."""

from __future__ import annotations

import numpy as np

from gmenn_formula.errors import DataError


def check_count(name: str, value: object, least: int) -> None:
    """DataError unless ``value`` is an integer (not a bool) of at least ``least``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        wanted = "a positive integer" if least == 1 else f"an integer of at least {least}"
        raise DataError(f"{name} must be {wanted}, not {value!r}.")


def check_seed(seed: object) -> None:
    """DataError unless ``seed`` is None or an integer (not a bool)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise DataError(f"seed must be an integer or None, not {seed!r}.")
