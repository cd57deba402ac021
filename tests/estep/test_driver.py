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


def _many_class_estep(num_coefs: int, kind: str = "whitened") -> EStep:
    """20 classes, one 30-level term with ``num_coefs`` coefficients, 400 rows."""
    rng = np.random.default_rng(0)
    n, classes = 400, 20
    Z = np.concatenate([np.ones((n, 1)), rng.normal(size=(n, num_coefs - 1))], axis=1).astype(np.float32)
    terms = (TermArrays(codes=rng.integers(0, 30, n).astype(np.int32), Z=Z, num_levels=30),)
    config = SamplerConfig(kind=kind, num_draws=2, burn_in=0, max_tree_depth=3)
    y = rng.integers(0, classes, n)
    return EStep(get_family("categorical"), terms, y, np.ones(n, np.float32), np.ones(n, np.float32), classes, config, seed=0)


def test_a_dense_whitening_larger_than_the_free_memory_is_refused_with_what_to_do(monkeypatch):
    """20 classes with a random slope need the dense whitening (400 rows x 40 x 40 blocks + the
    20 x 20 information: 2.9 MB); with 1 MB free it is refused, naming the sizes and the ways out,
    before any memory is taken. One coefficient per term (rank-one whitening) and the unwhitened
    'paper' sampler need no such memory."""
    import gmenn_formula.estep.driver as driver

    monkeypatch.setattr(driver, "available_memory", lambda: 2**20)
    with pytest.raises(ControlError) as error:
        _many_class_estep(num_coefs=2)
    message = str(error.value)
    for part in ("3 MiB", "1 MiB are free", "400 rows", "2 coefficients x 20 classes = 40 dimensions", "sampler='paper'", "one coefficient per term"):
        assert part in message
    _many_class_estep(num_coefs=1)
    _many_class_estep(num_coefs=2, kind="paper")
