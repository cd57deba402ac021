"""A scikit-learn style estimator around :func:`gmenn_formula.gmenn`.

``GMENN(formula, family=..., **control)`` keeps the formula and settings;
``fit(data)`` fits them (``fit(X, y)`` appends ``y`` as the formula's
response column), ``predict`` and ``predict_proba`` follow scikit-learn's
conventions, ``result_`` is the :class:`~gmenn_formula.GmennResult` with every
lme4 verb. ``get_params``/``set_params`` are written out here, so scikit-learn
is not needed; its ``clone`` works with them (every ``**control`` setting is
a parameter of its own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from gmenn_formula.api import gmenn
from gmenn_formula.errors import DataError, DataTypeError, NotFittedError
from gmenn_formula.formula import Formula, parse
from gmenn_formula.formula.terms import BinomialResponse
from gmenn_formula.results.result import GmennResult
from gmenn_formula.training.config import FitConfig

_OWN_PARAMS = ("formula", "family", "nets", "na_action")


class GMENN:
    """scikit-learn style generalized mixed effects neural network.

    ``formula``: as for :func:`~gmenn_formula.gmenn`, e.g.
    ``"y ~ nn(x1 + x2) + (1 | g)"``; ``family``: "gaussian", "binomial",
    "poisson", "categorical" (None: gaussian, binomial for ``cbind()``);
    ``nets``, ``na_action`` and ``**control`` (epochs, batch_size, seed, ...)
    as for ``gmenn()``. Fitted attributes: ``result_`` (GmennResult),
    ``classes_`` (binomial and categorical: class labels in the order of
    ``predict_proba``'s columns).

    Example::

        model = GMENN("y ~ nn(x1 + x2) + (1 | g)", family="binomial", epochs=50)
        model.fit(train)                  # or model.fit(train.drop(columns="y"), train["y"])
        p = model.predict_proba(test)     # (n, 2): P(class 0), P(class 1)
        model.result_.summary()           # every lme4 verb
    """

    def __init__(
        self,
        formula: str | Formula,
        family: str | None = None,
        nets: Mapping | None = None,
        na_action: str = "omit",
        **control: Any,
    ) -> None:
        FitConfig.from_control(**control)  # unknown or invalid settings fail here, not at fit time
        self.formula = formula
        self.family = family
        self.nets = nets
        self.na_action = na_action
        self._control = dict(control)

    # -- scikit-learn's parameter protocol ---------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments, each ``**control`` setting by its own name."""
        return {**{name: getattr(self, name) for name in _OWN_PARAMS}, **self._control}

    def set_params(self, **params: Any) -> GMENN:
        """Change parameters (constructor names or ``**control`` settings); returns self."""
        own = {name: value for name, value in params.items() if name in _OWN_PARAMS}
        control = {**self._control, **{name: value for name, value in params.items() if name not in _OWN_PARAMS}}
        FitConfig.from_control(**control)
        for name, value in own.items():
            setattr(self, name, value)
        self._control = control
        return self

    def __repr__(self) -> str:
        arguments = ", ".join(f"{name}={value!r}" for name, value in self.get_params().items() if name == "formula" or value is not None)
        return f"GMENN({arguments})"

    # -- fitting and prediction ---------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y: pd.Series | np.ndarray | None = None) -> GMENN:
        """Fit on ``X`` (a DataFrame with the formula's columns); ``y``: the response,
        appended as the formula's response column (``X`` is not modified). Returns self."""
        data = self._with_response(X, y)
        self.result_ = gmenn(self.formula, data, family=self.family, nets=self.nets, na_action=self.na_action, **self._control)
        if self.result_.family.classifier:
            classes = self.result_.spec.response.classes
            self.classes_ = np.asarray(classes, dtype=object) if classes is not None else np.array([0, 1])
        return self

    def predict(self, X: pd.DataFrame, **kwargs: Any) -> np.ndarray:
        """(n,) predictions: the mean for gaussian and poisson, the most probable class
        label for binomial and categorical; NaN for rows with a missing predictor.
        ``kwargs`` (``re_form``, ``allow_new_levels``) go to :meth:`GmennResult.predict`."""
        result = self._fitted()
        if not result.family.classifier:
            return np.asarray(result.predict(X, type="response", **kwargs))
        proba = self.predict_proba(X, **kwargs)
        missing = np.isnan(proba).any(axis=1)
        labels = self.classes_[np.where(missing[:, None], 0.0, proba).argmax(axis=1)]
        return np.where(missing, np.nan, labels.astype(object)) if missing.any() else labels

    def predict_proba(self, X: pd.DataFrame, **kwargs: Any) -> np.ndarray:
        """(n, classes) class probabilities, columns in the order of ``classes_``
        (binomial and categorical families only)."""
        result = self._fitted()
        mean = np.asarray(result.predict(X, type="response", **kwargs), dtype=np.float64)
        return result.family.class_probabilities(mean)

    # -- helpers --------------------------------------------------------------------------------
    def _fitted(self) -> GmennResult:
        if not hasattr(self, "result_"):
            raise NotFittedError("This GMENN estimator is not fitted yet; call fit(data) first.")
        return self.result_

    def _with_response(self, X: pd.DataFrame, y: pd.Series | np.ndarray | None) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            raise DataTypeError(f"X must be a pandas DataFrame holding the formula's columns, not {type(X).__name__}.")
        if y is None:
            return X
        formula = parse(self.formula) if isinstance(self.formula, str) else self.formula
        if isinstance(formula.response, BinomialResponse):
            raise DataError(f"The response {formula.response} reads several columns; put them in X and call fit(X) without y.")
        expr = formula.response.expr.strip()
        if not _is_column_name(expr):
            raise DataError(
                f"The response {expr!r} is an expression, so y cannot be appended as a column; "
                "put the column it reads in X and call fit(X) without y."
            )
        name = expr.strip("`")
        shape = y.shape if isinstance(y, pd.Series) else np.shape(y)
        if len(shape) != 1 or shape[0] != len(X):
            raise DataError(f"y must hold one value per row of X ({len(X)} rows); got shape {shape}.")
        # By position; a Series keeps its dtype (a Categorical's class order)
        values = pd.Series(y.array if isinstance(y, pd.Series) else np.asarray(y), index=X.index)
        return X.assign(**{name: values})


def _is_column_name(expr: str) -> bool:
    """True for a bare (possibly back-quoted) column name, False for an expression such as log(y)."""
    stripped = expr.strip()
    return (stripped.startswith("`") and stripped.endswith("`")) or stripped.isidentifier()
