"""The variance M-step's statistic with the posterior score as a control variate (mstep/moments.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmenn_formula.families import get_family
from gmenn_formula.mstep.moments import level_second_moments, score_controlled
from gmenn_formula.mstep.step import Rows


def _rows(codes: torch.Tensor, y: torch.Tensor, trials: torch.Tensor) -> Rows:
    n = len(codes)
    return Rows((), torch.zeros(n, 0), torch.zeros(n), y, trials, (codes,), (torch.ones(n, 1),))


def test_without_data_the_statistic_is_the_prior_covariance_whatever_the_draws():
    """Binomial rows of 0 trials say nothing: the score is 0 and the prior's share 1, so the
    statistic is Sigma exactly, where the draws' own b b^T scatter around it."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 20, (200,), generator=g)
    rows = _rows(codes, torch.zeros(200), torch.zeros(200))
    Sigma = torch.full((1, 1, 1), 0.7, dtype=torch.float64)
    B = torch.randn(4, 20, 1, 1, generator=g) * 3.0
    (statistic,) = score_controlled(get_family("binomial"), (B,), [level_second_moments(B)], [Sigma], torch.zeros(200, 1), rows, 1.0)
    torch.testing.assert_close(statistic, Sigma)
    assert abs(float(level_second_moments(B).mean()) - 0.7) > 1.0


@pytest.mark.parametrize("rows_per_level, noise", [(1, 4.0), (4, 1.0)])
def test_with_exact_posterior_draws_it_is_unbiased_and_quieter_than_the_draws(rows_per_level, noise):
    """A gaussian likelihood (conjugate: exact posterior draws) with weak and with moderate data per
    level: over 400 epochs of 4 draws both statistics average to the exact E[b^2 | y], and the
    score-controlled one has a fraction of the draws' spread."""
    rng = np.random.default_rng(1)
    q, prior, m = 30, 0.5, 4
    codes = np.repeat(np.arange(q), rows_per_level)
    y = rng.normal(0, np.sqrt(prior), q)[codes] + rng.normal(0, np.sqrt(noise), len(codes))
    rows = _rows(torch.as_tensor(codes), torch.as_tensor(y, dtype=torch.float32), torch.ones(len(codes)))
    variance = 1 / (1 / prior + rows_per_level / noise)
    mean = variance * np.bincount(codes, y, q) / noise
    exact = float(np.mean(mean**2 + variance))
    Sigma = torch.full((1, 1, 1), prior, dtype=torch.float64)
    plain, controlled = [], []
    for _ in range(400):
        B = torch.as_tensor(mean + np.sqrt(variance) * rng.standard_normal((m, q)), dtype=torch.float32)[..., None, None]
        plain.append(float(level_second_moments(B).mean()))
        (statistic,) = score_controlled(get_family("gaussian"), (B,), [level_second_moments(B)], [Sigma], torch.zeros(len(codes), 1), rows, noise)
        controlled.append(float(statistic))
    plain, controlled = np.array(plain), np.array(controlled)
    assert plain.mean() == pytest.approx(exact, abs=3 * plain.std() / np.sqrt(400))
    assert controlled.mean() == pytest.approx(exact, abs=3 * controlled.std() / np.sqrt(400) + 1e-6)
    assert controlled.std() < 0.6 * plain.std()
