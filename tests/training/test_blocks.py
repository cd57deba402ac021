"""The Newton blocks of the variance phases: damping, and pooling two blocks' estimates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmenn_formula.training.averaging import stationary_se
from gmenn_formula.training.newton import ParameterLayout, shrunk_covariance
from gmenn_formula.training.phases import BlockRecord, Estimate, damped_step
from gmenn_formula.training.variance import EffectMoments


def _layout(components: int) -> ParameterLayout:
    """One random intercept with ``components`` classes (each its own variance) and 100 levels."""
    return ParameterLayout(entries=(((0, 0),),), num_outputs=components, num_levels=(100,), dispersion=False, num_rows=1000, num_fixed=0)


def _ar1(rho: float, length: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(length)
    out[0] = rng.standard_normal()
    for t in range(1, length):
        out[t] = rho * out[t - 1] + rng.standard_normal() * np.sqrt(1 - rho**2)
    return out


def _record(values: np.ndarray) -> BlockRecord:
    """A block whose epochs estimate ``values`` (t,) of one parameter."""
    return BlockRecord(Estimate(np.array([values.mean()]), stationary_se(values[:, None])), len(values), EffectMoments([(1, 1, 1)]))


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


def test_pooled_blocks_weigh_by_epochs_and_report_the_spread_of_the_pooled_estimate():
    """Two blocks of autocorrelated epochs (20 then 10, rho .6) around one fixed point: the pooled
    estimate is their epoch-weighted mean, and its reported error matches its spread over 400
    repetitions within 30% while being below either block's."""
    rng = np.random.default_rng(5)
    pooled = [_record(0.5 + 0.02 * _ar1(0.6, 20, rng)).pooled(_record(0.5 + 0.02 * _ar1(0.6, 10, rng))) for _ in range(400)]
    first, second = _record(np.full(20, 1.0)), _record(np.full(10, 4.0))
    assert first.pooled(second).estimate.theta[0] == pytest.approx(2.0) and first.pooled(second).epochs == 30
    estimates = np.array([p.estimate.theta[0] for p in pooled])
    reported = np.mean([p.estimate.se[0] for p in pooled])
    assert reported == pytest.approx(estimates.std(), rel=0.3)
    assert reported < 0.02 * np.sqrt(1.6 / 0.4 / 20)  # one 20-epoch block's error of the mean: 0.02 sqrt((1 + rho) / (1 - rho) / 20)


def test_merged_moments_hold_both_phases_draws_in_order_within_the_store():
    first, second = EffectMoments([(1, 1, 1)], max_draws=8), EffectMoments([(1, 1, 1)], max_draws=8)
    values = np.arange(30, dtype=float)
    for epoch in range(5):
        first.add((values[3 * epoch : 3 * epoch + 3].reshape(3, 1, 1, 1),), epoch)
    for epoch in range(5, 10):
        second.add((values[3 * epoch : 3 * epoch + 3].reshape(3, 1, 1, 1),), epoch)
    both = first.merged(second)
    assert both.count == 30
    assert float(both.mean()[0].ravel()[0]) == pytest.approx(values.mean())
    assert float(both.sd()[0].ravel()[0]) == pytest.approx(values.std())
    kept = [float(d.ravel()[0]) for d in both.draws()[0]]
    assert 2 <= len(kept) < 8 and kept == sorted(kept) and kept[0] < 15 <= kept[-1]
    assert len(both.stored_epochs) == len(kept) and both.stored_epochs == sorted(both.stored_epochs)


def test_blocks_pool_only_when_their_estimates_agree_within_their_joint_error():
    """A later block's estimate 1 joint error away pools; one 5 errors away (a step below the
    significance floor but real) does not."""
    moments = EffectMoments([(1, 1, 1)])
    first = BlockRecord(Estimate(np.array([0.459, 0.30]), np.array([0.004, 0.01])), 10, moments)
    near = BlockRecord(Estimate(np.array([0.459 + 0.005, 0.30]), np.array([0.003, 0.01])), 10, moments)
    far = BlockRecord(Estimate(np.array([0.489, 0.30]), np.array([0.005, 0.01])), 10, moments)
    assert first.agrees(near)
    assert not first.agrees(far)


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
    """EM stopped after 2 epochs, far from its fixed point: Newton steps follow block after block
    (40 block epochs without the cap); all together they stop at max_average_epochs, with a message."""
    import gmenn_formula as gf
    from gmenn_formula.simulation import paper_scenario

    sim = paper_scenario(rows=1500, features=1, levels=(40, 30), variances=(0.5, 0.3), family="binomial", nonlinear=False, seed=2)
    fit = gf.gmenn(sim.formula, sim.data, family="binomial", verbose=0, laplace_start=False, epochs=2, parameter_expansion=False,
                   average_epochs=10, max_average_epochs=25)
    assert (fit.history["phase"] == "average").sum() == 25
    assert any("after 25 epochs of blocks" in message for message in fit.state.messages)
