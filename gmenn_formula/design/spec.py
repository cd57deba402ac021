"""Formula + DataFrame -> DesignSpec (learned encodings) -> Design (arrays).

``design(formula, data)`` learns a :class:`DesignSpec` on the training data and
returns its :class:`Design`; ``spec.apply(new_data)`` re-applies the same
encodings (categorical levels, ``scale()`` moments, grouping levels, classes)
to new data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gmenn_formula.design.columns import ParametricBlock, check_columns, variables
from gmenn_formula.design.grouping import NEW_LEVEL, GroupingFactor
from gmenn_formula.design.response import FAMILIES, ResponseCoder, ResponseData
from gmenn_formula.errors import (
    DataError,
    DataTypeError,
    EmptyDataError,
    FamilyError,
    MissingValueError,
    MissingValueWarning,
    NewLevelError,
    NewLevelWarning,
)
from gmenn_formula.formula import parse
from gmenn_formula.formula.terms import BinomialResponse, Formula, RandomTerm

NA_ACTIONS = ("omit", "raise")


@dataclass(frozen=True)
class RandomEffectDesign:
    """One random-effect term on the rows of a design.

    ``codes`` (n,) int32 level codes (NEW_LEVEL for levels unseen in training),
    ``Z`` (n, p) float64 columns with random coefficients (intercept first),
    ``factor`` the grouping factor's levels (q of them).
    """

    term: RandomTerm
    factor: GroupingFactor
    term_names: tuple[str, ...]
    codes: np.ndarray
    Z: np.ndarray

    @property
    def name(self) -> str:
        return self.factor.name

    @property
    def num_levels(self) -> int:
        return self.factor.num_levels


@dataclass(frozen=True)
class Design:
    """Arrays for the engine; n rows (after dropping rows with missing values).

    ``X_fixed`` (n, k) linear fixed-effect columns named ``fixed_names``;
    ``offset`` (n,); ``X_networks[j]`` (n, d_j) inputs of the j-th ``nn()``;
    ``random`` one entry per random-effect term; ``response`` None when
    predicting without a response; ``rows`` the kept row labels of the data;
    ``new_levels`` rows per grouping factor whose level was unseen in training.
    """

    spec: DesignSpec
    response: ResponseData | None
    X_fixed: np.ndarray
    offset: np.ndarray
    X_networks: tuple[np.ndarray, ...]
    random: tuple[RandomEffectDesign, ...]
    rows: pd.Index
    num_dropped: int = 0
    new_levels: dict[str, int] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @property
    def fixed_names(self) -> tuple[str, ...]:
        return self.spec.fixed.names

    def __repr__(self) -> str:
        return describe(self)


@dataclass(frozen=True)
class RandomSpec:
    """The learned encoding of one random-effect term: its grouping factor's
    levels and the slope columns (re-applied to new data by ``DesignSpec.apply``)."""

    term: RandomTerm
    factor: GroupingFactor
    slopes: ParametricBlock


@dataclass(frozen=True)
class DesignSpec:
    """Encodings learned on training data; ``apply`` re-uses them on new data."""

    formula: Formula
    family: str
    response: ResponseCoder
    fixed: ParametricBlock
    offsets: tuple[ParametricBlock, ...]
    networks: tuple[ParametricBlock, ...]
    network_inputs: tuple[tuple[str, ...], ...]
    random: tuple[RandomSpec, ...]

    @property
    def network_names(self) -> tuple[tuple[str, ...], ...]:
        return tuple(block.names for block in self.networks)

    def apply(
        self,
        data: pd.DataFrame,
        *,
        require_response: bool = False,
        allow_new_levels: bool = True,
        na_action: str = "omit",
        with_random_effects: bool = True,
    ) -> Design:
        """Design of new data with the training encodings.

        The response is encoded when its columns are present (or required).
        Unseen grouping levels get NEW_LEVEL and are counted in
        ``Design.new_levels``, with a NewLevelWarning; with
        ``allow_new_levels=False`` they raise NewLevelError.
        ``with_random_effects=False``: the caller leaves the random effects out
        (lme4's ``re.form = NA``), so unseen levels are neither warned about
        nor refused (they are still coded NEW_LEVEL and counted).
        """
        _check_frame(data)
        has_response = require_response or variables_of_response(self.formula) <= set(data.columns)
        clean, dropped = _complete_rows(data, _used_columns(self.formula, self.network_inputs, has_response), na_action)
        response = self.response.encode(_response_values(self.formula, clean)) if has_response else None
        random = []
        new_levels: dict[str, int] = {}
        for part in self.random:
            codes = part.factor.encode(clean)
            unseen = int((codes == NEW_LEVEL).sum())
            if unseen:
                example = clean.loc[codes == NEW_LEVEL, list(part.factor.columns)].iloc[0].tolist()
                if not allow_new_levels and with_random_effects:
                    raise NewLevelError(
                        f"{unseen} row(s) of the new data have levels of {part.factor.name!r} unseen in training "
                        f"(e.g. {':'.join(map(str, example))!r}). Pass allow_new_levels=True to predict them at the "
                        "population level (random effect 0)."
                    )
                new_levels[part.factor.name] = unseen
            random.append(_random_design(part, codes, part.slopes.apply(clean, _slope_role(part.term))))
        if new_levels and with_random_effects:
            summary = ", ".join(f"{name}: {count} row(s)" for name, count in new_levels.items())
            warnings.warn(f"Levels unseen in training get no random effect ({summary}).", NewLevelWarning, stacklevel=2)
        return Design(
            spec=self,
            response=response,
            X_fixed=self.fixed.apply(clean, "fixed part"),
            offset=_sum_offsets([block.apply(clean, "offset") for block in self.offsets], len(clean)),
            X_networks=tuple(block.apply(clean, "nn() inputs") for block in self.networks),
            random=tuple(random),
            rows=clean.index,
            num_dropped=dropped,
            new_levels=new_levels,
        )


def design(formula: str | Formula, data: pd.DataFrame, family: str | None = None, na_action: str = "omit") -> Design:
    """Learn the encodings of ``formula`` on ``data`` and build the design.

    ``family`` decides how the response is encoded (``None``: binomial for
    ``cbind()``, else gaussian). ``na_action="omit"`` drops rows with missing
    values in any used column with a MissingValueWarning; ``"raise"`` raises.
    ``data`` is never modified.
    """
    parsed = parse(formula) if isinstance(formula, str) else formula
    if not isinstance(parsed, Formula):
        raise DataTypeError(f"formula must be a string or a parsed Formula, not {type(formula).__name__}.")
    family = family or ("binomial" if isinstance(parsed.response, BinomialResponse) else "gaussian")
    if family not in FAMILIES:
        raise FamilyError(f"Unknown family {family!r}; choose one of {', '.join(FAMILIES)}.")
    _check_frame(data)
    network_inputs = _resolve_networks(parsed, data)
    clean, dropped = _complete_rows(data, _used_columns(parsed, network_inputs, True), na_action)
    response_values = _response_values(parsed, clean)
    coder = ResponseCoder.learn(family, parsed.response, response_values)
    fixed, X_fixed = ParametricBlock.learn(tuple(t.expr for t in parsed.fixed), parsed.intercept, clean, "fixed part")
    offsets = [ParametricBlock.learn((o.expr,), False, clean, "offset") for o in parsed.offsets]
    networks = [ParametricBlock.learn(inputs, False, clean, "nn() inputs") for inputs in network_inputs]
    random_specs, random_designs = [], []
    for term in parsed.random:
        factor, codes = GroupingFactor.learn(term.group, clean)
        slopes, Z = ParametricBlock.learn(term.slopes, term.intercept, clean, _slope_role(term))
        spec_part = RandomSpec(term, factor, slopes)
        random_specs.append(spec_part)
        random_designs.append(_random_design(spec_part, codes, Z))
    spec = DesignSpec(
        formula=parsed,
        family=family,
        response=coder,
        fixed=fixed,
        offsets=tuple(block for block, _ in offsets),
        networks=tuple(block for block, _ in networks),
        network_inputs=network_inputs,
        random=tuple(random_specs),
    )
    return Design(
        spec=spec,
        response=coder.encode(response_values),
        X_fixed=X_fixed,
        offset=_sum_offsets([matrix for _, matrix in offsets], len(clean)),
        X_networks=tuple(matrix for _, matrix in networks),
        random=tuple(random_designs),
        rows=clean.index,
        num_dropped=dropped,
    )


def describe(design: Design) -> str:
    """A short text summary of a design: rows, columns, grouping factors."""
    spec = design.spec
    lines = [
        f"Design for: {spec.formula}",
        f"  family: {spec.family}; rows: {design.num_rows}"
        + (f" ({design.num_dropped} dropped for missing values)" if design.num_dropped else ""),
        f"  fixed part: {len(spec.fixed.names)} column(s) {list(spec.fixed.names)}",
    ]
    if spec.response.classes is not None:
        lines.append(f"  response classes: {list(spec.response.classes)}")
    for j, names in enumerate(spec.network_names, start=1):
        lines.append(f"  nn() #{j}: {len(names)} input(s) {list(names)}")
    for part in design.random:
        kind = "correlated" if part.term.correlated or len(part.term_names) == 1 else "uncorrelated"
        lines.append(f"  ({' + '.join(part.term_names)} | {part.name}): {part.num_levels} levels, {kind}")
    for name, count in design.new_levels.items():
        lines.append(f"  new levels of {name}: {count} row(s) get no random effect")
    return "\n".join(lines)


def variables_of_response(formula: Formula) -> set[str]:
    """Data columns the response reads."""
    response = formula.response
    if isinstance(response, BinomialResponse):
        return variables(response.successes) | variables(response.failures)
    return variables(response.expr)


def _slope_role(term: RandomTerm) -> str:
    return f"random-effect term {term}"


def _check_frame(data: object) -> None:
    if not isinstance(data, pd.DataFrame):
        raise DataTypeError(f"data must be a pandas DataFrame, not {type(data).__name__}; wrap it with pandas.DataFrame(...).")
    if len(data) == 0:
        raise EmptyDataError("The data frame has no rows.")


def _resolve_networks(formula: Formula, data: pd.DataFrame) -> tuple[tuple[str, ...], ...]:
    """Inputs of each nn() term, with ``.`` expanded to every column used nowhere else."""
    if not any(net.rest for net in formula.networks):
        return tuple(net.inputs for net in formula.networks)
    used = variables_of_response(formula) | set(formula.grouping_factors)
    for expr in _parametric_exprs(formula, tuple(net.inputs for net in formula.networks)):
        used |= variables(expr)
    rest = tuple(_column_term(data[c], str(c)) for c in data.columns if c not in used)
    if not rest:
        raise DataError("nn(.) found no data columns left over: every column is already used elsewhere in the formula.")
    return tuple((*rest, *net.inputs) if net.rest else net.inputs for net in formula.networks)


def _column_term(values: pd.Series, name: str) -> str:
    """The ``nn(.)`` input of one leftover column: its name, in ``C()`` unless it is numeric."""
    quoted = name if name.isidentifier() else f"`{name}`"
    return quoted if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) else f"C({quoted})"


def is_column_term(text: str) -> bool:
    """Whether ``text`` is an input :func:`_column_term` writes: a column name, bare or in ``C()``."""
    inner = text[2:-1] if text.startswith("C(") and text.endswith(")") else text
    return inner.isidentifier() or (len(inner) > 2 and inner[0] == inner[-1] == "`" and "`" not in inner[1:-1])


def block_exprs(formula: Formula, network_inputs: tuple[tuple[str, ...], ...]) -> list[tuple[tuple[str, ...], bool]]:
    """(expressions, intercept) of every parametric block, in the order fixed part, offsets,
    ``nn()`` inputs, random slopes."""
    blocks = [(tuple(t.expr for t in formula.fixed), formula.intercept)]
    blocks += [((o.expr,), False) for o in formula.offsets]
    blocks += [(inputs, False) for inputs in network_inputs]
    blocks += [(term.slopes, term.intercept) for term in formula.random]
    return blocks


def _parametric_exprs(formula: Formula, network_inputs: tuple[tuple[str, ...], ...]) -> list[str]:
    exprs = [t.expr for t in formula.fixed] + [o.expr for o in formula.offsets]
    exprs += [expr for inputs in network_inputs for expr in inputs]
    exprs += [expr for term in formula.random for expr in term.slopes]
    return exprs


def _used_columns(formula: Formula, network_inputs: tuple[tuple[str, ...], ...], with_response: bool) -> dict[str, str]:
    """Every column the formula reads, mapped to the role it plays (for messages)."""
    roles: dict[str, str] = {}
    if with_response:
        roles.update({name: "response" for name in variables_of_response(formula)})
    roles.update({name: "fixed part" for t in formula.fixed for name in variables(t.expr)})
    roles.update({name: "offset" for o in formula.offsets for name in variables(o.expr)})
    roles.update({name: "nn() inputs" for inputs in network_inputs for e in inputs for name in variables(e)})
    for term in formula.random:
        roles.update({name: f"random slopes of {term}" for e in term.slopes for name in variables(e)})
        roles.update({name: f"grouping factor of {term}" for name in term.group})
    return roles


def _complete_rows(data: pd.DataFrame, roles: dict[str, str], na_action: str) -> tuple[pd.DataFrame, int]:
    """The used columns of the rows with no missing value, and how many rows were dropped."""
    if na_action not in NA_ACTIONS:
        raise DataError(f"na_action must be one of {NA_ACTIONS}, not {na_action!r}.")
    for role in sorted(set(roles.values())):
        check_columns({name for name, r in roles.items() if r == role}, data, role)
    used = data[list(roles)]
    missing = used.isna()
    rows_missing = missing.any(axis=1).to_numpy()
    dropped = int(rows_missing.sum())
    if dropped:
        counts = missing.sum()
        columns = ", ".join(f"{name!r} ({int(n)})" for name, n in counts[counts > 0].items())
        if na_action == "raise":
            raise MissingValueError(f"{dropped} row(s) have missing values in columns {columns}. Drop or impute them, or pass na_action='omit'.")
        if dropped == len(data):
            raise EmptyDataError(f"Every row has a missing value in the used columns {columns}; nothing is left to fit.")
        warnings.warn(f"Dropped {dropped} of {len(data)} row(s) with missing values in columns {columns}.", MissingValueWarning, stacklevel=3)
        used = used.loc[~rows_missing]
    return used, dropped


def _response_values(formula: Formula, data: pd.DataFrame) -> pd.Series | tuple[np.ndarray, np.ndarray]:
    """The response as a Series (a column or an evaluated expression), or cbind's two arrays."""
    response = formula.response
    if isinstance(response, BinomialResponse):
        return tuple(_evaluate(expr, data) for expr in (response.successes, response.failures))
    name = response.expr.strip("`")
    if name in data.columns:
        return data[name]
    return pd.Series(_evaluate(response.expr, data), index=data.index, name=response.expr)


def _evaluate(expr: str, data: pd.DataFrame) -> np.ndarray:
    name = expr.strip("`")
    if name in data.columns and pd.api.types.is_numeric_dtype(data[name]):
        return data[name].to_numpy(dtype=np.float64)
    _, matrix = ParametricBlock.learn((f"I({expr})",), False, data, "response")
    return matrix[:, 0]


def _sum_offsets(matrices: list[np.ndarray], num_rows: int) -> np.ndarray:
    total = np.zeros(num_rows)
    for matrix in matrices:
        total += matrix[:, 0]
    return total


def _random_design(part: RandomSpec, codes: np.ndarray, Z: np.ndarray) -> RandomEffectDesign:
    return RandomEffectDesign(term=part.term, factor=part.factor, term_names=part.slopes.names, codes=codes, Z=Z)
