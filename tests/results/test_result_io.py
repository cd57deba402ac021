"""save()/load(): encodings survive JSON, fits round-trip to identical predictions, bad files give clear errors."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import gmenn_formula as gf
from gmenn_formula.errors import (
    MissingNetworkError,
    ModelFileError,
    ModelVersionError,
    NetworkError,
    NoTrainingDataError,
    UnsupportedSaveError,
)
from gmenn_formula.results.io import ARRAYS, FORMAT_VERSION, META, WEIGHTS
from gmenn_formula.design.spec_json import spec_from_json, spec_to_json
from results_fixtures import FAMILIES, KINDS, TINY_CONTROL, new_rows, tiny_data


# -- the spec without fitting -----------------------------------------------------------
@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(1)
    n = 60

    def frame(rows: int) -> pd.DataFrame:
        data = pd.DataFrame(
            {
                "x": rng.normal(10.0, 3.0, rows),
                "z": rng.uniform(1.0, 5.0, rows),
                "t": rng.uniform(1.0, 2.0, rows),
                "c": rng.choice(["lo", "mid", "hi"], rows),
                "k": rng.integers(1, 4, rows),
                "a": rng.choice(["a1", "a2", "a3"], rows),
                "b": rng.integers(0, 4, rows),
                "flag": rng.random(rows) < 0.5,
                "s": rng.integers(0, 5, rows),
                "cls": pd.Categorical(rng.choice(["red", "green", "blue"], rows), categories=["red", "green", "blue"]),
            }
        )
        data["f"] = 5 - data["s"]
        return data

    train = frame(n)
    new = frame(25)
    new["x"] = rng.uniform(train.x.min(), train.x.max(), 25)  # inside the spline's knots
    new["t"] = rng.uniform(train.t.min(), train.t.max(), 25)
    new.loc[:3, "a"] = "a_new"
    return train, new


SPEC_CASES = [
    ("cbind(s, f) ~ scale(x) + C(c) + poly(z, 2) + bs(t, df=4) + C(k):b + offset(np.log(t)) + (1 + center(x) | a:b)", "binomial"),
    ('cls ~ nn(standardize(x) + z + S(c) + flag, hidden=[4]) + (1 | a) + (0 + np.log(z) || b)', "categorical"),
    ("s ~ nn(., hidden=[3]) + (1 | a)", "poisson"),
    ("x ~ 0 + C(c) + I(z ** 2) + (1 | b)", "gaussian"),
]


def _rebuild(spec):
    return spec_from_json(json.loads(json.dumps(spec_to_json(spec))))


@pytest.mark.parametrize(("formula", "family"), SPEC_CASES)
def test_spec_survives_json_and_encodes_new_data_identically(formula: str, family: str, frames) -> None:
    train, new = frames
    spec = gf.design(formula, train, family=family).spec
    rebuilt = _rebuild(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, restored = spec.apply(new), rebuilt.apply(new)
    assert rebuilt.formula == spec.formula and rebuilt.response == spec.response
    np.testing.assert_array_equal(restored.X_fixed, expected.X_fixed)
    np.testing.assert_array_equal(restored.offset, expected.offset)
    for a, b in zip(restored.X_networks, expected.X_networks, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(restored.random, expected.random, strict=True):
        np.testing.assert_array_equal(a.codes, b.codes)
        np.testing.assert_array_equal(a.Z, b.Z)
        assert a.factor.levels.equals(b.factor.levels) and a.term_names == b.term_names
    np.testing.assert_array_equal(restored.response.y, expected.response.y)
    assert restored.fixed_names == expected.fixed_names
    assert [net.block.names for net in rebuilt.networks] == [net.block.names for net in spec.networks]


def test_spec_with_cr_spline_is_refused_naming_the_transform(frames) -> None:
    spec = gf.design("x ~ cr(z, df=4) + (1 | a)", frames[0]).spec
    with pytest.raises(UnsupportedSaveError, match=r"cr\(\) in the term 'cr\(z, df=4\)' of the fixed part"):
        spec_to_json(spec)


def test_spec_with_datetime_grouping_levels_is_refused(frames) -> None:
    data = frames[0].assign(day=pd.Timestamp("2024-01-01") + pd.to_timedelta(frames[0].b, unit="D"))
    with pytest.raises(UnsupportedSaveError, match="Grouping factor 'day'.*Convert the column"):
        spec_to_json(gf.design("x ~ z + (1 | day)", data).spec)


# -- fitted models round-trip -----------------------------------------------------------------
def _same(a, b) -> None:
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_predicts_identically(family: str, kind: str, tiny_fit, tmp_path: Path) -> None:
    result = tiny_fit(family, kind)
    loaded = gf.load(result.save(tmp_path / "model.gmenn"))
    new = new_rows(tiny_data(family))
    types = ["response", "link"] + (["class"] if family in ("binomial", "categorical") else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind_ in types:
            for re_form in (None, "~0"):
                _same(loaded.predict(new, type=kind_, re_form=re_form), result.predict(new, type=kind_, re_form=re_form))
        _same(loaded.simulate(3, seed=5, newdata=new, re_form=None), result.simulate(3, seed=5, newdata=new, re_form=None))
    pd.testing.assert_frame_equal(loaded.varcorr(), result.varcorr())
    pd.testing.assert_frame_equal(loaded.fixef(), result.fixef())
    pd.testing.assert_frame_equal(loaded.history, result.history)
    for name, table in result.ranef().items():
        pd.testing.assert_frame_equal(loaded.ranef()[name], table)
    assert loaded.nobs == result.nobs and str(loaded.summary()) == str(result.summary())
    np.testing.assert_array_equal(loaded.to_inference_data().posterior.to_array(), result.to_inference_data().posterior.to_array())


def test_file_holds_json_and_safetensors_only(glmm_result, tmp_path: Path) -> None:
    path = glmm_result.save(tmp_path / "model.gmenn")
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == sorted([META, WEIGHTS, ARRAYS])
        meta = json.loads(archive.read(META))
    assert meta["format_version"] == FORMAT_VERSION and meta["spec"]["formula"] == "y ~ 1 + days + (1 + days | subject)"


def test_loaded_model_refuses_verbs_that_need_training_rows(glmm_result, tmp_path: Path) -> None:
    loaded = gf.load(glmm_result.save(tmp_path / "model.gmenn"))
    for verb in (loaded.fitted, loaded.residuals, loaded.predict, loaded.simulate):
        with pytest.raises(NoTrainingDataError, match="pass newdata="):
            verb()


def test_save_overwrites_atomically_and_refuses_a_directory(glmm_result, tmp_path: Path) -> None:
    path = tmp_path / "model.gmenn"
    path.write_bytes(b"old")
    glmm_result.save(path)
    assert zipfile.is_zipfile(path) and [p.name for p in tmp_path.iterdir()] == ["model.gmenn"]
    with pytest.raises(ModelFileError, match="is a directory"):
        glmm_result.save(tmp_path)


# -- bad files --------------------------------------------------------------------------------
def _rewrite(path: Path, replace: dict[str, bytes | None]) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    for name, content in replace.items():
        if content is None:
            members.pop(name)
        else:
            members[name] = content
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def _meta_with(path: Path, **changes) -> bytes:
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read(META))
    return json.dumps(meta | changes).encode()


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda p: p.write_bytes(b"not a model"), ModelFileError, "not a readable gmenn model file"),
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), ModelFileError, "not a readable gmenn model file"),
        (lambda p: _rewrite(p, {WEIGHTS: None}), ModelFileError, "weights.safetensors"),
        (lambda p: _rewrite(p, {ARRAYS: b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"}), ModelFileError, "not a readable"),
        (lambda p: _rewrite(p, {META: b"{ not json"}), ModelFileError, "JSONDecodeError"),
        (lambda p: _rewrite(p, {META: _meta_with(p, format="something else")}), ModelFileError, "is not a gmenn model file"),
        (lambda p: _rewrite(p, {META: _meta_with(p, format_version=FORMAT_VERSION + 1)}), ModelVersionError, "format version 2"),
    ],
    ids=["garbage", "truncated", "missing-member", "corrupt-arrays", "corrupt-json", "foreign", "newer-version"],
)
def test_damaged_file_gives_a_clear_error(damage, error, message: str, glmm_result, tmp_path: Path) -> None:
    path = glmm_result.save(tmp_path / "model.gmenn")
    damage(path)
    with pytest.raises(error, match=message):
        gf.load(path)


def _history_rewritten(path: Path, change) -> bytes:
    """META with ``change`` applied to each epoch of the history."""
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read(META))
    for entry in meta["history"]:
        change(entry)
    return json.dumps(meta).encode()


def test_a_history_written_before_setup_seconds_loads_with_none_spent(glmm_result, tmp_path: Path) -> None:
    path = glmm_result.save(tmp_path / "model.gmenn")
    assert glmm_result.history["setup_seconds"].iloc[0] > 0
    _rewrite(path, {META: _history_rewritten(path, lambda entry: entry.pop("setup_seconds"))})
    loaded = gf.load(path)
    assert (loaded.history["setup_seconds"] == 0).all()
    assert "tracing and compiling" not in str(loaded.summary())


def test_a_history_whose_setup_seconds_is_not_a_number_is_refused(glmm_result, tmp_path: Path) -> None:
    path = glmm_result.save(tmp_path / "model.gmenn")
    _rewrite(path, {META: _history_rewritten(path, lambda entry: entry.update(setup_seconds="__import__('os')"))})
    with pytest.raises(ModelFileError, match="wrong type"):
        gf.load(path)


def test_missing_file_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="No model file at"):
        gf.load(tmp_path / "nothing.gmenn")


# -- user networks ----------------------------------------------------------------------------
def _user_net(hidden: int):
    def factory(inputs: int, outputs: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, outputs))

    return factory


@pytest.fixture(scope="module")
def user_net_fit(tiny_fit):
    data = tiny_data("gaussian")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gf.gmenn('y ~ nn(x0 + x1, net="mine") + (1 | g0)', data, nets={"mine": _user_net(3)}, **TINY_CONTROL)


def test_user_network_must_be_passed_to_load(user_net_fit, tmp_path: Path) -> None:
    path = user_net_fit.save(tmp_path / "model.gmenn")
    with pytest.raises(MissingNetworkError, match=r"nets=\{'mine'"):
        gf.load(path)
    with pytest.raises(NetworkError, match="do not match the saved weights"):
        gf.load(path, nets={"mine": _user_net(5)})
    module = _user_net(3)(2, 1)
    before = [p.detach().clone() for p in module.parameters()]
    new = tiny_data("gaussian").iloc[:30]
    for nets in ({"mine": _user_net(3)}, {"mine": module}):
        np.testing.assert_array_equal(gf.load(path, nets=nets).predict(new), user_net_fit.predict(new))
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))  # the passed module is copied, not loaded into
