"""A fit without nn() is a GLMM and must agree with lme4's maximum likelihood fits.

Reference values: ../shared/reference/lme4-public.md (R 4.2, lme4 1.1-31, REML = FALSE).
Tolerances from the engine issue: variances within 10% relative, covariances and
fixed effects within 5%. Measured here (seed 0): every variance within 2%, the
sleepstudy covariance within 2%, fixed effects within 2.5%; sleepstudy's logLik
-875.97 (lme4 -875.97), cbpp's -92.03 (lme4's Laplace -92.0).
"""

from __future__ import annotations

import numpy as np
import pytest

import gmenn_formula as gf


def component(table, group, term, term2=None):
    rows = table[(table["group"] == group) & (table["term"] == term)]
    rows = rows[rows["term2"].isna()] if term2 is None else rows[rows["term2"] == term2]
    assert len(rows) == 1, (group, term, term2)
    return float(rows["variance"].iloc[0])


def estimates(result):
    fixed = result.fixef()
    return dict(zip(fixed["term"], fixed["estimate"]))


def test_sleepstudy_correlated_slopes(sleepstudy):
    fit = gf.gmenn("Reaction ~ Days + (Days | Subject)", sleepstudy, verbose=0)
    vc = fit.varcorr()
    assert component(vc, "Subject", "(Intercept)") == pytest.approx(565.48, rel=0.10)
    assert component(vc, "Subject", "Days") == pytest.approx(32.68, rel=0.10)
    assert component(vc, "Subject", "(Intercept)", "Days") == pytest.approx(11.055, rel=0.05)
    assert component(vc, "Residual", "") == pytest.approx(654.95, rel=0.10)
    beta = estimates(fit)
    assert beta["(Intercept)"] == pytest.approx(251.405, rel=0.05)
    assert beta["Days"] == pytest.approx(10.467, rel=0.05)
    assert fit.state.converged
    loglik = fit.loglik()  # exact (gaussian, one factor); lme4: -875.97, AIC 1763.9
    assert loglik.method == "exact" and loglik == pytest.approx(-875.97, abs=0.5) and loglik.df == 6


def test_sleepstudy_uncorrelated_slopes(sleepstudy):
    fit = gf.gmenn("Reaction ~ Days + (Days || Subject)", sleepstudy, verbose=0)
    vc = fit.varcorr()
    assert component(vc, "Subject", "(Intercept)") == pytest.approx(584.27, rel=0.10)
    assert component(vc, "Subject", "Days") == pytest.approx(33.63, rel=0.10)
    assert component(vc, "Residual", "") == pytest.approx(653.12, rel=0.10)
    assert not (vc["term2"] == "Days").any()  # no covariance for ||


def test_sleepstudy_random_intercept(sleepstudy):
    fit = gf.gmenn("Reaction ~ Days + (1 | Subject)", sleepstudy, verbose=0)
    vc = fit.varcorr()
    assert component(vc, "Subject", "(Intercept)") == pytest.approx(1296.87, rel=0.10)
    assert component(vc, "Residual", "") == pytest.approx(954.53, rel=0.10)
    assert estimates(fit)["Days"] == pytest.approx(10.467, rel=0.05)


def test_cbpp_binomial_with_trials(cbpp):
    fit = gf.gmenn("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, verbose=0)
    vc = fit.varcorr()
    assert component(vc, "herd", "(Intercept)") == pytest.approx(0.4123, rel=0.10)
    beta = estimates(fit)
    expected = {"(Intercept)": -1.398, "period[2]": -0.992, "period[3]": -1.128, "period[4]": -1.580}
    for term, value in expected.items():
        assert beta[term] == pytest.approx(value, rel=0.05), term
    # Per-level importance sampling (tests/results/test_loglik.py checks it against quadrature);
    # lme4's Laplace fit of this model prints logLik -92.0 (its cbpp example; not in the reference file).
    loglik = fit.loglik()
    assert loglik.method == "per-level" and loglik.se < 0.1 and loglik == pytest.approx(-92.0, abs=0.5)


def test_paper_sampler_also_reaches_lme4(sleepstudy):
    """The paper's NUTS (identity mass, step 0.1 halving) is kept as an option and is correct, only slower."""
    fit = gf.gmenn("Reaction ~ Days + (1 | Subject)", sleepstudy, sampler="paper", verbose=0)
    assert component(fit.varcorr(), "Subject", "(Intercept)") == pytest.approx(1296.87, rel=0.10)
    assert np.mean(fit.history["leapfrog_steps"]) > 1
