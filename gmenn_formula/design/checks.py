"""Checks of the data and the formula that run in the design stage, before anything is fitted.

Each check raises a typed error (or warns) that names the column, term, level or rows at fault
and says what to do; none modifies the data. Shapes: ``matrix`` (n, k) with one name per
column, ``rows`` the n row labels of the data.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from gmenn_formula.design.grouping import GroupingFactor
from gmenn_formula.errors import DataError, GroupingFactorError, ModelSpecificationError, ScaleWarning
from gmenn_formula.families import Family
from gmenn_formula.formula.terms import RandomTerm

GROUPING_ROLE = "grouping factor of"
"""How the design stage's column roles start for a column used only as a grouping factor."""

SHOWN_ROWS = 5
"""Row labels a message lists."""

EXTREME_SCALE = 1e8
"""Largest |value| of a fixed, ``nn()`` or slope column before a ScaleWarning (float32 keeps ~7 digits)."""

RANK_TOLERANCE = 1e-12
"""Fixed columns count as collinear when the smallest eigenvalue of their Gram matrix (columns
scaled to unit length) is below this fraction of the largest (singular values 1e-6 apart)."""


def row_labels(rows: pd.Index, bad: np.ndarray) -> str:
    """The first row labels where ``bad`` (n,) is True and their count, e.g. ``[3, 7] (2 of 10 rows)``."""
    shown = ", ".join(repr(label) for label in rows[bad][:SHOWN_ROWS].tolist())
    more = ", ..." if bad.sum() > SHOWN_ROWS else ""
    return f"[{shown}{more}] ({int(bad.sum())} of {len(rows)} rows)"


def check_column_kinds(data: pd.DataFrame, roles: dict[str, str]) -> None:
    """DataError for a used column (``roles``: name -> role) that the data names twice, that holds
    dates or complex numbers where the formula needs numbers or labels, or that mixes value types."""
    duplicated = set(data.columns[data.columns.duplicated()])
    repeated = [name for name in roles if name in duplicated]
    if repeated:
        raise DataError(
            f"The data has more than one column named {', '.join(repr(str(name)) for name in repeated)}, which the "
            "formula uses, so it is ambiguous which is meant. Rename or drop the duplicates, "
            "e.g. data.loc[:, ~data.columns.duplicated()]."
        )
    for name, role in roles.items():
        values = data[name]
        where = f"Column {name!r} (used in the {role})"
        if not role.startswith(GROUPING_ROLE) and _is_temporal(values):
            raise DataError(
                f"{where} holds dates or times ({values.dtype}), which the formula cannot use as numbers. Convert it "
                f"first, e.g. to days since the first date: (data[{name!r}] - data[{name!r}].min()).dt.days."
            )
        if pd.api.types.is_complex_dtype(values):
            raise DataError(f"{where} holds complex numbers; put the real and imaginary parts in two real columns.")
        if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) in ("mixed", "mixed-integer"):
            first, other = _two_types(values)
            raise DataError(
                f"{where} mixes value types, e.g. {first!r} ({type(first).__name__}) and {other!r} "
                f"({type(other).__name__}). Make it one type: data[{name!r}].astype(str) for labels, or "
                f"pd.to_numeric(data[{name!r}]) for numbers."
            )


def _is_temporal(values: pd.Series) -> bool:
    return (
        pd.api.types.is_datetime64_any_dtype(values)
        or pd.api.types.is_timedelta64_dtype(values)
        or isinstance(values.dtype, pd.PeriodDtype)
    )


def _two_types(values: pd.Series) -> tuple[object, object]:
    """The first value and the first value of another type among the non-missing values."""
    present = values.dropna()
    first = present.iloc[0]
    other = next(v for v in present if type(v) is not type(first))
    return first, other


def check_finite(role: str, names: Sequence[str], matrix: np.ndarray, rows: pd.Index) -> None:
    """DataError naming the first column of ``matrix`` (n, k) with an infinite or NaN value, and its rows."""
    bad = ~np.isfinite(matrix)
    if not bad.any():
        return
    column = int(np.argmax(bad.any(axis=0)))
    at = bad[:, column]
    found = sorted({str(value) for value in matrix[at, column]})
    raise DataError(
        f"The {role} column {names[column]!r} is not finite ({', '.join(found)}) at row(s) {row_labels(rows, at)}. "
        "Missing values are dropped before the design is built, but infinite values, and values a transform "
        "cannot take (log or sqrt of 0 or a negative number), are not: fix or drop those rows, or change the transform."
    )


def warn_extreme_scale(blocks: Iterable[tuple[str, Sequence[str], np.ndarray]]) -> None:
    """One ScaleWarning naming every column (of the (role, names, (n, k) matrix) blocks) beyond EXTREME_SCALE."""
    found = [
        f"{name!r} in the {role} (max |value| {largest:.3g})"
        for role, names, matrix in blocks
        if matrix.size
        for name, largest in zip(names, np.abs(matrix).max(axis=0))
        if largest > EXTREME_SCALE
    ]
    if found:
        warnings.warn(
            f"Column(s) {', '.join(found)} are on an extreme scale; the networks and the linear predictor are "
            "computed in float32, which keeps about 7 digits. Rescale them, e.g. scale(x) in the formula.",
            ScaleWarning,
            stacklevel=3,
        )


def check_fixed_rank(names: Sequence[str], X: np.ndarray) -> None:
    """DataError naming the columns of the fixed part ``X`` (n, k) that are all zero or collinear
    (a constant column beside the intercept, a column repeated or a sum of others)."""
    if X.shape[1] == 0:
        return
    norms = np.linalg.norm(X, axis=0)
    if (norms == 0).any():
        zero = [repr(names[j]) for j in np.flatnonzero(norms == 0)]
        raise DataError(f"The fixed-effect column(s) {', '.join(zero)} are zero in every row, so they have no coefficient to estimate; drop them.")
    gram = (X.T @ X) / np.outer(norms, norms)
    values, vectors = np.linalg.eigh(gram)
    if values[0] > RANK_TOLERANCE * values[-1]:
        return
    weights = np.abs(vectors[:, 0])
    involved = ", ".join(repr(names[j]) for j in np.flatnonzero(weights > 1e-3 * weights.max()))
    raise DataError(
        f"The fixed-effect columns {involved} are collinear in the data (one is a linear combination of the others; "
        "a constant column repeats the intercept), so their coefficients cannot be estimated. Drop one of them, "
        "or write 0 + ... to remove the intercept."
    )


def check_random_terms(terms: Sequence[RandomTerm]) -> None:
    """ModelSpecificationError when a grouping factor gets the same random coefficient in two terms,
    e.g. ``(1 | g) + (1 | g)``."""
    seen: dict[tuple[frozenset[str], str], RandomTerm] = {}
    for term in terms:
        for name in term.term_names:
            key = (frozenset(term.group), name)
            if key in seen:
                group = ":".join(term.group)
                raise ModelSpecificationError(
                    f"The random effect {name!r} of grouping factor {group!r} appears twice, in {seen[key]} and in {term}; "
                    f"a coefficient can have only one variance. Remove the repeated term (write (1 + x | {group}) once, "
                    f"or (1 | {group}) + (0 + x | {group}) for uncorrelated effects)."
                )
            seen[key] = term


def check_response_not_input(response: set[str], roles: dict[str, str]) -> None:
    """ModelSpecificationError when a column of the ``response`` is also read on the right side
    (``roles``: column -> role of every other column the formula uses)."""
    both = sorted(response & set(roles))
    if both:
        raise ModelSpecificationError(
            f"The response column {both[0]!r} is also used in the {roles[both[0]]}; a model cannot predict the "
            f"response from itself. Remove {both[0]!r} from the right side of '~'."
        )


def check_levels_vs_rows(factors: Sequence[GroupingFactor], num_rows: int, family: Family) -> None:
    """GroupingFactorError when a factor has one level per row in a family with a residual variance,
    which that factor's random effect cannot be told apart from."""
    if not family.has_dispersion:
        return
    for factor in factors:
        if factor.num_levels >= num_rows:
            raise GroupingFactorError(
                f"Grouping factor {factor.name!r} has one level per row ({factor.num_levels} levels, {num_rows} rows): in "
                f"a {family.name} model its random effect cannot be told apart from the residual error. Drop the term "
                f"'(... | {factor.name})', or use a family without a residual variance (e.g. poisson)."
            )
