"""Parametric columns (the linear fixed part, ``nn()`` inputs, random slopes) via formulae.

formulae evaluates each block once on the training data; the resulting
``CommonEffectsMatrix`` remembers categorical levels and stateful transforms
(``scale``, ``center``, spline knots) and re-applies them to new data.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
from formulae import design_matrices, model_description
from formulae.environment import Environment
from formulae.terms.call import Call
from formulae.terms.call_resolver import LazyCall, LazyOperator, LazyVariable

from gmenn_formula.errors import ColumnNotFoundError, DataError
from gmenn_formula.formula.functions import MATH

_MATH = {name: getattr(np, name) for name in MATH}
ENVIRONMENT = Environment([{**_MATH, "np": SimpleNamespace(**_MATH)}])
"""Where formulae looks up what an expression calls, besides its own transforms and contrasts:
the numpy functions of the formula vocabulary (``log(t)`` as in R, or ``np.log(t)``) and nothing
else; never the caller's frame (see :mod:`gmenn_formula.formula.functions`)."""

INTERCEPT = "(Intercept)"
"""The intercept column's name, as R prints it."""

_LEVELS_NOT_PRESENT = re.compile(r"The levels? \((?P<levels>.*)\) in '(?P<term>.*)' (?:is|are) not present")


def variables(expr: str) -> set[str]:
    """Data column names an expression (formulae syntax) reads, e.g. ``np.log(t)`` -> ``{"t"}``,
    ``C(x, Sum)`` -> ``{"x"}``. DataError where formulae cannot read the expression (it raises bare
    TypeError/ValueError, e.g. for ``x ** x``)."""
    try:
        description = model_description(expr)
    except Exception as exc:  # formulae raises bare ValueError/TypeError/NameError
        hint = " In formulae syntax `a ** n` takes a whole number n (a's interactions up to order n); write I(a ** b) for a power." if "**" in expr else ""
        raise DataError(f"Could not read the expression {expr!r}: {exc}.{hint}") from exc
    return {name for term in description.terms for component in getattr(term, "components", ()) for name in component_variables(component)}


def component_variables(component: object) -> set[str]:
    """Data column names one formulae component (a Variable or Call) reads.

    formulae lists every bare name of a call among its variables, also the
    contrast of ``C(x, Sum)``, which it looks up among its own transforms; such
    names are not columns.
    """
    names = {name for name in component.var_names if name}
    if isinstance(component, Call):
        names -= _contrast_names(component.call)
    return names


def _contrast_names(node: object) -> set[str]:
    """Bare names passed to ``C()`` after its data argument (``Sum``, ``Treatment``, ``contr=Sum``)."""
    names: set[str] = set()
    if isinstance(node, LazyCall):
        if node.callee == "C":
            names |= {arg.name for arg in [*node.args[1:], *node.kwargs.values()] if isinstance(arg, LazyVariable)}
        for arg in [*node.args, *node.kwargs.values()]:
            names |= _contrast_names(arg)
    elif isinstance(node, LazyOperator):
        for arg in node.args:
            names |= _contrast_names(arg)
    return names


def check_columns(names: set[str], data: pd.DataFrame, role: str) -> None:
    """Raise ColumnNotFoundError naming the first missing column and close matches."""
    columns = [str(c) for c in data.columns]
    for name in sorted(names):
        if name not in data.columns:
            close = difflib.get_close_matches(name, columns, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ColumnNotFoundError(
                f"Column {name!r} used in the {role} is not in the data.{hint} "
                f"Available columns: {', '.join(columns[:20])}{' ...' if len(columns) > 20 else ''}."
            )


def block_formula(exprs: tuple[str, ...], intercept: bool) -> str:
    """The formulae text of a block: ``1 + x + C(g)`` (``0 + ...`` without an intercept)."""
    return " + ".join(["1" if intercept else "0", *exprs])


def build_matrix(formula: str, data: pd.DataFrame):
    """formulae's common-effects matrix of ``formula`` on ``data``, evaluated in :data:`ENVIRONMENT`."""
    return design_matrices(formula, data, na_action="error", env=ENVIRONMENT).common


@dataclass(frozen=True)
class ParametricBlock:
    """A dense block of columns from formulae, learned on training data.

    ``names`` has one entry per column (formulae's labels, e.g. ``C(g)[b]``;
    the intercept is ``(Intercept)`` as in R).
    """

    formula: str
    names: tuple[str, ...]
    _matrix: object  # formulae CommonEffectsMatrix, kept to re-apply encodings

    @classmethod
    def learn(cls, exprs: tuple[str, ...], intercept: bool, data: pd.DataFrame, role: str) -> tuple[ParametricBlock, np.ndarray]:
        """Evaluate ``exprs`` on training data. Returns the block and its (n, k) float64 matrix."""
        formula = block_formula(exprs, intercept)
        if not exprs and not intercept:
            return cls(formula, (), None), np.zeros((len(data), 0))
        try:
            matrix = build_matrix(formula, data)
        except Exception as exc:  # formulae raises bare ValueError/TypeError/NameError
            raise DataError(f"Could not build the {role} columns {formula!r}: {exc}") from exc
        frame = matrix.as_dataframe()
        names = tuple(INTERCEPT if c == "Intercept" else str(c) for c in frame.columns)
        return cls(formula, names, matrix), np.array(frame, dtype=np.float64)

    def apply(self, data: pd.DataFrame, role: str) -> np.ndarray:
        """Evaluate the learned block on new data with the training encodings. Returns (n, k)."""
        if self._matrix is None:
            return np.zeros((len(data), 0))
        try:
            frame = self._matrix.evaluate_new_data(data).as_dataframe()
        except ValueError as exc:
            found = _LEVELS_NOT_PRESENT.search(str(exc))
            if found:
                raise DataError(
                    f"New data has level(s) {found['levels']} of {found['term']} (in the {role}) that the "
                    "training data did not have; a fixed-effect encoding cannot represent them. "
                    "Use the factor as a grouping factor, e.g. (1 | factor), to allow new levels."
                ) from exc
            raise DataError(f"Could not build the {role} columns on new data: {exc}") from exc
        except Exception as exc:
            raise DataError(f"Could not build the {role} columns on new data: {exc}") from exc
        return np.array(frame, dtype=np.float64)
