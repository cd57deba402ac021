"""M-step pieces: the per-epoch draw offsets of the loss, parameter-expanded EM, the draw store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gmenn_formula as gf
from gmenn_formula.errors import ControlError
from gmenn_formula.families import get_family
from gmenn_formula.mstep.networks import FixedPart, mlp
from gmenn_formula.mstep.step import (
    MAX_EXPANSION_STEP,
    DrawOffsets,
    Rows,
    expand_effects,
    expansion_maps,
    expand_second_moments,
    expected_nll,
    random_part,
    train_epoch,
)
from gmenn_formula.mstep.moments import level_second_moments, softmax_level_moments
from gmenn_formula.simulation import paper_scenario
from gmenn_formula.training.fit import fit_design
from gmenn_formula.training.problem import EMProblem
from gmenn_formula.training.variance import make_estep, predict_fixed, sampler_config, variance_update


def _rows(n: int = 60, c: int = 3, seed: int = 0) -> tuple[Rows, tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    codes = (torch.randint(0, 5, (n,), generator=g), torch.randint(0, 4, (n,), generator=g))
    Z = (torch.ones(n, 1), torch.randn(n, 2, generator=g))
    rows = Rows((torch.randn(n, 4, generator=g),), torch.zeros(n, 0), torch.zeros(n), torch.randint(0, c, (n,), generator=g), torch.ones(n), codes, Z)
    effects = (torch.randn(3, 5, 1, c, generator=g), torch.randn(3, 4, 2, c, generator=g))
    return rows, effects


def test_draw_offsets_hold_the_random_part_of_each_draw_and_the_penalty_row():
    rows, effects = _rows()
    offsets = DrawOffsets.from_draws(effects, rows, penalty=0.5)
    assert offsets.values.shape == (60, 4, 3)
    torch.testing.assert_close(offsets.values[:, :3].permute(1, 0, 2), random_part(effects, rows))
    assert torch.all(offsets.values[:, 3] == 0)
    torch.testing.assert_close(offsets.weights, torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.5]))
    assert len(DrawOffsets.from_draws(effects, rows, penalty=0.0).weights) == 3


def test_one_batch_epoch_reports_the_papers_loss_before_its_step():
    rows, effects = _rows()
    family = get_family("categorical")
    torch.manual_seed(0)
    model = FixedPart([mlp(4, 3, (8,), 0.0, "relu")], 0, 3)
    eta = model(list(rows.X_networks), rows.X_fixed, rows.offset).detach()
    expected = expected_nll(family, eta, random_part(effects, rows), rows, 1.0) + expected_nll(family, eta, 0.0, rows, 1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    offsets = DrawOffsets.from_draws(effects, rows, penalty=1.0)
    loss = train_epoch(model, optimizer, family, rows, offsets, 1.0, 1000, torch.Generator().manual_seed(0))
    assert loss == pytest.approx(float(expected) / len(rows), rel=1e-5)
    after = model(list(rows.X_networks), rows.X_fixed, rows.offset).detach()
    assert not torch.allclose(after, eta)


def test_expanded_draws_and_expanded_second_moments_agree():
    _, effects = _rows()
    g = torch.Generator().manual_seed(1)
    maps = (torch.randn(1, 1, 3, generator=g), torch.randn(2, 2, 3, generator=g))
    for B, S_expanded, A in zip(effects, expand_second_moments([level_second_moments(B).mean(0) for B in effects], maps), maps):
        torch.testing.assert_close(level_second_moments(expand_effects((B,), (A,))[0]).mean(0), S_expanded, rtol=1e-4, atol=1e-5)


def test_parameter_expansion_reaches_a_boundary_variance_in_few_epochs():
    """Truth 1e-4 for g0: plain MCEM shrinks it geometrically (900 epochs at 20,000 rows) and is
    still far from 0 when its steps fall below the Monte Carlo noise; the expanded M-step settles
    within a few windows and reads it near 0."""
    sim = paper_scenario(rows=6000, features=2, family="gaussian", nonlinear=False, levels=(300, 300), variances=(1e-4, 0.5), seed=3)
    design = gf.design(sim.formula, sim.data, family="gaussian")
    expanded = fit_design(design, gf.FitConfig.from_control(verbose=0, epochs=150, max_average_epochs=40, closed_form=False))
    plain = fit_design(design, gf.FitConfig.from_control(verbose=0, epochs=150, max_average_epochs=40, parameter_expansion=False, closed_form=False))
    em_epochs = [sum(h.phase == "em" for h in fit.history) for fit in (expanded, plain)]
    print("EM epochs with and without expansion:", em_epochs, "g0 variances:", expanded.covariances[0], plain.covariances[0])
    assert em_epochs[0] < 60
    assert expanded.covariances[0][0, 0, 0] < 0.005 and plain.covariances[0][0, 0, 0] > 3 * expanded.covariances[0][0, 0, 0]
    assert abs(expanded.covariances[1][0, 0, 0] - sim.effects[1].var()) < 0.1


def test_parameter_expansion_keeps_a_crossed_gaussian_glmm_at_its_fixed_point():
    """Exact draws at the ML estimate (the closed form's) of three crossed factors (10 rows per
    level): the expanded M-step returns it, as the plain one does. Its working parameters come from
    the draws; from the last term's conditional means (shrunk toward 0) they read ~1.5 and sent
    that term's .2 to ~.43."""
    sim = paper_scenario(rows=10_000, features=2, family="gaussian", nonlinear=False, levels=(1000,) * 3, variances=(0.5, 0.3, 0.2),
                         rows_per_level=10, intercept=0.5, seed=0)
    ml = gf.gmenn(sim.formula, sim.data, verbose=0)
    assert ml.state.closed_form
    problem = EMProblem.from_design(gf.design(sim.formula, sim.data, family="gaussian"), torch.device("cpu"))
    config = gf.FitConfig.from_control()
    estep = make_estep(problem, config, sampler_config(problem, config, 4, variances=True), np.ones(problem.num_rows))
    covariances, dispersion, F = [np.array(S) for S in ml.state.covariances], float(ml.state.dispersion), predict_fixed(ml.state.model, problem.rows)
    estep.draw(F.numpy(), covariances, dispersion, 8, 0)  # the chain from 0 to the posterior
    updates = []
    for _ in range(6):
        draws = estep.draw(F.numpy(), covariances, dispersion, 4, 0)
        updates.append([[float(S[0, 0, 0]) for S in variance_update(problem, draws, F, problem.rows, covariances, dispersion, expand)[1]] for expand in (False, True)])
    plain, expanded = np.mean(updates, axis=0)
    at = [float(S[0, 0, 0]) for S in covariances]
    print("ML", at, "plain", plain, "expanded", expanded)
    assert plain == pytest.approx(at, rel=0.02)
    assert expanded == pytest.approx(at, rel=0.03)


def test_an_expansion_the_likelihood_hardly_constrains_moves_at_most_its_step():
    """A class never observed (class 2 of 3 is absent from y): its effects hardly change the likelihood,
    so the Newton step on its working parameter is unbounded; no entry of A grows by more than
    MAX_EXPANSION_STEP."""
    rows, effects = _rows(n=60, c=3)
    rows = Rows(rows.X_networks, rows.X_fixed, rows.offset, rows.y.clamp(max=1), rows.trials, rows.codes, rows.Z)
    effects = tuple(B.clone() for B in effects)
    effects[0][..., 2] *= 1e-3  # class 2's effects of the first term: almost no say in the likelihood
    maps = expansion_maps(get_family("categorical"), torch.zeros(60, 3), effects, rows, 1.0)
    for A in maps:
        identity = torch.eye(A.shape[0])[..., None].expand_as(A)
        assert float((A - identity).max()) <= MAX_EXPANSION_STEP + 1e-6


def test_burn_in_must_leave_a_kept_training_draw():
    with pytest.raises(ControlError, match="burn_in"):
        gf.FitConfig.from_control(training_draws=2, burn_in=2)
    assert np.isclose(gf.FitConfig().estep.training_draws, 2)


def test_stored_draws_are_thinned_evenly_across_the_whole_phase():
    from gmenn_formula.training.variance import EffectMoments

    moments = EffectMoments([(1, 1, 1)], max_draws=8)
    for epoch in range(20):
        moments.add((np.arange(3 * epoch, 3 * epoch + 3, dtype=float).reshape(3, 1, 1, 1),))
    kept = [float(d.ravel()[0]) for d in moments.draws()[0]]
    assert kept == [0.0, 16.0, 32.0, 48.0]
    assert float(moments.mean()[0].ravel()[0]) == np.arange(60).mean()


def _per_class_covariances(c: int = 3) -> torch.Tensor:
    """(c, 2, 2) covariances, one per class."""
    L = torch.tensor([[[1.0, 0.0], [0.3, 0.5]], [[0.7, 0.0], [-0.2, 0.9]], [[0.4, 0.0], [0.1, 0.2]]])[:c]
    return L @ L.transpose(1, 2)


def test_softmax_second_moments_ignore_the_draws_common_shift():
    """A shift of a level's coefficient by the same amount in every class leaves the softmax, and the
    Rao-Blackwellised moments, unchanged; the draws' plain second moments move."""
    g = torch.Generator().manual_seed(2)
    Sigma = _per_class_covariances()
    B = torch.randn(4, 30, 2, 3, generator=g, dtype=torch.float64)
    shifted = B + 5 * torch.randn(4, 30, 2, 1, generator=g, dtype=torch.float64)
    before, after = softmax_level_moments(B, Sigma).mean(0), softmax_level_moments(shifted, Sigma).mean(0)
    torch.testing.assert_close(before, after)
    assert not torch.allclose(level_second_moments(B).mean(0).double(), level_second_moments(shifted).mean(0).double())


def test_softmax_second_moments_are_unbiased_with_less_noise():
    """Draws from the prior (no data: the likelihood is flat, shift invariance holds): both
    estimators average to Sigma, the Rao-Blackwellised one with a smaller spread."""
    g = torch.Generator().manual_seed(3)
    Sigma = _per_class_covariances()
    L = torch.linalg.cholesky(Sigma)
    plain, blackwellised = [], []
    for _ in range(400):
        B = torch.einsum("cij,mqjc->mqic", L, torch.randn(2, 20, 2, 3, generator=g))
        plain.append(level_second_moments(B).mean(0).double())
        blackwellised.append(softmax_level_moments(B, Sigma).mean(0))
    plain, blackwellised = torch.stack(plain), torch.stack(blackwellised)
    torch.testing.assert_close(blackwellised.mean(0), Sigma.double(), atol=0.03, rtol=0.05)
    torch.testing.assert_close(plain.mean(0), Sigma.double(), atol=0.03, rtol=0.05)
    assert (blackwellised.var(0) < plain.var(0)).all()
