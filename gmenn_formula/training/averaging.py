"""The settle test of the EM phase, and the Monte Carlo error rules of the later phases.

MCEM estimates jitter from epoch to epoch by Monte Carlo noise (6 levels and
2 draws give ~40% relative noise in one epoch's variance). EM counts as *settled*
when the means of the last two windows of ``window`` epochs differ by no more than
Monte Carlo noise: with z the change of each parameter over the larger of its Monte
Carlo standard error and ``tolerance`` (relative), the mean of z^2 is at most
MEAN_SQUARED_Z (about 1 when only noise moves the means) and no z exceeds MAX_Z (a
per-parameter test at 2 sigma fails by chance with dozens of parameters: a
categorical fit kept running for thousands of epochs). Consecutive epochs are
correlated (the chain is warm-started, and EM feeds each estimate into the next
E-step), so the standard error of a window mean is inflated by (1 + rho) / (1 - rho),
rho the lag-1 autocorrelation of the sequence after removing its linear trend (so
that a trend still counts as change); without it the test failed for tens of epochs
after the values had stopped moving (three crossed factors of 10^4 levels, 100,000
rows: gaussian 44 -> 36 EM epochs, binomial 78 -> 45). Settling only ends the EM
phase: the Newton steps that follow (:mod:`~gmenn_formula.training.newton`) are what
reach the fixed point, and the final block's errors come from :func:`batch_se`,
judged by the allowances of :meth:`~gmenn_formula.training.newton.ParameterLayout.allowed_errors`.
"""

from __future__ import annotations

import numpy as np
from scipy.special import stdtrit

Entry = tuple[list[np.ndarray], float | None, np.ndarray | None]

MAX_BATCHES = 10
MIN_BATCH_EPOCHS = 10
"""Batches shorter than the sequence's autocorrelation (the sampler is warm-started
across epochs) understate the error: with 4-epoch batches cbpp's reported error was
2.5x below the spread across seeds."""
SAMPLING_SHARE = 0.1
"""Monte Carlo error below a tenth of the sampling standard error adds 1% to the estimate's variance."""
MAX_SE_RATIO = 3.0
"""No single Monte Carlo error may exceed three times what is allowed, however well the others do.
An error estimated from 2 batches (1 degree of freedom) is |N(0, 1)| times the true one: at a true
0.7 of the allowance, 1 in 240 components reads above 2x by chance, 1 in 55,000 above 3x."""
MEAN_SQUARED_Z = 2.0
MAX_Z = 4.0
FALSE_ALARM = 0.05
"""Chance that noise alone makes the largest of a block's z ratios count as a real step (or as
disagreement): the threshold grows with the number of parameters and shrinks with the degrees of
freedom of their errors. A fixed 4 with 300 variances and errors from 5 batch means (t with 4 degrees
of freedom: P(|t| > 4) = .016) fired at nearly every check, and the 100-class fits took one noise-driven
Newton step after another."""
MAX_AUTOCORRELATION = 0.8
"""Largest lag-1 autocorrelation credited to noise in the settle test (inflation 9, 3x on the standard error)."""


def _flatten(covariances: list[np.ndarray], dispersion: float | None, beta: np.ndarray | None) -> np.ndarray:
    parts = [S.ravel() for S in covariances]
    if dispersion is not None:
        parts.append(np.array([dispersion]))
    if beta is not None:
        parts.append(beta.ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


class Averager:
    """The EM phase's per-epoch estimates of covariances (list of (c, p, p)), dispersion and beta (k, c)."""

    def __init__(self, window: int, tolerance: float) -> None:
        self.window = window
        self.tolerance = tolerance
        self.entries: list[Entry] = []

    def add(self, covariances: list[np.ndarray], dispersion: float | None, beta: np.ndarray | None) -> None:
        """One epoch's M-step estimate."""
        self.entries.append(([S.copy() for S in covariances], dispersion, None if beta is None else beta.copy()))

    def settled(self) -> bool:
        """Whether the last two windows agree within tolerance or Monte Carlo error."""
        w = self.window
        if len(self.entries) < 2 * w:
            return False
        vectors = np.stack([_flatten(*entry) for entry in self.entries[-2 * w :]])
        previous, last = vectors[:w], vectors[w:]
        change = np.abs(last.mean(0) - previous.mean(0))
        rho = _detrended_autocorrelation(vectors)
        noise = np.sqrt((last.var(0, ddof=1) + previous.var(0, ddof=1)) / w * (1 + rho) / (1 - rho))
        scale = np.maximum(np.abs(last.mean(0)), 1e-3 * np.abs(last.mean(0)).max() + 1e-12)
        z = change / np.maximum(noise, self.tolerance * scale)
        return bool(np.mean(z**2) <= MEAN_SQUARED_Z and np.max(z) <= MAX_Z)


def batch_se(values: np.ndarray) -> np.ndarray:
    """Batch-means standard error of the mean of a sequence (t, ...)."""
    t = values.shape[0]
    batches = max(min(MAX_BATCHES, t // MIN_BATCH_EPOCHS), min(2, t))
    if batches < 2:
        return np.zeros(values.shape[1:])
    size = t // batches
    means = np.stack([values[i * size : (i + 1) * size].mean(0) for i in range(batches)])
    return means.std(0, ddof=1) / np.sqrt(batches)


def precise(se: np.ndarray, allowed: np.ndarray) -> bool:
    """Whether Monte Carlo errors ``se`` are within ``allowed`` (pooled): the mean squared ratio at
    most 1 and no ratio above MAX_SE_RATIO. Each error estimate is itself noisy; asking every one
    of hundreds of components to pass at once waited for the luckiest draw of the worst (100
    classes x 3 factors: still averaging after 148 epochs)."""
    ratio = se[: len(allowed)] / allowed
    return bool(np.mean(ratio**2) <= 1.0 and np.max(ratio) <= MAX_SE_RATIO)


def largest_noise_z(count: int, epochs: int) -> float:
    """The z that the largest of ``count`` noise-only ratios exceeds with probability FALSE_ALARM,
    each a t variable with the degrees of freedom of :func:`stationary_se` over ``epochs`` epochs
    (Bonferroni)."""
    dof = max(_batches(epochs) - 1, 1)
    return float(stdtrit(dof, 1.0 - FALSE_ALARM / (2 * max(count, 1))))


def _batches(epochs: int) -> int:
    """Batch means :func:`stationary_se` forms from ``epochs`` epochs."""
    return epochs // max(1, epochs // MAX_BATCHES)


def stationary_se(values: np.ndarray) -> np.ndarray:
    """Standard error of the mean of a stationary sequence (t, ...) (a block's epochs at fixed
    parameters): batch means of max(1, t // MAX_BATCHES) epochs, inflated by (1 + rho) / (1 - rho)
    with rho the lag-1 autocorrelation of the batch means (0 to MAX_AUTOCORRELATION)."""
    t = values.shape[0]
    size = max(1, t // MAX_BATCHES)
    batches = _batches(t)
    if batches < 2:
        return np.zeros(values.shape[1:])
    means = values[: batches * size].reshape(batches, size, *values.shape[1:]).mean(1)
    centered = means - means.mean(0)
    rho = (centered[1:] * centered[:-1]).sum(0) / np.maximum((centered**2).sum(0), 1e-300)
    rho = np.clip(rho, 0.0, MAX_AUTOCORRELATION)
    return means.std(0, ddof=1) / np.sqrt(batches) * np.sqrt((1 + rho) / (1 - rho))


def _detrended_autocorrelation(values: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each column of ``values`` (t, k) after removing its least-squares
    line, clipped to [0, MAX_AUTOCORRELATION]."""
    t = np.arange(len(values)) - (len(values) - 1) / 2
    centered = values - values.mean(0)
    residual = centered - np.outer(t, t @ centered / (t @ t))
    rho = (residual[1:] * residual[:-1]).sum(0) / np.maximum((residual**2).sum(0), 1e-300)
    return np.clip(rho, 0.0, MAX_AUTOCORRELATION)
