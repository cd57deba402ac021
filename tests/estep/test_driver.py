"""EStep: row weights decide which rows the draws condition on; epochs of any K from one compiled chunk."""

from __future__ import annotations

import numpy as np
import pytest

from gmenn_formula.errors import ControlError
from gmenn_formula.estep.driver import EStep
from gmenn_formula.estep.arrays import TermArrays
from gmenn_formula.estep.sampler import SamplerConfig
from gmenn_formula.families import get_family

PRIOR_VARIANCE, RESIDUAL_VARIANCE = 1.0, 1.0


def one_level_estep(y: np.ndarray, weights: np.ndarray, chunk: int = 2) -> EStep:
    n = len(y)
    terms = (TermArrays(codes=np.zeros(n, np.int32), Z=np.ones((n, 1), np.float32), num_levels=1),)
    config = SamplerConfig(num_draws=chunk, burn_in=0, max_tree_depth=3)
    return EStep(get_family("gaussian"), terms, y.astype(np.float32), np.ones(n, np.float32), weights, 1, config, seed=0)


def posterior_draws(estep: EStep, epochs: int, num_draws: int = 4) -> np.ndarray:
    F, covariances = np.zeros((estep.data.y.shape[0], 1), np.float32), [np.full((1, 1, 1), PRIOR_VARIANCE)]
    return np.concatenate([estep.draw(F, covariances, RESIDUAL_VARIANCE, num_draws, 1).effects[0].ravel() for _ in range(epochs)])


def conjugate_mean(y: np.ndarray) -> float:
    return float(y.sum() / RESIDUAL_VARIANCE / (len(y) / RESIDUAL_VARIANCE + 1 / PRIOR_VARIANCE))


def test_rows_weighted_zero_do_not_inform_the_draws():
    """Ten rows near 1 weigh 1, ten rows at 50 weigh 0: the draws follow the first ten alone,
    and after set_weights(ones) all twenty."""
    y = np.concatenate([np.linspace(0.5, 1.5, 10), np.full(10, 50.0)])
    estep = one_level_estep(y, np.r_[np.ones(10), np.zeros(10)])
    draws = posterior_draws(estep, 150)
    assert draws.mean() == pytest.approx(conjugate_mean(y[:10]), abs=0.1)
    estep.set_weights(np.ones(20))
    posterior_draws(estep, 10)
    assert posterior_draws(estep, 150).mean() == pytest.approx(conjugate_mean(y), abs=0.2)


def test_epochs_of_any_multiple_of_the_chunk_share_one_compilation():
    estep = one_level_estep(np.ones(8), np.ones(8), chunk=2)
    F, covariances = np.zeros((8, 1), np.float32), [np.ones((1, 1, 1))]
    four = estep.draw(F, covariances, 1.0, 4, 1)
    assert four.effects[0].shape == (3, 1, 1, 1) and four.info.acceptance_rate.shape == (4,)
    assert estep.draw(F, covariances, 1.0, 2, 1).effects[0].shape == (1, 1, 1, 1)
    with pytest.raises(ControlError, match="chunks of 2 draws cannot make K=3"):
        estep.draw(F, covariances, 1.0, 3, 1)
    with pytest.raises(ControlError, match="burn_in=0"):
        EStep(estep.family, (), np.ones(2), np.ones(2), np.ones(2), 1, SamplerConfig(num_draws=2, burn_in=1), seed=0)
