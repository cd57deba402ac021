"""Averaging of the MCEM sequence: when the Monte Carlo error is small enough."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import stdtrit

from gmenn_formula.training import averaging
from gmenn_formula.training.averaging import FALSE_ALARM, MAX_Z, Averager, largest_noise_z, precise, stationary_se
from gmenn_formula.training.newton import ParameterLayout


def _layout(levels: int, components: int = 1) -> ParameterLayout:
    """One random intercept with ``components`` classes (each its own variance) and ``levels`` levels."""
    return ParameterLayout(entries=(((0, 0),),), num_outputs=components, num_levels=(levels,), dispersion=False, num_rows=10 * levels, num_fixed=0)


def _precise(layout: ParameterLayout, theta: np.ndarray, se: np.ndarray) -> bool:
    return precise(se, layout.allowed_errors(theta, 0.02))


def test_few_levels_need_only_a_tenth_of_the_sampling_error():
    """A variance of 0.5 with 3% Monte Carlo error: too imprecise for 1,000 levels
    (sampling error 2.2%), enough for 10 levels (sampling error 45%)."""
    theta, se = np.array([0.5]), np.array([0.015])
    assert _precise(_layout(10), theta, se)
    assert not _precise(_layout(1000), theta, se)


def test_precision_is_pooled_over_many_components():
    """300 components of 0.5 whose true Monte Carlo error is 1.3% of them, each estimated from 2
    batches (|N(0, 1)| times the truth): some read above 2%, but the pool passes; a true error of
    3% fails, and so does one component far off when the rest are precise."""
    rng = np.random.default_rng(1)
    layout, theta = _layout(100_000, 300), np.full(300, 0.5)
    estimated = np.abs(rng.standard_normal(300))
    ses = 0.013 * 0.5 * estimated
    assert np.max(ses / 0.5) > 0.02 and _precise(layout, theta, ses)
    assert not _precise(layout, theta, 0.03 * 0.5 * estimated)
    one_off = ses.copy()
    one_off[0] = 0.5
    assert not _precise(layout, theta, one_off)


def test_no_monte_carlo_error_is_precise_at_once():
    assert _precise(_layout(20), np.array([0.3]), np.zeros(1))


def test_stationary_error_counts_autocorrelated_epochs():
    """AR(1) epochs (rho .6): the batch-means error of their mean matches the spread of means over
    repeated sequences within 30%; without the autocorrelation it would be ~2x too small."""
    rng = np.random.default_rng(3)
    sequences = np.stack([_ar1(0.6, (200, 1), rng)[:, 0] for _ in range(400)])
    reported = np.mean([stationary_se(seq) for seq in sequences])
    assert reported == pytest.approx(sequences.mean(1).std(), rel=0.3)


def test_ten_independent_epochs_give_an_error_from_ten_batches():
    """Uncorrelated epochs (a block's, at up to 64 draws each): at the first look (10 epochs) the
    error comes from 10 one-epoch batch means, and over repeated blocks it matches the spread of
    their means."""
    rng = np.random.default_rng(4)
    blocks = rng.standard_normal((2000, 10))
    reported = np.array([stationary_se(block[:, None])[0] for block in blocks])
    assert np.median(reported) == pytest.approx(blocks.mean(1).std(), rel=0.15)
    assert largest_noise_z(1, 10) == pytest.approx(stdtrit(9, 1 - FALSE_ALARM / 2))


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


def test_largest_noise_z_keeps_false_alarms_rare_among_many_parameters():
    """300 parameters whose 10 epochs are noise only (no step): the largest z over the batch-means
    error exceeds largest_noise_z in about FALSE_ALARM of blocks, where a fixed MAX_Z fires in most."""
    rng = np.random.default_rng(11)
    blocks = rng.standard_normal((400, 10, 300))
    largest = np.array([np.max(np.abs(b.mean(0)) / stationary_se(b)) for b in blocks])
    assert np.mean(largest > largest_noise_z(300, 10)) <= 2 * FALSE_ALARM
    assert np.mean(largest > MAX_Z) > 0.5
    assert largest_noise_z(1, 40) < MAX_Z < largest_noise_z(300, 40) < largest_noise_z(300, 6)
