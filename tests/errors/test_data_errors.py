"""Bad data gives a typed error (or warning) in the design stage, before any fitting, naming the
column, term, level or rows at fault; the data passed in is never modified. Ends with
hypothesis fuzzing of the formula grammar through parse() and design()."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gmenn_formula as gf
from gmenn_formula.errors import (
    DataError,
    FormulaSyntaxError,
    GmennError,
    GroupingFactorError,
    MissingValueWarning,
    ModelSpecificationError,
    ScaleWarning,
)

ROWS = [f"r{i}" for i in range(12)]


def frame() -> pd.DataFrame:
    """12 rows labelled r0..r11: numbers x, z (negatives), t (a 0), counts k of n, factors g (3 levels),
    h (2), ids (one per row), a constant, dates, class labels."""
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "y": np.round(rng.normal(size=12), 3),
            "x": np.round(rng.uniform(0.5, 3.0, 12), 3),
            "z": np.round(rng.normal(size=12), 3),
            "t": np.arange(12.0),
            "k": rng.integers(0, 4, 12),
            "n": np.full(12, 4),
            "g": np.tile(["a", "b", "c"], 4),
            "h": np.repeat(["u", "v"], 6),
            "id": np.arange(12),
            "c0": np.full(12, 2.5),
            "zero": np.zeros(12),
            "gf": np.tile([1.5, 2.5, 3.5], 4),
            "gi": np.tile([1.0, 2.0, 3.0], 4),
            "d": pd.date_range("2024-01-01", periods=12),
            "cls": np.tile(["lo", "mid", "hi"], 4),
        },
        index=ROWS,
    )


def at(column: str, row: str, value: object):
    """A change of the data: ``column`` at row label ``row`` set to ``value`` (on a copy)."""

    def change(data: pd.DataFrame) -> pd.DataFrame:
        data = data.astype({column: np.float64})
        data.loc[row, column] = value
        return data

    return change


def assign(**columns):
    return lambda data: data.assign(**columns)


def duplicate(column: str):
    return lambda data: pd.concat([data, data[[column]] * 2], axis=1)


def same(data: pd.DataFrame) -> pd.DataFrame:
    return data


# (id, formula, family, change of the data, error, phrases the message must hold)
CASES = [
    # 1. values that are not finite after na_action and the transforms
    ("log-of-zero-fixed", "y ~ log(t) + (1 | g)", None, same, DataError, ["fixed part column 'log(t)'", "-inf", "'r0'"]),
    ("inf-fixed", "y ~ x + (1 | g)", None, at("x", "r4", np.inf), DataError, ["fixed part column 'x'", "inf", "'r4'"]),
    ("inf-interaction", "y ~ x:z + (1 | g)", None, at("z", "r5", -np.inf), DataError, ["'x:z'", "'r5'"]),
    ("inf-nn-input", "y ~ nn(x + z) + (1 | g)", None, at("z", "r2", -np.inf), DataError, ["nn() inputs column 'z'", "'r2'"]),
    ("sqrt-negative-nn", "y ~ nn(sqrt(z)) + (1 | g)", None, same, DataError, ["nn() inputs column 'sqrt(z)'", "nan"]),
    ("inf-slope", "y ~ z + (0 + x | g)", None, at("x", "r7", np.inf), DataError, ["random-effect term (0 + x | g) column 'x'", "'r7'"]),
    ("log-of-zero-offset", "k ~ x + offset(log(t)) + (1 | g)", "poisson", same, DataError, ["offset column 'log(t)'", "'r0'"]),
    ("inf-response", "y ~ x + (1 | g)", None, at("y", "r9", np.inf), DataError, ["response column 'y'", "'r9'"]),
    ("log-response-nan", "log(y) ~ x + (1 | g)", None, same, DataError, ["response column 'log(y)'", "nan"]),
    ("inf-poisson-response", "k ~ x + (1 | g)", "poisson", at("k", "r3", np.inf), DataError, ["response column 'k'", "'r3'"]),
    ("inf-cbind-trials", "cbind(k, n - k) ~ x + (1 | g)", None, at("n", "r6", np.inf), DataError, ["response column 'n - k'", "'r6'"]),
    ("many-rows-listed", "y ~ log(z) + (1 | g)", None, same, DataError, ["log(z)", "of 12 rows"]),
    # 2a. a grouping factor with one level per row, in a family with a residual variance
    ("one-row-per-level", "y ~ x + (1 | id)", None, same, GroupingFactorError, ["'id'", "one level per row", "Drop the term"]),
    ("one-row-per-nested-level", "y ~ x + (1 | g/id)", None, same, GroupingFactorError, ["'g:id'", "one level per row"]),
    ("one-row-per-level-slope", "y ~ x + (1 + x | id)", None, same, GroupingFactorError, ["'id'", "residual"]),
    # 2b. a float column that is not an id
    ("float-grouping", "y ~ x + (1 | gf)", None, same, GroupingFactorError, ["'gf'", "not whole", "1.5", "integer or string ids"]),
    ("float-grouping-interaction", "y ~ x + (1 | g:gf)", None, same, GroupingFactorError, ["'gf'", "not whole"]),
    ("inf-grouping", "y ~ x + (1 | gi)", None, at("gi", "r1", np.inf), GroupingFactorError, ["'gi'", "inf"]),
    # 2c. the response on the right side
    ("response-fixed", "y ~ y + (1 | g)", None, same, ModelSpecificationError, ["response column 'y'", "fixed part"]),
    ("response-nn", "y ~ nn(x + y) + (1 | g)", None, same, ModelSpecificationError, ["'y'", "nn() inputs"]),
    ("response-slope", "y ~ x + (0 + y | g)", None, same, ModelSpecificationError, ["'y'", "random slopes"]),
    ("response-offset", "k ~ x + offset(k) + (1 | g)", "poisson", same, ModelSpecificationError, ["'k'", "offset"]),
    ("response-transformed", "log(x) ~ scale(x) + (1 | g)", None, same, ModelSpecificationError, ["'x'", "fixed part"]),
    ("response-grouping", "k ~ x + (1 | k)", "poisson", same, ModelSpecificationError, ["'k'", "grouping factor"]),
    ("cbind-successes", "cbind(k, n - k) ~ k + (1 | g)", None, same, ModelSpecificationError, ["'k'", "fixed part"]),
    # 2d. collinear fixed columns
    ("constant-column", "y ~ x + c0 + (1 | g)", None, same, DataError, ["'(Intercept)', 'c0'", "collinear"]),
    ("constant-beside-nn", "y ~ c0 + nn(x) + (1 | g)", None, same, DataError, ["'(Intercept)', 'c0'"]),
    ("repeated-column", "y ~ x + I(2 * x) + (1 | g)", None, same, DataError, ["'x', 'I(2 * x)'"]),
    ("sum-of-columns", "y ~ x + z + I(x + z) + (1 | g)", None, same, DataError, ["'x', 'z', 'I(x + z)'"]),
    ("aliased-factors", "y ~ C(h) + C(h2) + (1 | g)", None, assign(h2=np.repeat(["p", "q"], 6)), DataError, ["'C(h)[v]', 'C(h2)[q]'"]),
    ("zero-column", "y ~ x + zero + (1 | g)", None, same, DataError, ["'zero'", "zero in every row"]),
    # 2e. a random term twice
    ("same-term-twice", "y ~ x + (1 | g) + (1 | g)", None, same, ModelSpecificationError, ["'(Intercept)' of grouping factor 'g' appears twice"]),
    ("same-slope-twice", "y ~ x + (x | g) + (0 + x | g)", None, same, ModelSpecificationError, ["'x' of grouping factor 'g'"]),
    ("nesting-repeats-outer", "y ~ x + (1 | g/h) + (1 | g)", None, same, ModelSpecificationError, ["grouping factor 'g' appears twice"]),
    ("interaction-either-order", "y ~ x + (1 | g:h) + (1 | h:g)", None, same, ModelSpecificationError, ["appears twice", "(1 | g:h)"]),
    # 4. data the formula cannot read
    ("mixed-categorical-response", "m ~ x + (1 | g)", "categorical", assign(m=["a", 1] * 6), DataError, ["'m'", "mixes value types", "astype(str)"]),
    ("mixed-binomial-response", "m ~ x + (1 | g)", "binomial", assign(m=["a", 1] * 6), DataError, ["'m'", "mixes value types"]),
    ("mixed-fixed", "y ~ C(m) + (1 | g)", None, assign(m=["a", 1] * 6), DataError, ["'m'", "fixed part", "str", "int"]),
    ("mixed-grouping", "y ~ x + (1 | m)", None, assign(m=["a", 1, 2] * 4), DataError, ["'m'", "grouping factor"]),
    ("duplicate-column", "y ~ x + (1 | g)", None, duplicate("x"), DataError, ["more than one column named 'x'"]),
    ("duplicate-column-dot", "y ~ nn(.) + (1 | g)", None, duplicate("z"), DataError, ["more than one column named 'z'"]),
    ("datetime-fixed", "y ~ d + (1 | g)", None, same, DataError, ["Column 'd'", "fixed part", "dates", ".dt.days"]),
    ("datetime-nn", "y ~ nn(x + d) + (1 | g)", None, same, DataError, ["Column 'd'", "nn() inputs", "dates"]),
    ("timedelta-slope", "y ~ x + (0 + w | g)", None, lambda data: data.assign(w=data["d"] - data["d"].min()), DataError, ["'w'", "timedelta"]),
    ("complex-fixed", "y ~ x + w + (1 | g)", None, assign(w=np.arange(12) * 1j), DataError, ["'w'", "complex"]),
]


@pytest.mark.parametrize(("formula", "family", "change", "error", "phrases"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_data_is_a_clear_error(formula, family, change, error, phrases) -> None:
    data = change(frame())
    before = data.copy(deep=True)
    with warnings.catch_warnings(), pytest.raises(error) as caught:
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's own log(0) / sqrt(-1) warnings
        gf.design(formula, data, family=family)
    message = str(caught.value)
    assert isinstance(caught.value, GmennError)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    pd.testing.assert_frame_equal(data, before)


@pytest.mark.parametrize(
    ("formula", "family", "change"),
    [
        ("y ~ x + (1 | g) + (0 + x | g)", None, same),
        ("y ~ 0 + c0 + x + (1 | g)", None, same),
        ("k ~ x + (1 | id)", "poisson", same),
        ("y ~ x + (1 | gi)", None, same),
        ("y ~ x + (1 | d)", None, lambda data: data.assign(d=np.repeat(pd.date_range("2024-01-01", periods=4), 3))),
        ("cbind(k, n - k) ~ log(n + x) + (1 | g)", None, same),
        ("y ~ nn(.) + (1 | g)", None, lambda data: data[["y", "x", "z", "g"]]),
        ("y ~ x + (1 | g)", None, at("z", "r1", np.inf)),  # an unused column may hold anything
    ],
    ids=["split-slope", "no-intercept-constant", "observation-level-poisson", "whole-float-ids", "dates-as-groups", "trials-as-input", "dot", "unused-inf"],
)
def test_sound_designs_pass(formula, family, change) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        design = gf.design(formula, change(frame()), family=family)
    assert design.num_rows == 12


def test_nn_dot_leaves_out_the_response() -> None:
    design = gf.design("y ~ nn(.) + (1 | g)", frame()[["y", "x", "z", "g"]])
    assert design.spec.networks[0].inputs == ("x", "z")


def test_missing_values_are_dropped_before_the_finite_check() -> None:
    data = frame()
    data.loc["r3", "x"] = np.nan
    with pytest.warns(MissingValueWarning, match="Dropped 1 of 12"):
        assert gf.design("y ~ x + (1 | g)", data).num_rows == 11


@pytest.mark.parametrize(
    ("formula", "change", "column"),
    [
        ("y ~ x + (1 | g)", lambda data: data.assign(x=data["x"] * 1e9), "'x' in the fixed part"),
        ("y ~ nn(x + z) + (1 | g)", lambda data: data.assign(z=data["z"] * 1e10), "'z' in the nn() inputs"),
        ("y ~ x + (0 + z | g)", lambda data: data.assign(z=data["z"] * 1e10), "'z' in the random-effect term (0 + z | g)"),
    ],
    ids=["fixed", "nn", "slope"],
)
def test_extreme_scale_warns(formula, change, column) -> None:
    with pytest.warns(ScaleWarning, match="scale") as caught:
        gf.design(formula, change(frame()))
    assert column in str(caught[0].message)


@pytest.mark.parametrize(
    "formula",
    ["y ~ log(t) + (1 | g)", "y ~ x + (1 | id)", "y ~ y + (1 | g)", "y ~ x + c0 + (1 | g)", "y ~ x + (1 | g) + (1 | g)", "y ~ d + (1 | g)"],
)
def test_errors_come_before_any_fitting(formula, monkeypatch) -> None:
    import gmenn_formula.training.fit as fit

    monkeypatch.setattr(fit, "fit_design", lambda *args, **kwargs: pytest.fail("the engine was started"))
    with warnings.catch_warnings(), pytest.raises(GmennError):
        warnings.simplefilter("ignore", RuntimeWarning)
        gf.gmenn(formula, frame(), epochs=2, verbose=0)


def test_unknown_function_is_a_syntax_error() -> None:
    with pytest.raises(FormulaSyntaxError, match="unknown function 'foo'"):
        gf.design("y ~ foo(x) + (1 | g)", frame())


@pytest.mark.parametrize("formula", ["y ~ x ** z + (1 | g)", "y ~ y ** y", "y ~ nn(x ** z) + (1 | g)"])
def test_a_power_that_is_not_a_whole_number_names_the_expression(formula) -> None:
    """formulae raised a bare TypeError for ``a ** b`` with a variable b (found by the fuzz test below)."""
    with pytest.raises(DataError, match=r"Could not read the expression .*\*\*.*takes a whole number"):
        gf.design(formula, frame())


# -- fuzzing the grammar ------------------------------------------------------------------------
NAMES = ["y", "x", "z", "t", "k", "n", "g", "h", "d", "cls", "w", "`x`", "`a b`", "np.log", "log", "C", "scale", "I", "poly", "bs", "Sum", "foo"]
TOKENS = [*NAMES, "+", "-", "~", "|", "||", "(", ")", "nn(", "offset(", "cbind(", ":", "*", "/", "**", ".", ",", "=", "[", "]",
          "0", "1", "2", "0.5", "1e3", '"relu"', "'net'", "hidden", "dropout", "activation", "net"]


@st.composite
def formulas(draw) -> str:
    """A formula: either any sequence of tokens, or a response ~ sum of terms with random tokens spliced in."""
    if draw(st.booleans()):
        return " ".join(draw(st.lists(st.sampled_from(TOKENS), max_size=14)))
    atom = st.sampled_from(
        ["x", "z", "t", "C(g)", "log(t)", "scale(x)", "I(x ** 2)", "x:z", "x * z", "d", "cls", "k", "y", "1", "0", "w", "poly(x, 2)",
         "bs(x, df=3)", "C(g, Sum)", "C(h, Treatment('v'))", "center(z)", "np.exp(z)", "I(z / 0)", "I(t - t)", "offset(t)", "offset(log(t))", "x / h"]
    )
    network = st.builds(lambda a, b: f"nn({a} + {b}{', hidden=[3]' if a != b else ''})", atom, st.sampled_from([".", "x", "z", "C(h)"]))
    random = st.builds(lambda s, bar, grp: f"({s} {bar} {grp})", st.sampled_from(["1", "x", "0 + z", "1 + x", "y"]), st.sampled_from(["|", "||"]),
                       st.sampled_from(["g", "h", "g:h", "g/h", "k", "n", "x", "d", "w"]))
    terms = draw(st.lists(st.one_of(atom, network, random, st.sampled_from(TOKENS)), min_size=1, max_size=5))
    response = draw(st.sampled_from(["y", "k", "cls", "log(t)", "cbind(k, n - k)", "x", "w"]))
    return f"{response} ~ {' + '.join(terms)}"


def fuzz_frame() -> pd.DataFrame:
    data = frame().drop(columns=["id", "c0", "zero", "gf", "gi", "d"])
    return data.assign(w=np.tile([1.0, np.nan, 3.0, np.inf], 3))


FUZZ_DATA = fuzz_frame()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(formulas(), st.sampled_from([None, "gaussian", "poisson", "binomial", "categorical"]))
def test_fuzzed_formulas_give_only_gmenn_errors(text: str, family: str | None) -> None:
    try:
        parsed = gf.parse(text)
    except FormulaSyntaxError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            gf.design(parsed, FUZZ_DATA, family=family)
        except GmennError:
            pass
    pd.testing.assert_frame_equal(FUZZ_DATA, fuzz_frame())
