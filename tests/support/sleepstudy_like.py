"""Simulated data on sleepstudy's scale: 18 subjects x 10 days, Reaction ~ 250 + 10 Days,
subject intercepts of sd 25, residual sd 25 (truth: intercept variance 625)."""

from __future__ import annotations

import numpy as np
import pandas as pd

INTERCEPT, SLOPE, SD = 250.0, 10.0, 25.0


def sleepstudy_like(seed: int = 0, subjects: int = 18, days: int = 10) -> pd.DataFrame:
    """Columns Reaction, Days (float) and Subject (str), ``subjects * days`` rows."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(subjects), days)
    day = np.tile(np.arange(days, dtype=float), subjects)
    reaction = INTERCEPT + SLOPE * day + rng.normal(0, SD, subjects)[subject] + rng.normal(0, SD, subjects * days)
    return pd.DataFrame({"Reaction": reaction, "Days": day, "Subject": [f"s{i:02d}" for i in subject]})
