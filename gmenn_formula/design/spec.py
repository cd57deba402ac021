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

from gmenn_formula.design import checks
from gmenn_formula.design.columns import INTERCEPT, ParametricBlock, check_columns, variables
from gmenn_formula.design.grouping import NEW_LEVEL, GroupingFactor
from gmenn_formula.design.response import ResponseCoder, ResponseData
from gmenn_formula.errors import (
    DataError,
    DataTypeError,
    EmptyDataError,
    MissingValueError,
    MissingValueWarning,
    NewLevelError,
    NewLevelWarning,
)
from gmenn_formula.families import Family, get_family
from gmenn_formula.formula import parse
from gmenn_formula.formula.terms import BinomialResponse, Formula, NetworkTerm, RandomTerm

NA_ACTIONS = ("omit", "raise")
"""What ``design()`` does with rows that have missing values. ``DesignSpec.apply`` also takes
"pass" (lme4's ``na.pass`` at prediction): such rows are left out of the arrays, marked in
``Design.kept``, and get NaN predictions."""


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

    @property
    def correlated(self) -> bool:
        """Whether the term's p x p covariance is full (``|``) rather than diagonal (``||``)."""
        return self.term.correlated or len(self.term_names) == 1


@dataclass(frozen=True)
class Design:
    """Arrays for the engine; n rows (after dropping rows with missing values).

    ``X_fixed`` (n, k) linear fixed-effect columns named ``fixed_names`` (with
    ``nn()`` terms the intercept is the networks' output bias, so it has no
    column); ``offset`` (n,); ``X_networks[j]`` (n, d_j) inputs of the j-th
    ``nn()``; ``random`` one entry per random-effect term; ``response`` None
    when predicting without a response; ``rows`` the kept row labels of the
    data; ``kept`` (N,) bool over the N rows of the data passed in, True for the rows in the
    design (None for a model read from a file); ``new_levels`` rows per grouping factor whose
    level was unseen in training.
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
    kept: np.ndarray | None = None

    @classmethod
    def without_rows(cls, spec: DesignSpec, num_dropped: int = 0) -> Design:
        """A design with ``spec``'s columns and grouping factors but no rows (a model read from a
        file, or fit by processes that each held a shard of the rows)."""
        random = tuple(
            RandomEffectDesign(part.term, part.factor, part.slopes.names, np.zeros(0, np.int32), np.zeros((0, len(part.slopes.names))))
            for part in spec.random
        )
        return cls(
            spec=spec,
            response=None,
            X_fixed=np.zeros((0, len(spec.fixed_names))),
            offset=np.zeros(0),
            X_networks=tuple(np.zeros((0, len(net.block.names))) for net in spec.networks),
            random=random,
            rows=pd.RangeIndex(0),
            num_dropped=num_dropped,
        )

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @property
    def fixed_names(self) -> tuple[str, ...]:
        return self.spec.fixed_names

    @property
    def family(self) -> Family:
        return self.spec.family

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
class NetworkSpec:
    """One ``nn()`` term: its options (``term``), its resolved inputs (``nn(.)`` expanded)
    and their learned encoding (``block``, one column per network input)."""

    term: NetworkTerm
    inputs: tuple[str, ...]
    block: ParametricBlock


@dataclass(frozen=True)
class DesignSpec:
    """Encodings learned on training data; ``apply`` re-uses them on new data.

    ``formula`` is kept for printing and saving; the structure of the model is in
    the other fields, which is what the engine and the results read.
    """

    formula: Formula
    family: Family
    response: ResponseCoder
    fixed: ParametricBlock
    offsets: tuple[ParametricBlock, ...]
    networks: tuple[NetworkSpec, ...]
    random: tuple[RandomSpec, ...]

    @property
    def fixed_names(self) -> tuple[str, ...]:
        """The linear fixed effects: the fixed block's columns, less the intercept when ``nn()``
        terms are present (their output bias is the intercept; a categorical term keeps the
        coding it has beside an intercept)."""
        names = self.fixed.names
        return names[1:] if self.networks and names[:1] == (INTERCEPT,) else names

    @property
    def num_outputs(self) -> int:
        """Columns c of the linear predictor."""
        return self.family.num_outputs(len(self.response.classes) if self.response.classes else None)

    def apply(
        self,
        data: pd.DataFrame,
        *,
        response: bool | None = None,
        allow_new_levels: bool = True,
        na_action: str = "omit",
        with_random_effects: bool = True,
    ) -> Design:
        """Design of new data with the training encodings.

        ``response``: None encodes the response when its columns are present, True requires
        it, False ignores its columns (prediction: missing or placeholder values drop nothing).
        ``na_action``: one of :data:`NA_ACTIONS`, or "pass".
        Unseen grouping levels get NEW_LEVEL and are counted in
        ``Design.new_levels``, with a NewLevelWarning; with
        ``allow_new_levels=False`` they raise NewLevelError.
        ``with_random_effects=False``: the caller leaves the random effects out
        (lme4's ``re.form = NA``), so unseen levels are neither warned about
        nor refused (they are still coded NEW_LEVEL and counted).
        """
        _check_frame(data)
        _check_na_action(na_action, (*NA_ACTIONS, "pass"))
        has_response = response if response is not None else variables_of_response(self.formula) <= set(data.columns)
        inputs = tuple(net.inputs for net in self.networks)
        clean, kept = _complete_rows(data, _used_columns(self.formula, inputs, has_response), na_action)
        encoded = self.response.encode(_response_values(self.formula, clean)) if has_response else None
        matrices = [block.apply(clean, role) for block, role in zip(self._blocks(), _roles(self.formula))]
        codes = [part.factor.encode(clean) for part in self.random]
        new_levels = _new_levels(self, clean, codes, refuse=not allow_new_levels and with_random_effects)
        if new_levels and with_random_effects:
            summary = ", ".join(f"{name}: {count} row(s)" for name, count in new_levels.items())
            warnings.warn(f"Levels unseen in training get no random effect ({summary}).", NewLevelWarning, stacklevel=2)
        return _assemble(self, clean, kept, encoded, matrices, codes, new_levels)

    def column_roles(self) -> dict[str, str]:
        """Every data column the model reads -> its role ("response", "fixed part", "nn() inputs",
        "random slopes of ...", or the grouping role), as error messages name it."""
        return _used_columns(self.formula, tuple(net.inputs for net in self.networks), True)

    def _blocks(self) -> list[ParametricBlock]:
        """Every parametric block, in :func:`block_exprs`'s order."""
        return [self.fixed, *self.offsets, *(net.block for net in self.networks), *(part.slopes for part in self.random)]


def design(formula: str | Formula, data: pd.DataFrame, family: str | Family | None = None, na_action: str = "omit") -> Design:
    """Learn the encodings of ``formula`` on ``data`` and build the design.

    ``family`` decides how the response is encoded (``None``: binomial for
    ``cbind()``, else gaussian). ``na_action="omit"`` drops rows with missing
    values in any used column with a MissingValueWarning; ``"raise"`` raises.
    ``data`` is never modified. Data the model cannot be fitted to (non-finite values,
    collinear fixed columns, a factor with one level per row, ...) raises here, before any
    fitting: see :mod:`gmenn_formula.design.checks`.
    """
    parsed = parse(formula) if isinstance(formula, str) else formula
    if not isinstance(parsed, Formula):
        raise DataTypeError(f"formula must be a string or a parsed Formula, not {type(formula).__name__}.")
    resolved = get_family(family or ("binomial" if isinstance(parsed.response, BinomialResponse) else "gaussian"))
    _check_frame(data)
    _check_na_action(na_action, NA_ACTIONS)
    checks.check_random_terms(parsed.random)
    network_inputs = _resolve_networks(parsed, data)
    checks.check_response_not_input(_response_targets(parsed), _used_columns(parsed, network_inputs, False))
    clean, kept = _complete_rows(data, _used_columns(parsed, network_inputs, True), na_action)
    response_values = _response_values(parsed, clean)
    coder = ResponseCoder.learn(resolved.name, parsed.response, response_values)
    learned = [
        ParametricBlock.learn(exprs, intercept, clean, role)
        for (exprs, intercept), role in zip(block_exprs(parsed, network_inputs), _roles(parsed))
    ]
    blocks = [block for block, _ in learned]
    factors, codes = zip(*(GroupingFactor.learn(term.group, clean) for term in parsed.random)) if parsed.random else ((), ())
    checks.check_levels_vs_rows(factors, len(clean), resolved)
    num_offsets, num_networks = len(parsed.offsets), len(parsed.networks)
    spec = DesignSpec(
        formula=parsed,
        family=resolved,
        response=coder,
        fixed=blocks[0],
        offsets=tuple(blocks[1 : 1 + num_offsets]),
        networks=tuple(
            NetworkSpec(term, inputs, block)
            for term, inputs, block in zip(parsed.networks, network_inputs, blocks[1 + num_offsets :])
        ),
        random=tuple(
            RandomSpec(term, factor, block)
            for term, factor, block in zip(parsed.random, factors, blocks[1 + num_offsets + num_networks :])
        ),
    )
    matrices = [matrix for _, matrix in learned]
    result = _assemble(spec, clean, kept, coder.encode(response_values), matrices, list(codes), {})
    checks.check_fixed_rank(spec.fixed.names, matrices[0])
    roles = _roles(parsed)
    checks.warn_extreme_scale(
        (role, block.names, matrix) for role, block, matrix in zip(roles, blocks, matrices) if role != "offset"
    )
    return result


def _assemble(
    spec: DesignSpec,
    clean: pd.DataFrame,
    kept: np.ndarray,
    response: ResponseData | None,
    matrices: list[np.ndarray],
    codes: list[np.ndarray],
    new_levels: dict[str, int],
) -> Design:
    """The Design of rows ``clean`` (the ``kept`` rows of the data) from their block matrices (in
    :func:`block_exprs`'s order) and grouping codes: the one place where training data and new
    data become engine arrays, and where every column is checked to be finite."""
    for block, role, matrix in zip(spec._blocks(), _roles(spec.formula), matrices):
        checks.check_finite(role, block.names, matrix, clean.index)
    num_offsets, num_networks = len(spec.offsets), len(spec.networks)
    fixed = matrices[0][:, len(spec.fixed.names) - len(spec.fixed_names) :]
    offsets = matrices[1 : 1 + num_offsets]
    random = tuple(
        RandomEffectDesign(term=part.term, factor=part.factor, term_names=part.slopes.names, codes=part_codes, Z=Z)
        for part, part_codes, Z in zip(spec.random, codes, matrices[1 + num_offsets + num_networks :])
    )
    return Design(
        spec=spec,
        response=response,
        X_fixed=fixed,
        offset=np.sum([matrix[:, 0] for matrix in offsets], axis=0) if offsets else np.zeros(len(clean)),
        X_networks=tuple(matrices[1 + num_offsets : 1 + num_offsets + num_networks]),
        random=random,
        rows=clean.index,
        num_dropped=int((~kept).sum()),
        new_levels=new_levels,
        kept=kept,
    )


def _new_levels(spec: DesignSpec, clean: pd.DataFrame, codes: list[np.ndarray], refuse: bool) -> dict[str, int]:
    """Rows per grouping factor whose level training did not see; NewLevelError if ``refuse``."""
    new_levels: dict[str, int] = {}
    for part, part_codes in zip(spec.random, codes):
        unseen = int((part_codes == NEW_LEVEL).sum())
        if not unseen:
            continue
        if refuse:
            example = clean.loc[part_codes == NEW_LEVEL, list(part.factor.columns)].iloc[0].tolist()
            raise NewLevelError(
                f"{unseen} row(s) of the new data have levels of {part.factor.name!r} unseen in training "
                f"(e.g. {':'.join(map(str, example))!r}). Pass allow_new_levels=True to predict them at the "
                "population level (random effect 0)."
            )
        new_levels[part.factor.name] = unseen
    return new_levels


def describe(design: Design) -> str:
    """A short text summary of a design: rows, columns, grouping factors."""
    spec = design.spec
    lines = [
        f"Design for: {spec.formula}",
        f"  family: {spec.family.name}; rows: {design.num_rows}"
        + (f" ({design.num_dropped} dropped for missing values)" if design.num_dropped else ""),
        f"  fixed part: {len(spec.fixed_names)} column(s) {list(spec.fixed_names)}",
    ]
    if spec.response.classes is not None:
        lines.append(f"  response classes: {list(spec.response.classes)}")
    for j, net in enumerate(spec.networks, start=1):
        lines.append(f"  nn() #{j}: {len(net.block.names)} input(s) {list(net.block.names)}")
    for part in design.random:
        kind = "correlated" if part.correlated else "uncorrelated"
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


def _response_targets(formula: Formula) -> set[str]:
    """Data columns holding what is modelled: the response's, only the successes' for
    ``cbind()`` (its trials may also be a predictor)."""
    response = formula.response
    return variables(response.successes) if isinstance(response, BinomialResponse) else variables(response.expr)


def _roles(formula: Formula) -> list[str]:
    """The role of every parametric block in messages, in :func:`block_exprs`'s order."""
    roles = ["fixed part", *("offset" for _ in formula.offsets), *("nn() inputs" for _ in formula.networks)]
    return roles + [f"random-effect term {term}" for term in formula.random]


def _check_frame(data: object) -> None:
    if not isinstance(data, pd.DataFrame):
        raise DataTypeError(f"data must be a pandas DataFrame, not {type(data).__name__}; wrap it with pandas.DataFrame(...).")
    if len(data) == 0:
        raise EmptyDataError("The data frame has no rows.")


def _check_na_action(na_action: str, allowed: tuple[str, ...]) -> None:
    if na_action not in allowed:
        raise DataError(f"na_action must be one of {allowed}, not {na_action!r}.")


def _resolve_networks(formula: Formula, data: pd.DataFrame) -> tuple[tuple[str, ...], ...]:
    """Inputs of each nn() term, with ``.`` expanded to every column used nowhere else."""
    if not any(net.rest for net in formula.networks):
        return tuple(net.inputs for net in formula.networks)
    used = variables_of_response(formula) | set(formula.grouping_factors)
    for exprs, _ in block_exprs(formula, tuple(net.inputs for net in formula.networks)):
        used |= {name for expr in exprs for name in variables(expr)}
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
    for term in formula.random:  # a column also used in a parametric role keeps that role
        for name in term.group:
            roles.setdefault(name, f"{checks.GROUPING_ROLE} {term}")
    return roles


def _complete_rows(data: pd.DataFrame, roles: dict[str, str], na_action: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The used columns of the rows with no missing value, and which rows those are ((N,) bool)."""
    for role in sorted(set(roles.values())):
        check_columns({name for name, r in roles.items() if r == role}, data, role)
    checks.check_column_kinds(data, roles)
    used = data[list(roles)]
    missing = used.isna()
    rows_missing = missing.any(axis=1).to_numpy()
    dropped = int(rows_missing.sum())
    if dropped:
        counts = missing.sum()
        columns = ", ".join(f"{name!r} ({int(n)})" for name, n in counts[counts > 0].items())
        if na_action == "raise":
            raise MissingValueError(f"{dropped} row(s) have missing values in columns {columns}. Drop or impute them, or pass na_action='omit'.")
        if na_action == "pass":
            message = f"{dropped} of {len(data)} row(s) have missing values in columns {columns}; their predictions are NaN."
        elif dropped == len(data):
            raise EmptyDataError(f"Every row has a missing value in the used columns {columns}; nothing is left to fit.")
        else:
            message = f"Dropped {dropped} of {len(data)} row(s) with missing values in columns {columns}."
        warnings.warn(message, MissingValueWarning, stacklevel=3)
        used = used.loc[~rows_missing]
    return used, ~rows_missing


def _response_values(formula: Formula, data: pd.DataFrame) -> pd.Series | tuple[np.ndarray, np.ndarray]:
    """The response as a Series (a column or an evaluated expression), or cbind's two arrays;
    DataError when a numeric response is not finite."""
    response = formula.response
    if isinstance(response, BinomialResponse):
        parts = tuple(_evaluate(expr, data) for expr in (response.successes, response.failures))
        checks.check_finite("response", (response.successes, response.failures), np.column_stack(parts), data.index)
        return parts
    name = response.expr.strip("`")
    values = data[name] if name in data.columns else pd.Series(_evaluate(response.expr, data), index=data.index, name=response.expr)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        checks.check_finite("response", (response.expr,), values.to_numpy(dtype=np.float64)[:, None], data.index)
    return values


def _evaluate(expr: str, data: pd.DataFrame) -> np.ndarray:
    name = expr.strip("`")
    if name in data.columns and pd.api.types.is_numeric_dtype(data[name]):
        return data[name].to_numpy(dtype=np.float64)
    _, matrix = ParametricBlock.learn((f"I({expr})",), False, data, "response")
    return matrix[:, 0]
