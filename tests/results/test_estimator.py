"""The scikit-learn style GMENN estimator: fit(data) and fit(X, y), predict, predict_proba, params."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from results_fixtures import TINY_CONTROL, tiny_data

import gmenn_formula as gf
from gmenn_formula import GMENN
from gmenn_formula.errors import ControlError, DataError, DataTypeError, NotFittedError

FORMULA = "y ~ x0 + x1 + (1 | g0)"


def fitted(family: str, **kwargs) -> tuple[GMENN, pd.DataFrame]:
    data = tiny_data(family)
    model = GMENN(FORMULA, family=family, **TINY_CONTROL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(data, **kwargs)
    return model, data


def test_gaussian_fit_and_predict_match_the_function() -> None:
    model, data = fitted("gaussian")
    assert isinstance(model.result_, gf.GmennResult) and not hasattr(model, "classes_")
    expected = gf.gmenn(FORMULA, data, family="gaussian", **TINY_CONTROL).predict(data.iloc[:7])
    np.testing.assert_allclose(model.predict(data.iloc[:7]), expected)
    assert model.predict(data.iloc[:7], re_form="~0").shape == (7,)
    with pytest.raises(DataError, match="binomial or categorical"):
        model.predict_proba(data)


def test_fit_with_y_appends_the_response_column() -> None:
    data = tiny_data("gaussian")
    model = GMENN(FORMULA, **TINY_CONTROL).fit(data.drop(columns="y"), data["y"].reset_index(drop=True))
    assert model.result_.nobs == len(data)
    np.testing.assert_allclose(model.result_.design.response.y, data["y"].to_numpy())
    with pytest.raises(DataError, match="one value per row"):
        model.fit(data.drop(columns="y"), data["y"].to_numpy()[:5])
    with pytest.raises(DataError, match="is an expression"):
        GMENN("np.log(y) ~ x0 + (1 | g0)").fit(data.drop(columns="y"), data["y"])
    with pytest.raises(DataTypeError, match="DataFrame"):
        model.fit(data.to_numpy())


def test_binomial_predicts_labels_and_probabilities_in_class_order() -> None:
    data = tiny_data("binomial")
    labels = data["y"].map({0: "no", 1: "yes"})
    X = data.drop(columns="y")
    model = GMENN(FORMULA, family="binomial", **TINY_CONTROL).fit(X, labels)
    assert list(model.classes_) == ["no", "yes"]
    proba = model.predict_proba(X)
    assert proba.shape == (len(data), 2) and np.allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(proba[:, 1], model.result_.predict(X))
    assert set(model.predict(X)) <= {"no", "yes"}
    assert (model.predict(X) == np.where(proba[:, 1] > 0.5, "yes", "no")).all()


def test_categorical_predict_proba_columns_follow_classes() -> None:
    model, data = fitted("categorical")
    proba = model.predict_proba(data.iloc[:10])
    assert proba.shape == (10, len(model.classes_)) and np.allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(proba, model.result_.predict(data.iloc[:10]).to_numpy())
    assert (model.predict(data.iloc[:10]) == model.classes_[proba.argmax(axis=1)]).all()


def test_poisson_predicts_the_mean() -> None:
    model, data = fitted("poisson")
    prediction = model.predict(data)
    assert prediction.shape == (len(data),) and (prediction > 0).all()


def test_params_round_trip_and_clone() -> None:
    model = GMENN(FORMULA, family="binomial", epochs=3, seed=7)
    params = model.get_params()
    assert params == {"formula": FORMULA, "family": "binomial", "nets": None, "na_action": "omit", "epochs": 3, "seed": 7}
    assert model.set_params(seed=8, family="poisson") is model
    assert model.get_params()["seed"] == 8 and model.family == "poisson"
    copy = GMENN(**model.get_params())
    assert copy.get_params() == model.get_params()
    with pytest.raises(ControlError, match="Did you mean 'epochs'"):
        model.set_params(epoch=3)
    with pytest.raises(ControlError):
        GMENN(FORMULA, batch_size=0)
    assert "GMENN(formula=" in repr(model)
    sklearn = pytest.importorskip("sklearn.base")
    cloned = sklearn.clone(model)
    assert cloned is not model and cloned.get_params() == model.get_params()


def test_predict_before_fit_is_a_clear_error() -> None:
    with pytest.raises(NotFittedError, match="call fit"):
        GMENN(FORMULA).predict(tiny_data("gaussian"))
