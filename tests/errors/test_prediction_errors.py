"""predict() keeps every row of new data: NaN (with a warning that counts them) where a predictor
is missing, the response never read; new data it cannot use is a typed error naming the column
and rows. Uses the hand-made fits of the results tests (no fitting)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from results.results_fixtures import handmade_categorical_nn, handmade_glmm

from gmenn_formula.cli import main
from gmenn_formula.errors import DataError, GmennError, MissingValueWarning, NewLevelWarning
from gmenn_formula.estimator import GMENN
from gmenn_formula.results.result import GmennResult, _every_row


@pytest.fixture(scope="module")
def glmm() -> GmennResult:
    return handmade_glmm()


@pytest.fixture(scope="module")
def categorical() -> GmennResult:
    return handmade_categorical_nn()


def glmm_rows() -> pd.DataFrame:
    return pd.DataFrame({"days": [0.0, 1.0, 2.0, 3.0], "subject": ["s1", "s2", "s3", "s4"], "y": [250.0, 260.0, 270.0, 280.0]}, index=[10, 11, 12, 13])


def categorical_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {"x1": [0.1, -0.5, 0.3, 0.9], "x2": [0.2, 0.4, -0.8, 0.0], "g": ["a", "b", "c", "a"], "h": ["u", "v", "u", "v"], "cls": ["lo", "mid", "hi", "lo"]},
        index=["p", "q", "r", "s"],
    )


def quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call(*args, **kwargs)


@pytest.mark.parametrize(("column", "kind", "re_form"), [("days", "response", None), ("days", "link", "~0"), ("subject", "response", None), ("subject", "link", None)])
def test_gaussian_missing_predictor_gives_nan_in_place(glmm, column, kind, re_form) -> None:
    new = glmm_rows()
    new.loc[11, column] = None
    before = new.copy(deep=True)
    with pytest.warns(MissingValueWarning, match=rf"1 of 4 row\(s\) have missing values in columns '{column}' \(1\); their predictions are NaN"):
        predicted = glmm.predict(new, type=kind, re_form=re_form)
    complete = quiet(glmm.predict, new.drop(index=11), type=kind, re_form=re_form)
    assert isinstance(predicted, np.ndarray) and predicted.shape == (4,)
    assert np.isnan(predicted[1]) and not np.isnan(predicted[[0, 2, 3]]).any()
    np.testing.assert_allclose(predicted[[0, 2, 3]], complete)
    pd.testing.assert_frame_equal(new, before)


@pytest.mark.parametrize("kind", ["response", "link"])
def test_categorical_frames_keep_the_input_index(categorical, kind) -> None:
    new = categorical_rows()
    new.loc["q", "x2"] = np.nan
    with pytest.warns(MissingValueWarning, match="1 of 4 row"):
        predicted = categorical.predict(new, type=kind)
    assert isinstance(predicted, pd.DataFrame) and list(predicted.index) == ["p", "q", "r", "s"]
    assert list(predicted.columns) == ["hi", "lo", "mid"]
    assert predicted.loc["q"].isna().all() and not predicted.drop(index="q").isna().any().any()
    np.testing.assert_allclose(predicted.drop(index="q"), quiet(categorical.predict, new.drop(index="q"), type=kind))


def test_class_labels_with_a_missing_row(categorical) -> None:
    new = categorical_rows()
    new.loc["r", "g"] = None
    with pytest.warns(MissingValueWarning):
        labels = categorical.predict(new, type="class")
    assert labels.shape == (4,) and pd.isna(labels[2])
    assert set(labels[[0, 1, 3]]) <= {"hi", "lo", "mid"}


@pytest.mark.parametrize(
    ("fit", "rows", "response"),
    [
        ("glmm", glmm_rows, None),
        ("glmm", glmm_rows, np.nan),
        ("glmm", glmm_rows, "?"),
        ("categorical", categorical_rows, None),
        ("categorical", categorical_rows, np.nan),
        ("categorical", categorical_rows, "unseen class"),
    ],
    ids=["glmm-absent", "glmm-nan", "glmm-placeholder", "categorical-absent", "categorical-nan", "categorical-unknown-class"],
)
def test_response_is_not_read(fit, rows, response, request) -> None:
    result = request.getfixturevalue(fit)
    name = "y" if fit == "glmm" else "cls"
    full = rows()
    new = full.drop(columns=name) if response is None else full.assign(**{name: response})
    expected = np.asarray(quiet(result.predict, full))
    np.testing.assert_allclose(np.asarray(quiet(result.predict, new)), expected)


def test_every_row_missing_gives_all_nan(glmm) -> None:
    new = glmm_rows().assign(days=np.nan)
    with pytest.warns(MissingValueWarning, match="4 of 4 row"):
        predicted = glmm.predict(new)
    assert predicted.shape == (4,) and np.isnan(predicted).all()


def test_duplicate_row_labels_keep_their_positions(glmm) -> None:
    new = glmm_rows()
    new.index = [7, 7, 7, 7]
    new.iloc[2, 0] = np.nan
    with pytest.warns(MissingValueWarning):
        predicted = glmm.predict(new)
    assert np.isnan(predicted).tolist() == [False, False, True, False]


def test_missing_values_and_new_levels_are_both_counted(glmm) -> None:
    new = glmm_rows().assign(subject=["s1", "s9", "s9", "s2"])
    new.loc[13, "days"] = np.nan
    with pytest.warns(MissingValueWarning, match="1 of 4"), pytest.warns(NewLevelWarning, match="subject: 2 row"):
        predicted = glmm.predict(new)
    assert np.isnan(predicted).tolist() == [False, False, False, True]


@pytest.mark.parametrize(
    ("fit", "change", "phrases"),
    [
        ("glmm", lambda d: d.assign(days=[0.0, np.inf, 2.0, 3.0]), ["fixed part column 'days'", "inf", "[11]"]),
        ("glmm", lambda d: d.assign(days=[0.0, 1.0, 2.0, -np.inf]), ["'days'", "(-inf)", "[13]"]),
        ("categorical", lambda d: d.assign(x1=[0.0, 1.0, np.inf, 0.5]), ["nn() inputs column 'x1'", "['r']"]),
        ("glmm", lambda d: d.assign(days=pd.date_range("2024-01-01", periods=4)), ["Column 'days'", "dates", ".dt.days"]),
        ("glmm", lambda d: d.assign(days=np.arange(4) * 1j), ["Column 'days'", "complex"]),
        ("glmm", lambda d: pd.concat([d, d[["days"]]], axis=1), ["more than one column named 'days'"]),
        ("glmm", lambda d: d.assign(subject=["s1", 2, "s3", 4]), ["Column 'subject'", "mixes value types"]),
        ("categorical", lambda d: d.drop(columns="x2"), ["Column 'x2'", "nn() inputs", "not in the data"]),
    ],
    ids=["inf-fixed", "minus-inf", "inf-nn", "dates", "complex", "duplicate-column", "mixed-grouping", "missing-column"],
)
def test_unusable_new_data_is_a_clear_error(fit, change, phrases, request) -> None:
    result = request.getfixturevalue(fit)
    new = change(glmm_rows() if fit == "glmm" else categorical_rows())
    before = new.copy(deep=True)
    with pytest.raises(DataError) as caught:
        quiet(result.predict, new)
    assert isinstance(caught.value, GmennError)
    for phrase in phrases:
        assert phrase in str(caught.value), f"{phrase!r} not in {caught.value}"
    pd.testing.assert_frame_equal(new, before)


def test_fitting_rows_are_unchanged(glmm) -> None:
    assert quiet(glmm.predict).shape == (20,)


def test_every_row_fills_numbers_and_labels() -> None:
    kept = np.array([True, False, True])
    assert np.isnan(_every_row(np.array([1, 0]), kept)).tolist() == [False, True, False]
    labels = _every_row(np.array(["a", "b"], dtype=object), kept)
    assert labels[0] == "a" and pd.isna(labels[1]) and labels[2] == "b"
    same = np.array([1, 2, 3])
    assert _every_row(same, np.ones(3, bool)) is same


def test_estimator_labels_missing_rows_as_nan(categorical) -> None:
    model = GMENN(str(categorical.formula), family="categorical")
    model.result_, model.classes_ = categorical, np.asarray(categorical.spec.response.classes, dtype=object)
    new = categorical_rows()
    new.loc["p", "x1"] = np.nan
    with pytest.warns(MissingValueWarning):
        labels = model.predict(new)
    assert pd.isna(labels[0]) and set(labels[1:]) <= {"hi", "lo", "mid"}


def test_cli_writes_one_row_per_input_row(glmm, tmp_path: Path, capsys) -> None:
    model = glmm.save(tmp_path / "model.gmenn")
    new = glmm_rows().reset_index(drop=True)
    new.loc[1, "days"] = np.nan
    new.loc[2, "y"] = np.nan  # the response is not needed
    new.to_csv(tmp_path / "new.csv", index=False)
    assert main(["predict", str(model), str(tmp_path / "new.csv"), "-o", str(tmp_path / "p.csv")]) == 0
    written = pd.read_csv(tmp_path / "p.csv", index_col="row")
    assert list(written.index) == [0, 1, 2, 3] and written["fit"].isna().tolist() == [False, True, False, False]
    captured = capsys.readouterr()
    assert "warning: 1 of 4 row(s) have missing values in columns 'days' (1)" in captured.err
    assert "4 predictions written" in captured.out
