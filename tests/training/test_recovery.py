"""Recovery: simulate with known variance components, fit, land near the truth.

One test per family, GLMMs with a linear fixed part (so only the engine is
judged), and one test that a network beats the linear fixed part on data
with a nonlinear one. Recovery fits take minutes on 2 cores: ``make test-slow``.
"""

from __future__ import annotations

import numpy as np
import pytest

import gmenn_formula as gf
from gmenn_formula.simulation import paper_scenario


def variance_errors(fit, truth: np.ndarray) -> np.ndarray:
    table = fit.varcorr()
    estimates = table[(table["group"] != "Residual") & table["term2"].isna()]["variance"].to_numpy()
    return np.abs(estimates - truth.ravel())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "levels", "variances", "rows"),
    [
        ("gaussian", (800, 300), (0.5, 0.3), 12_000),
        ("binomial", (800, 300), (0.5, 0.3), 20_000),
        ("poisson", (800, 300), (0.5, 0.3), 12_000),
    ],
)
def test_glmm_recovers_variances(family, levels, variances, rows):
    sim = paper_scenario(rows=rows, features=3, levels=levels, variances=variances, family=family, nonlinear=False, seed=11)
    fit = gf.gmenn(sim.formula, sim.data, family=family, verbose=0)
    errors = variance_errors(fit, sim.variances)
    print(family, "variance errors", errors)
    assert errors.max() < 0.1
    if family == "gaussian":
        assert fit.state.dispersion == pytest.approx(1.0, rel=0.05)


@pytest.mark.slow
def test_categorical_three_crossed_factors_per_class_variances():
    """Three crossed factors of ~1,000 levels; the middle one has per-class variances."""
    sim = paper_scenario(
        rows=30_000,
        features=3,
        classes=3,
        levels=(1000, 800, 1000),
        variances=(0.5, (0.25, 0.5, 0.75), 0.5),
        family="categorical",
        nonlinear=False,
        seed=5,
    )
    fit = gf.gmenn(sim.formula, sim.data, family="categorical", verbose=0)
    errors = variance_errors(fit, sim.variances)
    print("categorical variance errors", errors, "MAE", errors.mean())
    assert errors.mean() < 0.1
    assert fit.varcorr()["class"].nunique() == 3


@pytest.mark.slow
def test_categorical_with_many_classes_recovers_variances():
    """20 classes (more than the dense whitening takes: the E-step whitens each level by a diagonal
    plus rank one) and two crossed factors; the class variances averaged per factor."""
    sim = paper_scenario(
        rows=6000, features=2, classes=20, levels=(60, 40), variances=(0.6, 0.3), family="categorical",
        nonlinear=False, seed=3, rows_per_level=100,
    )
    fit = gf.gmenn(sim.formula, sim.data, family="categorical", verbose=0)
    table = fit.varcorr()
    means = table[table["term2"].isna()].groupby("group")["variance"].mean()
    print("many classes: mean class variance per factor", means.to_dict())
    np.testing.assert_allclose(means[["g0", "g1"]].to_numpy(), [0.6, 0.3], atol=0.1)


def held_out_nll(fit, test) -> float:
    mean = fit.predict(test)
    sigma2 = fit.state.dispersion
    residual = test["y"].to_numpy() - mean
    return float(np.mean(0.5 * np.log(2 * np.pi * sigma2) + residual**2 / (2 * sigma2)))


def test_network_beats_linear_fixed_part_on_nonlinear_data():
    sim = paper_scenario(rows=5000, features=4, levels=(50,), variances=(0.5,), family="gaussian", noise_variance=0.25, seed=2)
    train, test = sim.data.iloc[:4000], sim.data.iloc[4000:]
    inputs = " + ".join(f"x{j}" for j in range(4))
    control = dict(epochs=40, patience=5, final_epochs=20, average_epochs=10, max_average_epochs=10, verbose=0, seed=1)
    network = gf.gmenn(f"y ~ nn({inputs}, hidden=[32, 16], dropout=0) + (1 | g0)", train, **control)
    linear = gf.gmenn(f"y ~ {inputs} + (1 | g0)", train, verbose=0)
    nll_network, nll_linear = held_out_nll(network, test), held_out_nll(linear, test)
    print("held-out NLL network", nll_network, "linear", nll_linear)
    assert nll_network < nll_linear - 0.05
    assert network.varcorr().iloc[0]["variance"] == pytest.approx(0.5, abs=0.25)
