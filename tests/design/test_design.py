"""Design stage on small hand-checked data: codes, slopes, nesting, new levels, NA, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import gmenn_formula as gf
from gmenn_formula.design import NEW_LEVEL
from gmenn_formula.errors import (
    ColumnNotFoundError,
    DataTypeError,
    EmptyDataError,
    GmennError,
    GroupingFactorError,
    MissingValueError,
    MissingValueWarning,
    NewLevelError,
    NewLevelWarning,
    ResponseError,
)


@pytest.fixture
def data() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "x": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
            "z": [1.0, -1.0, 2.0, -2.0, 0.0, 1.0],
            "g": ["b", "a", "b", "c", "a", "c"],
            "h": ["u", "u", "v", "v", "u", "v"],
            "k": [1, 0, 2, 3, 1, 0],
            "n": [3, 3, 3, 3, 3, 3],
            "t": [1.0, 2.0, 4.0, 1.0, 2.0, 4.0],
            "cls": ["lo", "mid", "hi", "lo", "hi", "mid"],
        }
    )


def quiet_design(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return gf.design(*args, **kwargs)


def test_grouping_codes_are_sorted_int32_levels(data):
    d = quiet_design("y ~ x + (1 | g)", data)
    (re,) = d.random
    assert re.codes.dtype == np.int32
    assert re.codes.tolist() == [1, 0, 1, 2, 0, 2]
    assert re.factor.labels == ["a", "b", "c"]
    assert re.term_names == ("(Intercept)",)
    assert re.Z.shape == (6, 1) and np.all(re.Z == 1.0)


def test_fixed_columns_and_names(data):
    d = quiet_design("y ~ x + C(h)", data)
    assert d.fixed_names == ("(Intercept)", "x", "C(h)[v]")
    np.testing.assert_array_equal(d.X_fixed[:, 2], [0, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(d.response.y, data["y"].to_numpy())


def test_no_intercept(data):
    d = quiet_design("y ~ 0 + x", data)
    assert d.fixed_names == ("x",)


def test_random_slopes_columns(data):
    d = quiet_design("y ~ x + (1 + x | g) + (0 + z | h)", data)
    first, second = d.random
    assert first.term_names == ("(Intercept)", "x")
    np.testing.assert_array_equal(first.Z[:, 1], data["x"].to_numpy())
    assert second.term_names == ("z",)
    np.testing.assert_array_equal(second.Z[:, 0], data["z"].to_numpy())
    assert second.codes.tolist() == [0, 0, 1, 1, 0, 1]


def test_nesting_expands_to_interaction_codes(data):
    d = quiet_design("y ~ 1 + (1 | g/h)", data)
    outer, inner = d.random
    assert outer.name == "g" and inner.name == "g:h"
    assert inner.factor.labels == ["a:u", "b:u", "b:v", "c:v"]
    assert inner.codes.tolist() == [1, 0, 2, 3, 0, 3]


def test_network_inputs_and_dot(data):
    d = quiet_design("y ~ nn(x + C(h)) + (1 | g)", data)
    assert d.spec.networks[0].block.names == ("x", "C(h)[u]", "C(h)[v]")
    d = quiet_design("y ~ x + nn(.) + (1 | g)", data)
    inputs = d.spec.networks[0].inputs
    assert inputs == ("z", "C(h)", "k", "n", "t", "C(cls)")


def test_offset_uses_r_style_log(data):
    d = quiet_design("k ~ x + offset(log(t)) + (1 | g)", data, family="poisson")
    np.testing.assert_allclose(d.offset, np.log(data["t"].to_numpy()))


def test_scale_is_remembered_for_new_data(data):
    d = quiet_design("y ~ scale(x) + (1 | g)", data)
    new = d.spec.apply(data.iloc[[0]])
    expected = (data["x"].iloc[0] - data["x"].mean()) / data["x"].std(ddof=0)
    assert new.X_fixed[0, 1] == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(new.X_fixed[0], d.X_fixed[0])


def test_new_levels_get_sentinel_and_count(data):
    d = quiet_design("y ~ x + (1 | g)", data)
    new = data.iloc[:3].assign(g=["a", "zzz", "zzz"])
    with pytest.warns(NewLevelWarning, match="g: 2 row"):
        nd = d.spec.apply(new)
    assert nd.random[0].codes.tolist() == [0, NEW_LEVEL, NEW_LEVEL]
    assert nd.new_levels == {"g": 2}
    with pytest.raises(NewLevelError, match="'zzz'"):
        d.spec.apply(new, allow_new_levels=False)


def test_new_levels_do_not_matter_without_random_effects(data):
    d = quiet_design("y ~ x + (1 | g)", data)
    new = data.iloc[:3].assign(g=["a", "zzz", "zzz"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", NewLevelWarning)
        nd = d.spec.apply(new, allow_new_levels=False, with_random_effects=False)
    assert nd.random[0].codes.tolist() == [0, NEW_LEVEL, NEW_LEVEL] and nd.new_levels == {"g": 2}


def test_sum_contrast_is_not_read_as_a_column(data):
    from gmenn_formula.design.columns import variables
    from gmenn_formula.design.spec_json import check_rebuilt, spec_from_json, spec_to_json

    assert variables("C(g, Sum)") == variables("C(g, contr=Sum)") == {"g"}
    d = quiet_design("y ~ C(g, Sum) + C(h, Treatment('v')) + (1 | h)", data)
    assert d.fixed_names == ("(Intercept)", "C(g, Sum)[a]", "C(g, Sum)[b]", 'C(h, Treatment("v"))[u]')
    assert d.X_fixed[:, 1:3].tolist() == [[0, 1], [1, 0], [0, 1], [-1, -1], [1, 0], [-1, -1]]  # level c codes -1, -1
    check_rebuilt(d.spec, spec_from_json(spec_to_json(d.spec)))  # survives a model file
    np.testing.assert_array_equal(d.spec.apply(data.iloc[[3]]).X_fixed, d.X_fixed[[3]])


def test_new_data_without_response(data):
    d = quiet_design("y ~ x + (1 | g)", data)
    nd = d.spec.apply(data.drop(columns="y"))
    assert nd.response is None and nd.num_rows == 6


def test_missing_values_dropped_with_warning(data):
    data = data.copy()
    data.loc[2, "x"] = np.nan
    data.loc[4, "g"] = None
    with pytest.warns(MissingValueWarning, match=r"Dropped 2 of 6 row\(s\).*'x' \(1\).*'g' \(1\)|Dropped 2 of 6 row\(s\).*'g' \(1\).*'x' \(1\)"):
        d = gf.design("y ~ x + (1 | g)", data)
    assert d.num_rows == 4 and d.num_dropped == 2
    assert list(d.rows) == [0, 1, 3, 5]
    with pytest.raises(MissingValueError, match="'x'"):
        gf.design("y ~ x + (1 | g)", data, na_action="raise")


def test_unused_missing_column_is_ignored(data):
    data = data.assign(unused=[np.nan] * 6)
    d = quiet_design("y ~ x + (1 | g)", data)
    assert d.num_rows == 6


def test_input_frame_is_not_mutated(data):
    before = data.copy(deep=True)
    data.loc[1, "x"] = np.nan
    before.loc[1, "x"] = np.nan
    with pytest.warns(MissingValueWarning):
        d = gf.design("y ~ scale(x) + nn(.) + (1 + x | g/h)", data)
    with pytest.warns(NewLevelWarning), pytest.warns(MissingValueWarning):
        d.spec.apply(data.assign(g="new"))
    pd.testing.assert_frame_equal(data, before)


def test_binary_responses(data):
    as_bool = data.assign(yb=data["k"] > 0)
    d = quiet_design("yb ~ x + (1 | g)", as_bool, family="binomial")
    np.testing.assert_array_equal(d.response.y, [1, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(d.response.trials, np.ones(6))
    two = data.assign(yb=np.where(data["k"] > 0, "yes", "no"))
    d = quiet_design("yb ~ x + (1 | g)", two, family="binomial")
    assert d.spec.response.classes == ("no", "yes")
    np.testing.assert_array_equal(d.response.y, [1, 0, 1, 1, 1, 0])


def test_cbind_trials(data):
    d = quiet_design("cbind(k, n - k) ~ x + (1 | g)", data)
    assert d.spec.family.name == "binomial"
    np.testing.assert_array_equal(d.response.y, data["k"].to_numpy())
    np.testing.assert_array_equal(d.response.trials, np.full(6, 3.0))


def test_categorical_keeps_class_order(data):
    d = quiet_design("cls ~ x + (1 | g)", data, family="categorical")
    assert d.spec.response.classes == ("hi", "lo", "mid")
    assert d.response.y.tolist() == [1, 2, 0, 1, 0, 2]
    ordered = data.assign(cls=pd.Categorical(data["cls"], categories=["lo", "mid", "hi"]))
    d = quiet_design("cls ~ x + (1 | g)", ordered, family="categorical")
    assert d.spec.response.classes == ("lo", "mid", "hi")
    assert d.response.y.tolist() == [0, 1, 2, 0, 2, 1]


def test_grouping_by_numeric_column(data):
    d = quiet_design("y ~ x + (1 | k)", data)
    assert d.random[0].factor.labels == ["0", "1", "2", "3"]


@pytest.mark.parametrize(
    ("formula", "family", "error", "phrase"),
    [
        ("y ~ xx + (1 | g)", None, ColumnNotFoundError, "Column 'xx' used in the fixed part is not in the data. Did you mean 'x'"),
        ("y ~ x + (1 | gg)", None, ColumnNotFoundError, "'gg' used in the grouping factor"),
        ("yy ~ x", None, ColumnNotFoundError, "'yy' used in the response"),
        ("y ~ nn(x + w)", None, ColumnNotFoundError, "'w' used in the nn() inputs"),
        ("y ~ x + (1 | n)", None, GroupingFactorError, "'n' has 1 level"),
        ("x ~ z + (1 | g)", "categorical", ResponseError, "continuous"),
        ("cls ~ x + (1 | g)", "gaussian", ResponseError, "numeric response"),
        ("cls ~ x + (1 | g)", "binomial", ResponseError, "categorical"),
        ("y ~ x + (1 | g)", "binomial", ResponseError, "cbind"),
        ("z ~ x + (1 | g)", "poisson", ResponseError, "non-negative whole numbers"),
        ("y ~ x", "weibull", GmennError, "Unknown family 'weibull'"),
    ],
)
def test_clear_errors(data, formula, family, error, phrase):
    with pytest.raises(error) as info:
        gf.design(formula, data, family=family)
    assert phrase in str(info.value)
    assert isinstance(info.value, GmennError) and isinstance(info.value, ValueError)


def test_not_a_dataframe_and_empty():
    with pytest.raises(DataTypeError, match="pandas DataFrame"):
        gf.design("y ~ x", {"y": [1.0], "x": [2.0]})
    with pytest.raises(EmptyDataError):
        gf.design("y ~ x", pd.DataFrame({"y": [], "x": []}))


def test_all_rows_missing_is_empty(data):
    with pytest.raises(EmptyDataError, match="nothing is left"):
        gf.design("y ~ x", data.assign(x=np.nan))


def test_unknown_fixed_level_in_new_data(data):
    d = quiet_design("y ~ C(h) + (1 | g)", data)
    with pytest.raises(GmennError, match="grouping factor"):
        d.spec.apply(data.assign(h="w"))


def test_repr_summarises(data):
    text = repr(quiet_design("y ~ x + nn(z) + (1 + x | g)", data))
    assert "rows: 6" in text and "((Intercept) + x | g): 3 levels" in text and "nn() #1: 1 input(s) ['z']" in text
