"""The Newton blocks of the variance phases: damping, and the missing information's shrinkage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import gmenn_formula as gf
from gmenn_formula.training.newton import ParameterLayout, shrunk_covariance
from gmenn_formula.training.phases import damped_step


def _layout(components: int) -> ParameterLayout:
    """One random intercept with ``components`` classes (each its own variance) and 100 levels."""
    return ParameterLayout(entries=(((0, 0),),), num_outputs=components, num_levels=(100,), dispersion=False, num_rows=1000, num_fixed=0)


def test_a_step_within_a_factor_of_two_is_taken_whole():
    layout = _layout(2)
    moved, whole = damped_step(layout, np.array([0.5, 0.4]), np.array([0.8, 0.3]))
    assert whole and np.allclose(moved, [0.8, 0.3])


@pytest.mark.parametrize("target", [3.0, 0.05])
def test_a_step_beyond_a_factor_of_two_is_cut_to_it_and_not_whole(target):
    layout = _layout(2)
    moved, whole = damped_step(layout, np.array([0.5, 0.4]), np.array([target, 0.4]))
    assert not whole
    assert moved[0] == pytest.approx(1.0 + 0.01 * 0.5 if target > 1 else 0.25)


def _per_unit(units: int, dimension: int, draws: int, correlation: float, rng: np.random.Generator) -> torch.Tensor:
    """Per-unit sample covariances (units, d, d) of ``draws`` independent draws each, coordinates
    equicorrelated at ``correlation`` with unit variances."""
    mixing = np.linalg.cholesky((1 - correlation) * np.eye(dimension) + correlation)
    X = rng.standard_normal((units, draws, dimension)) @ mixing.T
    X -= X.mean(1, keepdims=True)
    return torch.as_tensor(np.einsum("udi,udj->uij", X, X) / (draws - 1))


def test_shrinkage_removes_the_noise_of_few_units_in_many_dimensions():
    """10 units x 40 draws in 100 independent dimensions: the raw sum's largest eigenvalue is ~1.6x
    its diagonal's (noise); shrunk, within 15% of it."""
    per_unit = _per_unit(10, 100, 40, 0.0, np.random.default_rng(2))
    raw, shrunk = per_unit.sum(0).numpy(), shrunk_covariance(per_unit, 2 * 40)
    assert np.linalg.eigvalsh(raw).max() > 1.4 * np.diag(raw).max()
    assert np.linalg.eigvalsh(shrunk).max() < 1.15 * np.diag(shrunk).max()
    assert np.allclose(np.diag(shrunk), np.diag(raw))


def test_shrinkage_keeps_a_well_determined_correlation():
    """1,000 units x 64 draws in 3 dimensions correlated at .8 (a random slope's b0^2, b0 b1, b1^2):
    the off-diagonal keeps over 95% of its size."""
    per_unit = _per_unit(1000, 3, 64, 0.8, np.random.default_rng(3))
    raw, shrunk = per_unit.sum(0).numpy(), shrunk_covariance(per_unit, 2 * 64)
    off = ~np.eye(3, dtype=bool)
    assert np.all(shrunk[off] / raw[off] > 0.95)


def test_the_blocks_run_at_most_max_average_epochs_in_all():
    """EM stopped after 2 epochs, far from its fixed point: the first block's Newton step is long, so
    a second block follows; all together they stop at max_average_epochs, with a message."""
    from gmenn_formula.simulation import paper_scenario

    sim = paper_scenario(rows=1500, features=1, levels=(40, 30), variances=(0.5, 0.3), family="binomial", nonlinear=False, seed=2)
    fit = gf.gmenn(sim.formula, sim.data, family="binomial", verbose=0, laplace_start=False, epochs=2, parameter_expansion=False,
                   average_epochs=10, max_average_epochs=15)
    assert (fit.history["phase"] == "average").sum() == 15
    assert any("after 15 epochs of blocks" in message for message in fit.state.messages)


def _crossed_binary(seed: int = 0) -> pd.DataFrame:
    """4,000 binary rows, three crossed factors of 40/20/10 levels (100-400 rows per level: EM's rate
    well below QUICK_RATE)."""
    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, q, 4000) for q in (40, 20, 10)]
    eta = sum(rng.normal(0, np.sqrt(v), q)[c] for c, q, v in zip(codes, (40, 20, 10), (0.5, 0.3, 0.2)))
    return pd.DataFrame({"y": (rng.random(4000) < 1 / (1 + np.exp(-eta))).astype(int), **{f"g{l}": c for l, c in enumerate(codes)}})


def test_where_em_is_fast_the_first_look_ends_the_fit():
    """A block at the fixed point whose errors are within their allowance at 10 epochs ends there
    (EM's rate below QUICK_RATE); the estimates land near the truth."""
    fit = gf.gmenn("y ~ 1 + (1 | g0) + (1 | g1) + (1 | g2)", _crossed_binary(), family="binomial", verbose=0)
    assert (fit.history["phase"] == "average").sum() == 10
    np.testing.assert_allclose(fit.varcorr()["variance"], (0.5, 0.3, 0.2), atol=0.2)
