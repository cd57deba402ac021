"""partial_dependence / permutation_importance / plot_effects: the network's learned shape is
recovered, group curves shift by the level's effect, importance ranks the inputs; bad input named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import gmenn_formula as gf
from gmenn_formula.errors import DataError, DataTypeError


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 1500
    g = rng.integers(0, 20, n)
    x1, x2, x3 = rng.normal(size=(3, n))
    y = np.sin(2 * x1) + 0.3 * x2 + rng.normal(0, 0.7, 20)[g] + rng.normal(0, 0.3, n)
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "x3": x3, "g": g.astype(str)})


@pytest.fixture(scope="module")
def fit(data):
    return gf.gmenn("y ~ nn(x1 + x2 + x3) + (1 | g)", data.iloc[:1200], verbose=0, epochs=30, seed=0)


def test_partial_dependence_recovers_the_learned_shape_and_group_shifts(fit, data):
    before = data.copy()
    table = fit.partial_dependence("x1", data, groups={"g": ["3"]})
    pd.testing.assert_frame_equal(data, before)
    population = table[table["level"] == "(population)"]
    assert len(population) == 20 and list(table.columns) == ["feature", "value", "group", "level", "prediction"]
    assert np.corrcoef(population["prediction"], np.sin(2 * population["value"]))[0, 1] > 0.95
    shift = table[table["level"] == "3"]["prediction"].to_numpy() - population["prediction"].to_numpy()
    effect = fit.ranef()["g"].set_index("level").loc["3", "mean"]
    np.testing.assert_allclose(shift, effect, atol=1e-4)


def test_permutation_importance_ranks_the_inputs(fit, data):
    table = fit.permutation_importance(data.iloc[1200:], n_repeats=3)
    assert list(table["feature"]) == ["x1", "x2", "x3"]
    assert table["importance"].iloc[0] > 5 * table["importance"].iloc[1] > 0
    assert abs(table["importance"].iloc[2]) < 0.1 and (table["sd"] >= 0).all()
    again = fit.permutation_importance(data.iloc[1200:], n_repeats=3)
    pd.testing.assert_frame_equal(table, again)


def test_categorical_partial_dependence_has_a_probability_per_class():
    rng = np.random.default_rng(1)
    n = 900
    x, g = rng.normal(size=n), rng.integers(0, 15, n)
    y = np.where(x + rng.normal(0, 0.5, 15)[g] + rng.logistic(size=n) > 0.5, "hi", np.where(x < -0.5, "lo", "mid"))
    frame = pd.DataFrame({"y": y, "x": x, "g": g.astype(str), "kind": rng.choice(["a", "b"], n)})
    fit = gf.gmenn("y ~ nn(x + kind) + (1 | g)", frame, family="categorical", verbose=0, epochs=5)
    table = fit.partial_dependence(["kind", "x"], frame, grid_points=5)
    assert set(table["class"]) == {"hi", "lo", "mid"} and set(table[table.feature == "kind"]["value"]) == {"a", "b"}
    sums = table.groupby(["feature", "value", "level"])["prediction"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-6)
    ax = fit.plot_effects("kind", frame)
    assert len(ax.get_lines()) == 3


def test_plot_effects_draws_one_line_per_curve(fit, data):
    ax = fit.plot_effects("x1", data, groups={"g": ["3", "5"]})
    assert [line.get_label() for line in ax.get_lines()] == ["(population)", "g = 3", "g = 5"]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda f, d: f.partial_dependence("x9", d), DataError, "'x9' is not a column this model reads.*x1"),
        (lambda f, d: f.partial_dependence("y", d), DataError, "'y' is the model's response"),
        (lambda f, d: f.partial_dependence("g", d), DataError, "'g' is the model's grouping factor"),
        (lambda f, d: f.partial_dependence([], d), DataError, "features must be one or more column names"),
        (lambda f, d: f.partial_dependence("x1", d.drop(columns="x1")), DataError, "data has no column 'x1'"),
        (lambda f, d: f.partial_dependence("x1", d.to_numpy()), DataTypeError, "data must be a pandas DataFrame"),
        (lambda f, d: f.partial_dependence("x1", d, groups={"h": ["1"]}), DataError, "'h' is not a one-column grouping factor"),
        (lambda f, d: f.partial_dependence("x1", d, groups={"g": ["99"]}), DataError, "'99' is not a level of 'g'"),
        (lambda f, d: f.partial_dependence("x1", d, groups=["g"]), DataError, "groups must be a dict"),
        (lambda f, d: f.partial_dependence("x1", d, grid_points=1), DataError, "grid_points must be an integer"),
        (lambda f, d: f.partial_dependence("x1", d, seed="one"), DataError, "seed must be an integer or None"),
        (lambda f, d: f.permutation_importance(d, n_repeats=0), DataError, "n_repeats must be a positive integer"),
        (lambda f, d: f.permutation_importance(d, seed=2.5), DataError, "seed must be an integer or None"),
        (lambda f, d: f.permutation_importance(d, features=["g"]), DataError, "grouping factor"),
    ],
)
def test_bad_input_is_named(fit, data, call, error, match):
    with pytest.raises(error, match=match):
        call(fit, data)
