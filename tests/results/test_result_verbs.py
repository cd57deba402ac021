"""Every verb of GmennResult on every family, GLMM and nn: tables, prediction with new levels, simulate, export, plots."""

from __future__ import annotations

import warnings

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from results_fixtures import FAMILIES, KINDS, new_rows, tiny_data

from gmenn_formula.errors import DataError, NewLevelError, NewLevelWarning

CASES = [(family, kind) for family in FAMILIES for kind in KINDS]


@pytest.fixture(params=CASES, ids=[f"{f}-{k}" for f, k in CASES])
def case(request, tiny_fit):
    family, kind = request.param
    return family, kind, tiny_fit(family, kind)


# -- tables -------------------------------------------------------------------------------------
def test_tables(case) -> None:
    family, kind, result = case
    classes = 3 if family == "categorical" else 1
    varcorr = result.varcorr()
    variances = varcorr[varcorr["term2"].isna() & (varcorr["group"] != "Residual")]
    assert len(variances) == classes * (3 if kind == "glmm" else 2)  # (1 + x2 | g0) + (1 | g1) or (1|g0) + (1|g1)
    assert (variances["variance"] >= 0).all() and np.allclose(variances["std"] ** 2, variances["variance"])
    assert ("Residual" in set(varcorr["group"])) == (family == "gaussian")
    fixef = result.fixef()
    assert len(fixef) == (3 * classes if kind == "glmm" else 0)
    ranef = result.ranef()
    assert list(ranef) == ["g0", "g1"] and {"mean", "sd"} <= set(ranef["g0"].columns)
    assert len(ranef["g0"]) == 12 * (2 if kind == "glmm" else 1) * classes and (ranef["g0"]["sd"] > 0).all()
    assert "sd" not in result.ranef(cond_var=False)["g1"]
    assert result.ngrps().to_dict() == {"g0": 12, "g1": 4} and result.nobs == 300
    history = result.history
    assert history["epoch"].is_monotonic_increasing and any(c.startswith("var[g0:") for c in history)


def test_coef_adds_fixed_effect_to_random_effect(tiny_fit) -> None:
    result = tiny_fit("gaussian", "glmm")
    coef = result.coef()["g0"]
    ranef = result.ranef(cond_var=False)["g0"]
    slope = result.fixef().set_index("term").loc["x2", "estimate"] if "x2" in set(result.fixef()["term"]) else 0.0
    intercept = result.fixef().set_index("term").loc["(Intercept)", "estimate"]
    expected = ranef["mean"] + np.where(ranef["term"] == "(Intercept)", intercept, slope)
    np.testing.assert_allclose(coef["estimate"], expected)


# -- prediction -----------------------------------------------------------------------------------
def test_predict_new_levels_at_population_level(case) -> None:
    family, _, result = case
    new = new_rows(tiny_data(family))
    with pytest.warns(NewLevelWarning, match="g0: 5 row"):
        full = np.asarray(result.predict(new))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NewLevelWarning)  # re_form="~0" uses no random effect: nothing to warn about
        population = np.asarray(result.predict(new, re_form="~0"))
        assert np.asarray(result.predict(new, re_form="~0", allow_new_levels=False)).shape == population.shape
    np.testing.assert_allclose(full[:5], population[:5])  # unseen levels: effect 0
    assert not np.allclose(full[5:], population[5:])  # seen levels carry their effects
    assert full.shape[0] == 20
    with pytest.raises(NewLevelError, match="unseen_g0"):
        result.predict(new, allow_new_levels=False)


def test_predict_types(case) -> None:
    family, _, result = case
    data = tiny_data(family).iloc[:10]
    link, response = result.predict(data, type="link"), result.predict(data, type="response")
    if family == "categorical":
        assert list(response.columns) == [0, 1, 2] and np.allclose(response.sum(axis=1), 1.0)
        assert set(result.predict(data, type="class")) <= {0, 1, 2}
    else:
        np.testing.assert_allclose(response, result.family.mean(np.asarray(link)[:, None]))
    if family == "binomial":
        assert set(result.predict(data, type="class")) <= {0, 1}
    if family in ("gaussian", "poisson"):
        with pytest.raises(DataError, match="type='class' needs"):
            result.predict(data, type="class")


def test_fitted_and_residuals(case) -> None:
    family, _, result = case
    assert len(result.fitted()) == 300
    if family == "categorical":
        with pytest.raises(DataError, match="not defined for the categorical"):
            result.residuals()
        return
    pearson, raw = result.residuals(), result.residuals("response")
    assert pearson.shape == raw.shape == (300,) and np.isfinite(pearson).all()
    np.testing.assert_allclose(raw, tiny_data(family)["y"] - result.fitted())


def test_summary_text_and_html(case) -> None:
    family, kind, result = case
    text = str(result.summary())
    assert f"Family: {family}" in text and "Number of obs: 300, groups:  g0, 12; g1, 4" in text
    assert ("Network:" in text) == (kind == "nn") and ("Scaled residuals:" in text) == (family != "categorical")
    assert "<table" in result.summary()._repr_html_()


# -- simulate ------------------------------------------------------------------------------------
def test_simulate_shapes_values_and_seed(case) -> None:
    family, _, result = case
    new = new_rows(tiny_data(family))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NewLevelWarning)
        sims = result.simulate(4, seed=1, newdata=new, re_form=None)
        again = result.simulate(4, seed=1, newdata=new, re_form=None)
        other = result.simulate(4, seed=2, newdata=new)
    assert list(sims.columns) == ["sim_1", "sim_2", "sim_3", "sim_4"] and sims.index.equals(new.index)
    pd.testing.assert_frame_equal(sims, again)
    assert not sims.equals(other)
    values = sims.to_numpy()
    allowed = {"binomial": lambda v: np.isin(v, [0, 1]), "poisson": lambda v: (v >= 0) & (v == np.round(v)), "categorical": lambda v: np.isin(v, [0, 1, 2])}
    assert allowed.get(family, lambda v: np.isfinite(v.astype(float)))(values).all()
    assert result.simulate(2, seed=0).shape == (300, 2)
    with pytest.raises(DataError, match="re_form must be"):
        result.simulate(re_form="~ (1 | g0)")


def _handmade_sims(glmm_result, re_form, rows: int = 4000) -> pd.DataFrame:
    data = pd.DataFrame({"days": [0.0, 1.0, 0.0, 0.0, 1.0], "subject": ["s1", "s1", "s2", "new", "new"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NewLevelWarning)
        return glmm_result.simulate(rows, seed=0, newdata=data, re_form=re_form)


def test_unconditional_simulation_draws_new_effects_shared_within_a_level(glmm_result) -> None:
    sims = _handmade_sims(glmm_result, "~0").to_numpy()  # rows x sims
    covariance = np.cov(sims)
    # Sigma = [[600, 12], [12, 35]], residual 650: var(day 0) = 600 + 650, cov(s1 day 0, s1 day 1) = 600 + 12
    assert covariance[0, 0] == pytest.approx(1250, rel=0.1) and covariance[1, 1] == pytest.approx(600 + 24 + 35 + 650, rel=0.1)
    assert covariance[0, 1] == pytest.approx(612, rel=0.15) and abs(covariance[0, 2]) < 80
    assert sims[0].mean() == pytest.approx(250, abs=3)


def test_conditional_simulation_keeps_fitted_effects_and_draws_new_levels(glmm_result) -> None:
    sims = _handmade_sims(glmm_result, None).to_numpy()
    expected = glmm_result.predict(pd.DataFrame({"days": [0.0, 1.0, 0.0], "subject": ["s1", "s1", "s2"]}))
    np.testing.assert_allclose(sims[:3].mean(axis=1), expected, atol=3)
    covariance = np.cov(sims)
    assert covariance[0, 0] == pytest.approx(650, rel=0.1) and abs(covariance[0, 1]) < 80  # residual only
    assert covariance[3, 3] == pytest.approx(1250, rel=0.1) and covariance[3, 4] == pytest.approx(612, rel=0.15)


def test_categorical_simulation_follows_predicted_probabilities(categorical_result) -> None:
    sims = categorical_result.simulate(4000, seed=0, re_form=None)
    frequencies = sims.iloc[:3].apply(lambda row: row.value_counts(normalize=True), axis=1).fillna(0.0)
    probabilities = categorical_result.predict().iloc[:3]
    np.testing.assert_allclose(frequencies[probabilities.columns], probabilities, atol=0.03)


# -- export and plots --------------------------------------------------------------------------
def test_inference_data_works_with_arviz(case) -> None:
    family, kind, result = case
    idata = result.to_inference_data()
    draws = result.state.draws[0].shape[0]
    expected = ("chain", "draw", "g0_level", "g0_term") + (("class",) if family == "categorical" else ())
    assert idata.posterior["g0"].dims == expected and idata.posterior.sizes["draw"] == draws
    assert list(idata.posterior["g1_level"].values) == [f"g1_{i}" for i in range(4)]
    posterior_mean = idata.posterior["g0"].mean(("chain", "draw")).values.reshape(result.state.effect_mean[0].shape)
    if result.state.closed_form:  # the reported means are exact; the draws scatter around them
        tolerance = 5 * result.state.effect_sd[0] / np.sqrt(draws) + 1e-6
        assert np.all(np.abs(posterior_mean - result.state.effect_mean[0]) <= tolerance)
    else:
        np.testing.assert_allclose(posterior_mean, result.state.effect_mean[0], atol=1e-5)
    assert set(idata.sample_stats.data_vars) == {"acceptance_rate", "step_size", "n_steps", "epoch_divergences", "epoch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(az.summary(idata, var_names=["g1"])) == 4 * (3 if family == "categorical" else 1)
        axes = az.plot_forest(idata, var_names=["g1"])
    assert len(axes) >= 1
    plt.close("all")


def test_inference_data_sample_stats_come_from_the_averaged_epochs(glmm_result, categorical_result) -> None:
    assert glmm_result.to_inference_data().sample_stats["epoch"].values.tolist() == [[3, 3, 3, 4, 4, 4]]
    idata = categorical_result.to_inference_data()
    assert idata.sample_stats["epoch"].values.tolist() == [[5, 5, 5, 6, 6, 6]]
    assert idata.posterior["h"].dims == ("chain", "draw", "h_level", "h_term", "class")
    assert list(idata.posterior["class"].values) == ["hi", "lo", "mid"]


def test_plots_return_axes(case) -> None:
    family, kind, result = case
    classes = 3 if family == "categorical" else 1
    axes = result.plot_ranef()
    assert axes.shape == ((3 if kind == "glmm" else 2), classes)
    assert len(axes[0, 0].lines) + len(axes[0, 0].collections) > 0
    assert result.plot_ranef(group="g1").shape == (1, classes)
    history = result.plot_history()
    assert {line.get_label() for line in history.lines} >= {"training"}
    variances = result.plot_variances()
    assert len([l for l in variances.lines if l.get_label().startswith("g")]) == classes * (3 if kind == "glmm" else 2)
    with pytest.raises(DataError, match="No grouping factor 'nope'"):
        result.plot_ranef(group="nope")
    plt.close("all")


def test_caterpillar_is_sorted_with_196_sd_intervals(glmm_result) -> None:
    axes = glmm_result.plot_ranef()
    ranef = glmm_result.ranef()["subject"]
    intercepts = ranef[ranef["term"] == "(Intercept)"].sort_values("mean")
    bars = axes[0, 0].containers[0]
    x, _ = bars.lines[0].get_data()
    np.testing.assert_allclose(x, intercepts["mean"])
    segments = bars.lines[2][0].get_segments()
    np.testing.assert_allclose([s[1][0] - s[0][0] for s in segments], 2 * 1.96 * intercepts["sd"])
    assert [t.get_text() for t in axes[0, 0].get_yticklabels()] == list(intercepts["level"])
    plt.close("all")
