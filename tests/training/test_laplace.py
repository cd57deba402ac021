"""The Laplace start of plain non-gaussian GLMMs: near the truth on simulated data, the covariance
structure kept, and a fit from it reaches what EM run until it settles reaches (the exact ML)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import gmenn_formula as gf
from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.mstep.step import newton_fixed_effects
from gmenn_formula.training.laplace import MAX_EFFECT_SIZE, laplace_applies, laplace_start
from gmenn_formula.training.problem import EMProblem

CBPP_EXACT_ML = 0.4193
"""cbpp's herd variance at the exact maximum likelihood (adaptive Gauss-Hermite quadrature, tests/support)."""


def _problem(formula: str, data: pd.DataFrame, family: str) -> tuple[EMProblem, FixedPart]:
    design = gf.design(formula, data, family=family)
    problem = EMProblem.from_design(design, torch.device("cpu"))
    model = FixedPart([], len(problem.fixed_names), problem.num_outputs, [])
    no_effects = tuple(torch.zeros((1, *shape)) for shape in problem.shapes)
    newton_fixed_effects(model, problem.family, problem.rows, no_effects, 1.0, steps=25)
    return problem, model


def _simulated_poisson(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n, x = 4000, rng.normal(size=4000)
    g, h = rng.integers(0, 80, n), rng.integers(0, 40, n)
    slope = rng.multivariate_normal([0, 0], [[0.4, -0.12], [-0.12, 0.1]], 80)
    eta = 0.3 + 0.5 * x + slope[g, 0] + slope[g, 1] * x + rng.normal(0, np.sqrt(0.25), 40)[h]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)), "x": x, "g": g, "h": h})


def test_the_laplace_start_lands_near_the_truth_and_keeps_the_covariance_structure():
    problem, model = _problem("y ~ x + (x | g) + (1 | h)", _simulated_poisson(), "poisson")
    start = [np.tile(np.eye(p) * 0.1, (c, 1, 1)) for _, p, c in problem.shapes]
    slope, intercept = laplace_start(problem, model, start).covariances
    np.testing.assert_allclose(slope[0], [[0.4, -0.12], [-0.12, 0.1]], atol=0.1)
    assert intercept[0, 0, 0] == pytest.approx(0.25, rel=0.4)
    assert model.beta.detach().numpy().ravel() == pytest.approx([0.3, 0.5], abs=0.15)
    problem, model = _problem("y ~ x + (x || g)", _simulated_poisson(), "poisson")
    (diagonal,) = laplace_start(problem, model, [np.tile(np.eye(2) * 0.1, (1, 1, 1))]).covariances
    assert diagonal[0, 0, 1] == 0.0 and diagonal[0, 0, 0] > 0.2


def test_it_applies_to_non_gaussian_models_with_small_levels():
    data = _simulated_poisson()
    assert laplace_applies(_problem("y ~ x + (1 | g)", data, "poisson")[0])
    assert not laplace_applies(_problem("y ~ x + (1 | g)", data.assign(y=data.y + 0.5), "gaussian")[0])
    many = pd.DataFrame({"y": np.arange(600) % (MAX_EFFECT_SIZE + 1), "g": np.arange(600) % 7})
    assert not laplace_applies(_problem("y ~ 1 + (1 | g)", many, "categorical")[0])


@pytest.mark.parametrize("laplace", [True, False])
def test_a_fit_from_the_laplace_start_reaches_the_exact_ml_as_em_from_lme4s_start_does(cbpp, laplace):
    fit = gf.gmenn("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, verbose=0, laplace_start=laplace)
    history = fit.history
    assert (history["phase"] == "em").sum() == (3 if laplace else max(20, (history["phase"] == "em").sum()))
    vc = fit.varcorr()
    assert vc["variance"].iloc[0] == pytest.approx(CBPP_EXACT_ML, abs=4 * vc["mcse"].iloc[0])


def _crossed_binary(rows: int, levels: tuple[int, int], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g, h = rng.integers(0, levels[0], rows), rng.integers(0, levels[1], rows)
    eta = rng.normal(0, 0.7, levels[0])[g] + rng.normal(0, 0.5, levels[1])[h]
    return pd.DataFrame({"y": (rng.random(rows) < 1 / (1 + np.exp(-eta))).astype(int), "g": g, "h": h})


def test_the_prior_share_says_how_little_the_data_determine_the_levels():
    """Poisson levels of 50-100 rows: the data give most of each level's precision; binary levels of
    ~4 rows: the prior does."""
    problem, model = _problem("y ~ x + (x | g) + (1 | h)", _simulated_poisson(), "poisson")
    assert laplace_start(problem, model, [np.tile(np.eye(p) * 0.1, (c, 1, 1)) for _, p, c in problem.shapes]).prior_share < 0.2
    problem, model = _problem("y ~ 1 + (1 | g) + (1 | h)", _crossed_binary(2000, (500, 400)), "binomial")
    assert laplace_start(problem, model, [np.full((1, 1, 1), 0.1)] * 2).prior_share > 0.5


def test_crossed_levels_the_data_hardly_determine_run_em_until_it_settles_after_the_laplace_start():
    """Where the blocks' Jacobian (which leaves out the coupling of crossed levels) would fall short,
    EM settles first (at least two windows of EM epochs); where the data determine every level, the
    Laplace start is followed by the short EM of ``final_epochs``."""
    config = {"verbose": 0, "seed": 0, "family": "binomial"}
    small = gf.gmenn("y ~ 1 + (1 | g) + (1 | h)", _crossed_binary(2000, (500, 400)), **config)
    large = gf.gmenn("y ~ 1 + (1 | g) + (1 | h)", _crossed_binary(4000, (20, 10)), **config)
    assert _em_epochs(small) >= 2 * gf.FitConfig().convergence.window
    assert _em_epochs(large) == gf.FitConfig().convergence.final_epochs


def _em_epochs(fit) -> int:
    return int((fit.history["phase"] == "em").sum())


def test_a_laplace_start_given_stop_share_ends_after_the_first_iteration_whose_share_exceeds_it(monkeypatch):
    """Binary levels of ~4 rows (prior share above .5 at once): with ``stop_share`` the start is its
    first iteration; without, it iterates on (to other variances)."""
    import gmenn_formula.training.laplace as laplace

    data = _crossed_binary(2000, (500, 400))
    start = [np.full((1, 1, 1), 0.25)] * 2
    problem, model = _problem("y ~ 1 + (1 | g) + (1 | h)", data, "binomial")
    stopped = laplace_start(problem, model, start, stop_share=0.5)
    problem, model = _problem("y ~ 1 + (1 | g) + (1 | h)", data, "binomial")
    iterated = laplace_start(problem, model, start)
    monkeypatch.setattr(laplace, "MAX_ITERATIONS", 1)
    problem, model = _problem("y ~ 1 + (1 | g) + (1 | h)", data, "binomial")
    first = laplace_start(problem, model, start)
    assert stopped.prior_share > 0.5
    for S, S1, S_iterated in zip(stopped.covariances, first.covariances, iterated.covariances):
        np.testing.assert_allclose(S, S1)
        assert abs(S_iterated[0, 0, 0] - S[0, 0, 0]) > 0.05


def test_a_fit_stops_the_laplace_start_early_only_for_crossed_designs(monkeypatch, cbpp):
    """Crossed terms get ``stop_share`` (LAPLACE_STOP_SHARE), terms nested in one factor (cbpp's one
    factor) iterate to convergence, since their short EM starts from Laplace's answer."""
    import gmenn_formula.training.glmm as glmm

    seen = []

    def spy(*args, stop_share=None):
        seen.append(stop_share)
        return laplace_start(*args, stop_share=stop_share)

    monkeypatch.setattr(glmm, "laplace_start", spy)
    gf.gmenn("y ~ 1 + (1 | g) + (1 | h)", _crossed_binary(2000, (500, 400)), family="binomial", verbose=0, seed=0, epochs=2)
    gf.gmenn("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, verbose=0, epochs=2)
    assert seen == [glmm.LAPLACE_STOP_SHARE, None]
