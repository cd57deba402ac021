"""refit_effects(newdata): effects of new groups from an E-step with everything else frozen:
recovered, better predictions than population level, exact for gaussian, crossed with known
levels, saved and loaded; bad input named."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import gmenn_formula as gf
from gmenn_formula.errors import DataError, DataTypeError, GmennError


def _binary(seed: int = 0, q: int = 80, per: int = 30):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(q), per)
    x = rng.normal(size=g.size)
    b = rng.normal(0, 1.0, q)
    y = (rng.random(g.size) < 1 / (1 + np.exp(-(-0.3 + x + b[g])))).astype(int)
    return pd.DataFrame({"y": y, "x": x, "g": [f"c{i:02d}" for i in g]}), b


@pytest.fixture(scope="module")
def binary():
    data, b = _binary()
    codes = data["g"].str[1:].astype(int)
    train, held = data[codes < 60], data[codes >= 60]
    first = held.groupby("g").head(10)
    fit = gf.gmenn("y ~ x + (1 | g)", train, family="binomial", verbose=0)
    return fit, first, held.drop(first.index), b


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_new_groups_effects_are_recovered_and_beat_population_predictions(binary):
    fit, first, rest, b = binary
    before = first.copy()
    refitted = fit.refit_effects(first)
    pd.testing.assert_frame_equal(first, before)  # newdata untouched
    assert refitted.ngrps()["g"] == 80 and fit.ngrps()["g"] == 60
    effects = refitted.ranef()["g"].set_index("level")
    estimated = effects.loc[[f"c{i}" for i in range(60, 80)], "mean"].to_numpy()
    assert np.corrcoef(estimated, b[60:])[0, 1] > 0.7
    pd.testing.assert_frame_equal(effects.iloc[:60].reset_index(), fit.ranef()["g"])  # known levels as fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        population = _log_loss(fit.predict(rest), rest["y"].to_numpy())
    assert _log_loss(refitted.predict(rest), rest["y"].to_numpy()) < population - 0.02
    np.testing.assert_allclose(refitted.varcorr()["variance"], fit.varcorr()["variance"])


def test_gaussian_new_level_effect_is_the_exact_conditional_mean_beside_a_known_crossed_level():
    rng = np.random.default_rng(1)
    n = 1200
    a, c = rng.integers(0, 30, n), rng.integers(0, 20, n)
    y = 1.0 + rng.normal(0, 1.0, 30)[a] + rng.normal(0, 0.7, 20)[c] + rng.normal(0, 0.5, n)
    data = pd.DataFrame({"y": y, "a": a.astype(str), "c": c.astype(str)})
    fit = gf.gmenn("y ~ 1 + (1 | a) + (1 | c)", data, verbose=0)
    new = pd.DataFrame({"y": [3.0, 2.5, 3.4, 2.9], "a": ["new"] * 4, "c": ["1", "2", "3", "1"]})
    refitted = fit.refit_effects(new, draws=2000)
    known = fit.ranef()["c"].set_index("level")["mean"]
    residual = new["y"] - fit.fixef()["estimate"].iloc[0] - known.loc[new["c"]].to_numpy()
    va, s2 = fit.varcorr()["variance"].iloc[0], fit.state.dispersion
    exact_mean = va * residual.sum() / (s2 + len(new) * va)
    exact_sd = np.sqrt(va * s2 / (s2 + len(new) * va))
    row = refitted.ranef()["a"].set_index("level").loc["new"]
    assert row["mean"] == pytest.approx(exact_mean, abs=4 * exact_sd / np.sqrt(2000) + 0.01)
    assert row["sd"] == pytest.approx(exact_sd, rel=0.1)
    np.testing.assert_allclose(refitted.predict(new.iloc[:1]), fit.fixef()["estimate"].iloc[0] + row["mean"] + known.loc["1"], rtol=1e-5)


def test_a_network_fit_refits_saves_and_loads(tmp_path):
    rng = np.random.default_rng(2)
    g = rng.integers(0, 30, 1500)
    x = rng.normal(size=1500)
    data = pd.DataFrame({"y": np.sin(x) + rng.normal(0, 1, 30)[g] + rng.normal(0, 0.3, 1500), "x": x, "g": g.astype(str)})
    fit = gf.gmenn("y ~ nn(x) + (1 | g)", data[g < 25], verbose=0, epochs=10)
    refitted = fit.refit_effects(data[g >= 25].head(60), draws=50)
    loaded = gf.load(refitted.save(tmp_path / "refit.gmenn"))
    probe = data[g >= 25].tail(20)
    np.testing.assert_allclose(loaded.predict(probe), refitted.predict(probe), rtol=1e-5)
    assert loaded.ngrps()["g"] == 30


def test_bad_input_is_named(binary):
    fit, first, _, _ = binary
    with pytest.raises(DataTypeError, match="newdata must be a pandas DataFrame"):
        fit.refit_effects(first.to_numpy())
    with pytest.raises(DataError, match="no grouping level unseen in the fit"):
        fit.refit_effects(first.assign(g="c00"))
    with pytest.raises(DataError, match="draws must be an integer"):
        fit.refit_effects(first, draws=0)
    with pytest.raises(DataError, match="seed must be an integer"):
        fit.refit_effects(first, seed=1.5)
    with pytest.raises(GmennError, match="y"):
        fit.refit_effects(first.drop(columns="y"))
