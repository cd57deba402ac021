"""Averaging of the MCEM sequence: when the Monte Carlo error is small enough."""

from __future__ import annotations

import numpy as np
import pytest

from gmenn_formula.training import averaging
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


def _averaged_many(values: np.ndarray) -> Averager:
    """Averager fed ``values`` (epochs, components), one term with a (components, 1, 1) covariance."""
    averager = Averager(window=10, tolerance=2e-3)
    averager.start_averaging()
    for row in values:
        averager.add([row[:, None, None]], None, None)
    return averager


def test_precision_is_pooled_over_many_components():
    """300 components of 0.5 whose true Monte Carlo error is 1.3% (40 averaged epochs, the tail
    20 reported, sd 0.03): each batch-means estimate rests on 2 batches and some of 300 read
    above 2%, but the pool passes; a true error of 3% fails, and so does one component far off
    when the rest are precise."""
    rng = np.random.default_rng(1)
    precise = _averaged_many(0.5 + 0.03 * rng.standard_normal((40, 300)))
    ses = precise.result()[1][0].ravel() / 0.5
    assert np.max(ses) > 0.02 and precise.precise(0.02, [100_000])
    assert not _averaged_many(0.5 + 0.067 * rng.standard_normal((40, 300))).precise(0.02, [100_000])
    noisy_one = 0.5 + 0.03 * rng.standard_normal((40, 300))
    noisy_one[:, 0] = 0.5 + 0.5 * rng.standard_normal(40)
    assert not _averaged_many(noisy_one).precise(0.02, [100_000])


def test_a_constant_sequence_is_precise_at_once():
    averager = _averaged(np.full(40, 0.3))
    assert averager.precise(0.02, [100_000])
    assert averager.reported()[0][0].item() == pytest.approx(0.3)


def _em_phase(values: np.ndarray) -> Averager:
    """EM-phase averager fed ``values`` (epochs, parameters), one 1x1 covariance per parameter."""
    averager = Averager(window=10, tolerance=2e-3)
    for row in values:
        averager.add([np.array([[[value]]]) for value in row], None, None)
    return averager


def _ar1(rho: float, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) noise with unit variance, along the first axis."""
    noise = rng.standard_normal(shape)
    out = np.zeros(shape)
    out[0] = noise[0]
    for t in range(1, shape[0]):
        out[t] = rho * out[t - 1] + noise[t] * np.sqrt(1 - rho**2)
    return out


def _pass_rates(rng: np.random.Generator, trials: int = 300) -> tuple[float, float]:
    """How often two windows of 8 parameters pass the settle test: AR(1) noise (rho .6, 2% of the
    value) around a constant, and the same noise on a drift of 1% of the value per epoch."""
    stationary = [_em_phase(0.5 + 0.01 * _ar1(0.6, (20, 8), rng)).settled() for _ in range(trials)]
    drift = 0.005 * np.arange(20)[:, None]
    drifting = [_em_phase(0.5 + drift + 0.01 * _ar1(0.6, (20, 8), rng)).settled() for _ in range(trials)]
    return float(np.mean(stationary)), float(np.mean(drifting))


def test_settled_allows_for_autocorrelated_noise_but_not_for_a_trend(monkeypatch):
    stationary, drifting = _pass_rates(np.random.default_rng(1))
    monkeypatch.setattr(averaging, "MAX_AUTOCORRELATION", 0.0)
    uncorrected, _ = _pass_rates(np.random.default_rng(1))
    print("pass rates: stationary", stationary, "without the correction", uncorrected, "drifting", drifting)
    assert stationary > 0.35 and uncorrected < 0.25
    assert drifting == 0.0
