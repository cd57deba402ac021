"""``anova(fit0, fit1, ...)``: likelihood-ratio tests of nested models, in lme4's layout.

The table (:attr:`Anova.table`, one row per model, sorted by parameters as lme4 sorts):
npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq), and ``logLik se``, the Monte Carlo
standard error of each log-likelihood (0 where it is exact). Chisq = 2 max(0, logLik_i -
logLik_{i-1}) and Df = npar_i - npar_{i-1} against the row above, as lme4's ``anova.merMod``.

:attr:`Anova.notes` says what a careful reader must know about the p-values: that a variance
tested at 0 lies on the boundary (the chi-squared p-value is conservative; for one added
variance halve it, a 50:50 mixture of chi-squared(0) and chi-squared(1): Self and Liang 1987,
lme4's ``?pvalues``), that models with different networks count the networks' weights as
parameters, and (also as a warning) when the log-likelihoods' Monte Carlo error moves a
p-value across 0.05 or 0.01.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import chi2

from gmenn_formula.errors import DataTypeError, ModelComparisonError, MonteCarloWarning

LEVELS = (0.05, 0.01)
"""Significance levels a Monte Carlo error may not straddle without a warning."""


@dataclass(frozen=True)
class Anova:
    """The likelihood-ratio table (``table``, a DataFrame indexed by model name), each model's
    formula (``formulas``) and the ``notes`` on reading it. Prints as R's ``anova()``."""

    table: pd.DataFrame
    formulas: dict[str, str]
    notes: tuple[str, ...]

    def __str__(self) -> str:
        lines = ["Models:", *(f"{name}: {formula}" for name, formula in self.formulas.items())]
        lines += _formatted(self.table).to_string().splitlines()
        lines += ["---", "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"]
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(str(self))}</pre>"


def anova(*fits, names: Sequence[str] | None = None) -> Anova:
    """Likelihood-ratio tests of two or more fits of nested models to the same rows (see the
    module docstring). ``names``: one per fit (default fit0, fit1, ... in the order given)."""
    from gmenn_formula.results.result import GmennResult

    if len(fits) < 2:
        raise ModelComparisonError(f"anova() compares two or more fits; it was given {len(fits)}.")
    for index, fit in enumerate(fits):
        if not isinstance(fit, GmennResult):
            raise DataTypeError(f"anova() takes fitted models (GmennResult); argument {index + 1} is a {type(fit).__name__}.")
    names = [f"fit{i}" for i in range(len(fits))] if names is None else [str(n) for n in names]
    if len(names) != len(fits) or len(set(names)) != len(names):
        raise ModelComparisonError(f"names= must give {len(fits)} different names, one per fit; it gave {list(names)}.")
    _check_comparable(fits, names)
    logliks = [fit.loglik() for fit in fits]
    order = sorted(range(len(fits)), key=lambda i: logliks[i].df)
    table = _table([logliks[i] for i in order], [names[i] for i in order])
    notes = _notes([fits[i] for i in order], table)
    return Anova(table, {names[i]: str(fits[i].formula) for i in order}, notes)


def _check_comparable(fits, names: list[str]) -> None:
    """Same family, response and rows, or ModelComparisonError naming the first that differs."""
    first = fits[0]
    for fit, name in zip(fits[1:], names[1:]):
        if fit.family != first.family:
            raise ModelComparisonError(f"{name} has family {fit.family.name} and {names[0]} {first.family.name}: anova() compares fits of one family.")
        if fit.spec.response.name != first.spec.response.name:
            raise ModelComparisonError(
                f"{name} models {fit.spec.response.name!r} and {names[0]} {first.spec.response.name!r}: anova() compares models of one response."
            )
        same_rows = fit.nobs == first.nobs
        if same_rows and fit.has_training_rows and first.has_training_rows:
            same_rows = np.array_equal(fit.design.response.y, first.design.response.y) and fit.design.rows.equals(first.design.rows)
        if not same_rows:
            raise ModelComparisonError(
                f"{name} was fitted to other rows than {names[0]} ({fit.nobs:,} vs {first.nobs:,} rows, or other values): "
                "likelihoods are comparable only on the same rows; drop missing values for every model's columns before fitting."
            )


def _table(logliks: list, names: list[str]) -> pd.DataFrame:
    npar = np.array([ll.df for ll in logliks])
    values = np.array([float(ll) for ll in logliks])
    chisq = np.concatenate([[np.nan], 2 * np.maximum(0.0, np.diff(values))])
    df = np.concatenate([[np.nan], np.diff(npar)]).astype(float)
    p = np.array([chi2.sf(c, d) if d > 0 else np.nan for c, d in zip(chisq, df)])
    return pd.DataFrame(
        {
            "npar": npar,
            "AIC": [ll.aic for ll in logliks],
            "BIC": [ll.bic for ll in logliks],
            "logLik": values,
            "logLik se": [ll.se for ll in logliks],
            "deviance": [ll.deviance for ll in logliks],
            "Chisq": chisq,
            "Df": df,
            "Pr(>Chisq)": p,
        },
        index=pd.Index(names, name="model"),
    )


def _notes(fits, table: pd.DataFrame) -> tuple[str, ...]:
    notes = []
    parameters = [sum(S.shape[0] * S.shape[1] * (S.shape[1] + 1) // 2 for S in fit.state.covariances) for fit in fits]
    if len(set(parameters)) > 1:
        notes.append(
            "Variance components tested at 0 lie on the boundary of the parameter space: the chi-squared p-value is "
            "conservative (for one added variance, halve it: a 50:50 mixture of chi-squared(0) and chi-squared(1))."
        )
    if len({fit.loglik().network_parameters for fit in fits}) > 1:
        notes.append(
            "The models' networks differ: their weights count as parameters (as in AIC), which the chi-squared test "
            "does not model; compare networks by held-out loss instead."
        )
    uncertain = _uncertain_p_values(table)
    if uncertain:
        message = (
            "The log-likelihoods' Monte Carlo error moves a p-value across a significance level: "
            + "; ".join(uncertain)
            + ". Tighten them with more importance draws (fit.loglik(draws=...)) before reading the test."
        )
        warnings.warn(message, MonteCarloWarning, stacklevel=3)
        notes.append(message)
    return tuple(notes)


def _uncertain_p_values(table: pd.DataFrame) -> list[str]:
    """For each test whose p-value at Chisq -/+ 2 Monte Carlo standard errors lies on both sides of a LEVELS entry."""
    out = []
    se = table["logLik se"].to_numpy()
    for i in range(1, len(table)):
        df = table["Df"].iloc[i]
        error = 2 * math.hypot(se[i], se[i - 1])
        if not df > 0 or error == 0:
            continue
        chisq = table["Chisq"].iloc[i]
        high, low = chi2.sf(max(chisq - 2 * error, 0.0), df), chi2.sf(chisq + 2 * error, df)
        if any(low < level < high for level in LEVELS):
            out.append(f"{table.index[i]}'s p-value lies between {low:.3g} and {high:.3g} (Chisq {chisq:.2f} +- {2 * error:.2f})")
    return out


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    """The table as R prints it: blanks for the first row's tests, significance stars."""
    def number(value: float, digits: int = 5) -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"

    shown = pd.DataFrame(index=list(table.index))
    shown["npar"] = table["npar"].astype(int).astype(str).to_numpy()
    for column in ("AIC", "BIC", "logLik"):
        shown[column] = [number(v) for v in table[column]]
    if (table["logLik se"] > 0).any():
        shown["logLik se"] = [number(v, 2) for v in table["logLik se"]]
    for column in ("deviance", "Chisq"):
        shown[column] = [number(v) for v in table[column]]
    shown["Df"] = ["" if math.isnan(v) else str(int(v)) for v in table["Df"]]
    shown["Pr(>Chisq)"] = [number(v, 4) for v in table["Pr(>Chisq)"]]
    shown[""] = [_stars(v) for v in table["Pr(>Chisq)"]]
    return shown


def _stars(p: float) -> str:
    if math.isnan(p):
        return ""
    return next(mark for bound, mark in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, "."), (math.inf, " ")) if p < bound)
