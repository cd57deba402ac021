"""A look inside the fixed part: partial dependence on a predictor and permutation importance.

``partial_dependence``: for each value v on a grid of a predictor, the prediction averaged over the
rows of the data with that predictor set to v in every row (Friedman 2001; scikit-learn's
``partial_dependence`` with ``kind="average"``), at population level (no random effects), and,
for chosen levels of a grouping factor, with that level's effect added (every row put in the
level). It shows what the network (and the linear terms) learned of the predictor, through every
term that reads it.

``permutation_importance``: on rows with the response (held-out rows, ideally), how much the mean
negative log-likelihood per row rises when one column is shuffled (Breiman 2001; scikit-learn's
``permutation_importance``), ``n_repeats`` shuffles each; random effects included (levels unseen in
the fit get none). The log-likelihood is the family's, so one scale serves every family.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from gmenn_formula.design.checks import GROUPING_ROLE
from gmenn_formula.errors import DataError, DataTypeError, NewLevelWarning
from gmenn_formula.results.arguments import check_count, check_seed

GRID_POINTS = 20
"""Grid values of a numeric predictor: its quantiles from GRID_RANGE[0] to GRID_RANGE[1]."""
GRID_RANGE = (0.05, 0.95)
MAX_ROWS = 2_000
"""Rows averaged over per grid value (a seeded sample of the data beyond that)."""
POPULATION = "(population)"
"""The ``level`` of the population-level curve."""


def _frame(data: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(data, pd.DataFrame):
        raise DataTypeError(f"data must be a pandas DataFrame, not {type(data).__name__}.")
    return data


def _predictors(result, features: Sequence[str] | str, data: pd.DataFrame) -> list[str]:
    """``features`` checked: columns of ``data`` that the fixed part or slopes read (not the response
    or a grouping factor)."""
    wanted = [features] if isinstance(features, str) else list(features)
    roles = result.spec.column_roles()
    usable = _usable(roles)
    if not wanted or not all(isinstance(f, str) for f in wanted):
        raise DataError(f"features must be one or more column names, not {features!r}; this model's predictors: {', '.join(usable)}.")
    for name in wanted:
        if name not in roles:
            raise DataError(f"{name!r} is not a column this model reads; its predictors: {', '.join(usable)}.")
        if name not in usable:
            raise DataError(f"{name!r} is the model's {roles[name]}, not a predictor; choose one of {', '.join(usable)}.")
        if name not in data.columns:
            raise DataError(f"data has no column {name!r}.")
    return wanted


def _usable(roles: dict[str, str]) -> list[str]:
    """The predictors among the model's columns (``DesignSpec.column_roles``): neither the response nor a grouping factor."""
    return [name for name, role in roles.items() if role != "response" and not role.startswith(GROUPING_ROLE)]


def _grid(values: pd.Series, points: int) -> np.ndarray:
    """The predictor's grid: each level of a categorical or text column, else quantiles."""
    values = values.dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return np.asarray(values.cat.categories if isinstance(values.dtype, pd.CategoricalDtype) else sorted(values.unique()), dtype=object)
    grid = np.unique(np.quantile(values.to_numpy(float), np.linspace(*GRID_RANGE, points)))
    return grid.astype(values.dtype) if pd.api.types.is_integer_dtype(values) else grid


def partial_dependence(
    result,
    features: Sequence[str] | str,
    data: pd.DataFrame,
    groups: Mapping[str, Sequence] | None = None,
    grid_points: int = GRID_POINTS,
    seed: int = 0,
) -> pd.DataFrame:
    """Tidy partial dependence: columns feature, value, group, level, (class), prediction.

    ``data``: the rows to average over (e.g. the training data frame); ``groups``:
    {grouping factor: levels} for curves with those levels' effects (``group``/``level`` name them;
    the population curve has group None and level "(population)"). Predictions are on the response
    scale (class probabilities for categorical)."""
    frame = _frame(data)
    names = _predictors(result, features, frame)
    check_count("grid_points", grid_points, 2)
    check_seed(seed)
    curves = [(None, POPULATION)] + _group_levels(result, groups)
    sample = frame if len(frame) <= MAX_ROWS else frame.sample(MAX_ROWS, random_state=seed)
    outputs = result.family.output_names(result.spec.response.classes)
    pieces = []
    for name in names:
        for value in _grid(frame[name], grid_points):
            for group, level in curves:
                changed = sample.assign(**{name: value} if group is None else {name: value, group: level})
                mean = result.predict(changed, re_form="~0" if group is None else None)
                averaged = np.nanmean(np.asarray(mean, dtype=float).reshape(len(changed), -1), axis=0)
                for label, prediction in zip(outputs if len(outputs) > 1 else [None], averaged):
                    pieces.append({"feature": name, "value": value, "group": group, "level": level, "class": label, "prediction": prediction})
    table = pd.DataFrame(pieces)
    return table if len(outputs) > 1 else table.drop(columns="class")


def _group_levels(result, groups: Mapping[str, Sequence] | None) -> list[tuple[str, object]]:
    """(factor column, level) per group curve, each level known to the fit."""
    if groups is None:
        return []
    if not isinstance(groups, Mapping):
        raise DataError(f"groups must be a dict {{grouping factor: [levels]}}, not {groups!r}.")
    factors = {r.factor.name: r.factor for r in result.spec.random}
    out = []
    for name, levels in groups.items():
        factor = factors.get(name)
        if factor is None or len(factor.columns) > 1:
            raise DataError(f"groups: {name!r} is not a one-column grouping factor of the model; choose from {', '.join(factors)}.")
        for level in [levels] if isinstance(levels, (str, int)) else list(levels):
            if level not in factor.levels:
                raise DataError(f"groups: {level!r} is not a level of {name!r} in the fit (e.g. {factor.labels[0]!r}).")
            out.append((name, level))
    return out


def permutation_importance(
    result,
    data: pd.DataFrame,
    features: Sequence[str] | None = None,
    n_repeats: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Tidy permutation importance, most important first: columns feature, importance (mean rise of
    the NLL per row over ``n_repeats`` shuffles), sd (over the shuffles), baseline (the NLL per row
    unshuffled). ``data`` needs the response; ``features`` default: the nn() inputs' columns (all
    predictors for a model without nn())."""
    frame = _frame(data)
    if features is None:
        roles = result.spec.column_roles()
        network = [name for name, role in roles.items() if role == "nn() inputs"]
        features = network or _usable(roles)
    names = _predictors(result, features, frame)
    check_count("n_repeats", n_repeats, 1)
    check_seed(seed)
    rng = np.random.default_rng(seed)
    baseline = _nll(result, frame)
    rows = []
    for name in names:
        rises = [_nll(result, frame.assign(**{name: rng.permutation(frame[name].to_numpy())})) - baseline for _ in range(n_repeats)]
        rows.append({"feature": name, "importance": float(np.mean(rises)), "sd": float(np.std(rises)), "baseline": baseline})
    return pd.DataFrame(rows).sort_values("importance", ascending=False, ignore_index=True)


def _nll(result, frame: pd.DataFrame) -> float:
    """Mean negative log-likelihood per row of ``frame``'s response (rows with missing values dropped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NewLevelWarning)
        design = result.spec.apply(frame, response=True)
    eta = result._linear_predictor(design, include_random=True)
    response = design.response
    return float(-np.mean(result.family.loglik(response.y, eta, response.trials, result.state.dispersion)))
