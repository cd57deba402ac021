"""Settling and averaging of the Monte Carlo EM sequence.

MCEM estimates jitter from epoch to epoch by Monte Carlo noise (6 levels and
2 draws give ~40% relative noise in one epoch's variance). We therefore
(1) call EM *settled* when the means of the last two windows of ``window``
epochs differ by no more than Monte Carlo noise: with z the change of each
parameter over the larger of its Monte Carlo standard error and ``tolerance``
(relative), the mean of z^2 is at most MEAN_SQUARED_Z (about 1 when only noise
moves the means) and no z exceeds MAX_Z (a per-parameter test at 2 sigma fails
by chance with dozens of parameters: a categorical fit kept running for
thousands of epochs). Consecutive epochs are correlated (the chain is
warm-started, and EM feeds each estimate into the next E-step), so the standard
error of a window mean is inflated by (1 + rho) / (1 - rho), rho the lag-1
autocorrelation of the sequence after removing its linear trend (so that a
trend still counts as change); without it the test failed for tens of epochs
after the values had stopped moving (three crossed factors of 10^4 levels,
100,000 rows: gaussian 44 -> 36 EM epochs, binomial 78 -> 45), and
(2) switch to stochastic approximation (SAEM, gain k^-0.6): from then on the
parameters handed to the next E-step are the SA iterate, and the reported
value is the Polyak-Ruppert average of the iterates. Feeding back the noisy single-epoch estimate
instead biases plain MCEM by O(1/draws) (sleepstudy's random-slope fit landed
3-4% low on the intercept variance and 40% high on the covariance); the
averaged iterate converges to the EM fixed point, the maximum likelihood
estimate. The reported value comes with a batch-means Monte Carlo standard
error of the per-epoch estimates; averaging goes on until that error is below a target fraction
of each component (few levels need many epochs: cbpp's 15 herds gave 0.35-0.46
across seeds after 40 averaged epochs).
"""

from __future__ import annotations

import numpy as np

Entry = tuple[list[np.ndarray], float | None, np.ndarray | None]

SA_EXPONENT = 0.6
"""Gain k^-0.6 of the stochastic-approximation step. A gain of 1/k (a plain running mean
fed back) converges like k^-(1 - rho) when EM's rate rho is above 1/2, as with few levels
and little data per level: cbpp's 15 herds ended anywhere in 0.35-0.46 across seeds.
A slower-decaying gain with Polyak averaging of the iterates converges at the 1/sqrt(k) rate."""
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
MAX_AUTOCORRELATION = 0.8
"""Largest lag-1 autocorrelation credited to noise in the settle test (inflation 9, 3x on the standard error)."""


def _flatten(covariances: list[np.ndarray], dispersion: float | None, beta: np.ndarray | None) -> np.ndarray:
    parts = [S.ravel() for S in covariances]
    if dispersion is not None:
        parts.append(np.array([dispersion]))
    if beta is not None:
        parts.append(beta.ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


def _unflatten(vector: np.ndarray, template: Entry) -> Entry:
    """Inverse of _flatten, shaped like ``template``."""
    covariances, start = [], 0
    for S in template[0]:
        covariances.append(vector[start : start + S.size].reshape(S.shape))
        start += S.size
    dispersion = None
    if template[1] is not None:
        dispersion, start = float(vector[start]), start + 1
    beta = None if template[2] is None else vector[start:].reshape(template[2].shape)
    return covariances, dispersion, beta


class Averager:
    """Per-epoch estimates of covariances (list of (c, p, p)), dispersion and beta (k, c)."""

    def __init__(self, window: int, tolerance: float) -> None:
        self.window = window
        self.tolerance = tolerance
        self.entries: list[Entry] = []
        self.iterates: list[np.ndarray] = []
        self.average_from: int | None = None

    def add(self, covariances: list[np.ndarray], dispersion: float | None, beta: np.ndarray | None) -> None:
        """One epoch's M-step estimate; while averaging, also a stochastic-approximation step."""
        self.entries.append(([S.copy() for S in covariances], dispersion, None if beta is None else beta.copy()))
        if self.averaging:
            estimate = _flatten(*self.entries[-1])
            if not self.iterates:
                self.iterates.append(estimate)
            else:
                gain = len(self.iterates) ** -SA_EXPONENT
                self.iterates.append(self.iterates[-1] + gain * (estimate - self.iterates[-1]))

    @property
    def averaging(self) -> bool:
        return self.average_from is not None

    @property
    def averaged_epochs(self) -> int:
        return 0 if self.average_from is None else len(self.entries) - self.average_from

    def start_averaging(self) -> None:
        """Average every epoch added from now on."""
        self.average_from = len(self.entries)

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

    def _averaged(self) -> list[Entry]:
        """The epochs behind the reported value: the tail half of the averaging phase."""
        if self.average_from is None:
            return self.entries[-self.window :]
        start = self.average_from + self.averaged_epochs // 2
        return self.entries[start:] or self.entries[-1:]

    def result(self) -> tuple[list[np.ndarray], list[np.ndarray], float | None, float | None]:
        """Averaged covariances, their MC standard errors, averaged dispersion and its MC standard error."""
        entries = self._averaged()
        covariances, dispersion, _ = self.reported()
        covariance_se = [_batch_se(np.stack([e[0][l] for e in entries])) for l in range(len(entries[0][0]))]
        if entries[0][1] is None:
            return covariances, covariance_se, None, None
        return covariances, covariance_se, dispersion, float(_batch_se(np.array([e[1] for e in entries])))

    def precise(self, target: float, levels: list[int]) -> bool:
        """Whether the averaged variances, covariances and dispersion have Monte Carlo standard
        errors below what is allowed: ``target`` times each one's scale (sqrt(S_ii S_jj), floored
        at 1% of the largest variance or of the residual variance, 1 on the link scale of a
        family without one), or SAMPLING_SHARE of its sampling standard error, whichever is
        larger. Pooled: the mean squared ratio se / allowed must be at most 1 and no ratio above
        MAX_SE_RATIO. Each batch-means error rests on 2-10 batches and is itself noisy; asking
        every one of hundreds of components to pass at once waited for the luckiest draw of the
        worst (100 classes x 3 factors: still averaging after 148 epochs). The floor keeps
        variances near zero from demanding endless averaging: where every variance
        was ~0 (the paper's Irrelevant scenario, 1e-5 to 0.016 on the logit scale) averaging
        ran 160 epochs to pin them to 2% of themselves.

        ``levels[l]``: levels of term l. The sampling standard error of a covariance entry
        from q levels is about sqrt((S_ii S_jj + S_ij^2) / q) (Wishart), 45% of a variance
        with 10 levels: Monte Carlo error far below that buys nothing (the 10-level factor
        of the paper's base scenario kept averaging for 400 epochs at 5% relative error)."""
        covariances, covariance_se, dispersion, dispersion_se = self.result()
        variances = [np.diagonal(S, axis1=-2, axis2=-1) for S in covariances]
        floor = 0.01 * max([float(v.max()) for v in variances] + [1.0 if dispersion is None else dispersion]) + 1e-12
        ratios = []
        for S, v, se, q in zip(covariances, variances, covariance_se, levels):
            product = v[..., :, None] * v[..., None, :]
            sampling_se = np.sqrt((product + S**2) / max(q, 1))
            allowed = np.maximum(target * np.maximum(np.sqrt(product), floor), SAMPLING_SHARE * sampling_se)
            ratios.append((se / allowed).ravel())
        if dispersion is not None:
            ratios.append(np.array([dispersion_se / (target * max(dispersion, floor))]))
        ratio = np.concatenate(ratios)
        return bool(np.mean(ratio**2) <= 1.0 and np.max(ratio) <= MAX_SE_RATIO)

    def current(self) -> Entry:
        """The parameters to hand to the next E-step: the stochastic-approximation iterate
        while averaging, else the last estimate."""
        if not self.iterates:
            return self.entries[-1]
        return _unflatten(self.iterates[-1], self.entries[-1])

    def reported(self) -> Entry:
        """Polyak-Ruppert average of the tail half of the iterates (the last estimate before
        averaging starts). The first half is dropped: averaging may start while a slowly
        converging component is still moving (sleepstudy's covariance started at 8.3 against
        its fixed point 11.1 in one seed), and the SA iterates carry that start for a long time."""
        if not self.iterates:
            return self.entries[-1]
        tail = self.iterates[len(self.iterates) // 2 :]
        return _unflatten(np.mean(tail, axis=0), self.entries[-1])


def _batch_se(values: np.ndarray) -> np.ndarray:
    """Batch-means standard error of the mean of a sequence (t, ...)."""
    t = values.shape[0]
    batches = max(min(MAX_BATCHES, t // MIN_BATCH_EPOCHS), min(2, t))
    if batches < 2:
        return np.zeros(values.shape[1:])
    size = t // batches
    means = np.stack([values[i * size : (i + 1) * size].mean(0) for i in range(batches)])
    return means.std(0, ddof=1) / np.sqrt(batches)


def _detrended_autocorrelation(values: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each column of ``values`` (t, k) after removing its least-squares
    line, clipped to [0, MAX_AUTOCORRELATION]."""
    t = np.arange(len(values)) - (len(values) - 1) / 2
    centered = values - values.mean(0)
    residual = centered - np.outer(t, t @ centered / (t @ t))
    rho = (residual[1:] * residual[:-1]).sum(0) / np.maximum((residual**2).sum(0), 1e-300)
    return np.clip(rho, 0.0, MAX_AUTOCORRELATION)
