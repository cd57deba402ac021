"""The one-line convergence status (``fit.status`` and the summary's "Status:" line)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from support.sleepstudy_like import sleepstudy_like

import gmenn_formula as gf
from gmenn_formula.results.status import SINGULAR_TOLERANCE, near_zero_terms


@pytest.fixture(scope="module")
def fit():
    return gf.gmenn("Reaction ~ Days + (Days | Subject)", sleepstudy_like(), verbose=0)


def _with(fit: gf.GmennResult, **changes) -> gf.GmennResult:
    return gf.GmennResult(fit.design, dataclasses.replace(fit.state, **changes))


def test_a_converged_fit_says_so_in_one_line(fit):
    assert fit.status == f"converged in {fit.state.epochs} epochs"
    assert f"Status: converged in {fit.state.epochs} epochs" in str(fit.summary())


def test_interrupted_and_not_converged_fits_say_why(fit):
    assert _with(fit, interrupted=True, converged=False).status.startswith(f"interrupted after epoch {fit.state.epochs}")
    stopped = _with(fit, converged=False, messages=["Monte Carlo error of x is above 2%; see varcorr()"])
    assert stopped.status == "not converged: Monte Carlo error of x is above 2%"
    assert "Status: not converged" in str(stopped.summary()) and "Convergence warnings:" in str(stopped.summary())


def test_a_variance_at_zero_is_a_boundary_fit_as_lme4_isSingular(fit):
    covariances = [S.copy() for S in fit.state.covariances]
    covariances[0][0, 1, 1] = covariances[0][0, 0, 1] = covariances[0][0, 1, 0] = 0.0  # the Days slope
    boundary = _with(fit, covariances=covariances)
    assert near_zero_terms(boundary.design, boundary.state) == ["Subject Days"]
    assert boundary.status == "boundary (singular): variance of Subject Days near 0"
    # a slope perfectly correlated with the intercept is singular too (its Cholesky pivot is 0)
    S = covariances[0][0]
    S[1, 1], S[0, 1], S[1, 0] = 4.0, 2.0 * np.sqrt(S[0, 0]), 2.0 * np.sqrt(S[0, 0])
    assert near_zero_terms(boundary.design, boundary.state) == ["Subject Days"]


def test_gaussian_variances_are_judged_relative_to_the_residual(fit):
    small = [S * 0 + np.eye(2) * (0.5 * SINGULAR_TOLERANCE) ** 2 * fit.state.dispersion for S in fit.state.covariances]
    assert len(near_zero_terms(fit.design, dataclasses.replace(fit.state, covariances=small))) == 2
    tiny_residual = dataclasses.replace(fit.state, covariances=small, dispersion=fit.state.dispersion * 1e-6)
    assert near_zero_terms(fit.design, tiny_residual) == []


def test_a_group_without_variance_gives_a_boundary_fit():
    """No group variance in the simulation: this sample's ML variance is 0 (as lme4's would be)."""
    rng = np.random.default_rng(3)
    data = pd.DataFrame({"y": rng.normal(size=200), "x": rng.normal(size=200), "g": np.repeat(np.arange(20), 10).astype(str)})
    fit = gf.gmenn("y ~ x + (1 | g)", data, verbose=0)
    assert fit.status == "boundary (singular): variance of g (Intercept) near 0"
    assert "Status: boundary (singular)" in str(fit.summary())
