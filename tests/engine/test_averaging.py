"""Averaging of the MCEM sequence: when the Monte Carlo error is small enough."""

from __future__ import annotations

import numpy as np
import pytest

from gmenn_formula.training.averaging import Averager


def _averaged(values: np.ndarray) -> Averager:
    averager = Averager(window=10, tolerance=2e-3)
    averager.start_averaging()
    for value in values:
        averager.add([np.array([[[value]]])], None, None)
    return averager


def test_few_levels_need_only_a_tenth_of_the_sampling_error():
    """A variance of 0.5 with ~3% Monte Carlo error: too imprecise for 1,000 levels
    (sampling error 2.2%), enough for 10 levels (sampling error 45%)."""
    rng = np.random.default_rng(0)
    averager = _averaged(0.5 + 0.15 * rng.standard_normal(200))
    se = averager.result()[1][0].item()
    assert 0.022 < se / 0.5 < 0.04
    assert averager.precise(0.02, [10])
    assert not averager.precise(0.02, [1000])


def test_a_constant_sequence_is_precise_at_once():
    averager = _averaged(np.full(40, 0.3))
    assert averager.precise(0.02, [100_000])
    assert averager.reported()[0][0].item() == pytest.approx(0.3)
