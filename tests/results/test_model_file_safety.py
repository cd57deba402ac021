"""A model file is data: loading one never evaluates anything from it, and a file that does not
hold together is refused with ModelFileError before it can give wrong predictions."""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gmenn_formula as gf
from gmenn_formula.design import columns
from gmenn_formula.errors import GmennError, ModelFileError
from gmenn_formula.design import spec_json
from gmenn_formula.results.io import ARRAYS, META
from gmenn_formula.design.spec_json import spec_from_json, spec_to_json


class _Payload:
    """Unpickling this writes a marker file: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle ran"))


def _read(path: Path) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    return json.loads(members[META]), members


def _write(path: Path, meta: dict, members: dict[str, bytes], **replace: bytes) -> Path:
    members = {**members, META: json.dumps(meta).encode(), **replace}
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


@pytest.fixture
def saved(glmm_result, tmp_path: Path) -> tuple[Path, dict, dict[str, bytes]]:
    path = glmm_result.save(tmp_path / "model.gmenn")
    meta, members = _read(path)
    return path, meta, members


@pytest.fixture
def evaluated(monkeypatch) -> list[str]:
    """Every formula formulae is asked to evaluate while a test loads a file."""
    seen: list[str] = []

    def recording(formula: str, data: pd.DataFrame):
        seen.append(formula)
        return columns.build_matrix(formula, data)

    monkeypatch.setattr(spec_json, "build_matrix", recording)
    return seen


# -- nothing in a file runs --------------------------------------------------------------------
def test_a_crafted_block_formula_is_refused_before_evaluation(saved, evaluated, tmp_path: Path) -> None:
    path, meta, members = saved
    marker = tmp_path / "written.txt"
    meta["spec"]["blocks"][0]["formula"] = f"1 + days + np.savetxt({str(marker)!r}, days)"
    with pytest.raises(ModelFileError, match=r"fixed part is saved as .*savetxt.*the model formula makes it '1 \+ days'"):
        gf.load(_write(path, meta, members))
    assert not marker.exists() and not any("savetxt" in formula for formula in evaluated)


def test_a_crafted_model_formula_is_refused_and_no_pickle_runs(saved, tmp_path: Path) -> None:
    path, meta, members = saved
    marker, payload = tmp_path / "ran.txt", tmp_path / "payload.pkl"
    payload.write_bytes(pickle.dumps(_Payload(marker)))
    meta["spec"]["formula"] = f"y ~ 1 + days + pd.read_pickle({str(payload)!r}) + (1 + days | subject)"
    with pytest.raises(ModelFileError, match="unknown function 'pd.read_pickle'"):
        gf.load(_write(path, meta, members))
    assert not marker.exists()


def test_crafted_network_inputs_are_refused(categorical_result, evaluated, tmp_path: Path) -> None:
    path = categorical_result.save(tmp_path / "model.gmenn")
    meta, members = _read(path)
    marker = tmp_path / "written.txt"
    meta["spec"]["network_inputs"] = [[f"np.savetxt({str(marker)!r}, x1)", "x1", "x2"]]
    with pytest.raises(ModelFileError, match="saved inputs .* are not those of nn"):
        gf.load(_write(path, meta, members))
    assert not marker.exists() and not any("savetxt" in formula for formula in evaluated)


@pytest.mark.parametrize("inputs", [["np.savetxt('p', a)"], ["C(np.load('x'))"], ["`a`b`"], [""], [3]])
def test_leftover_columns_of_nn_dot_must_be_column_names(inputs, evaluated) -> None:
    data = pd.DataFrame({"s": np.arange(12) % 4, "a": list("uvw") * 4, "x": np.linspace(0, 1, 12)})
    saved = json.loads(json.dumps(spec_to_json(gf.design("s ~ nn(., hidden=[3]) + (1 | a)", data, family="poisson").spec)))
    assert saved["network_inputs"] == [["x"]]
    saved["network_inputs"] = [inputs]
    with pytest.raises(ModelFileError, match="are not those of nn"):
        spec_from_json(saved)
    assert evaluated == []


def test_transform_state_must_have_the_transforms_own_fields() -> None:
    data = pd.DataFrame({"y": np.arange(8.0), "x": np.linspace(1, 2, 8), "g": list("ab") * 4})
    spec = spec_to_json(gf.design("y ~ scale(x) + (1 | g)", data).spec)
    transform = spec["blocks"][0]["components"][0]["transforms"][0]
    transform["state"]["__dict__"].append(["__class__", "os.system"])
    with pytest.raises(ModelFileError, match=r"saved state of scale\(\) does not have the fields"):
        spec_from_json(json.loads(json.dumps(spec)))


def test_the_evaluation_environment_holds_only_the_vocabulary(tmp_path: Path) -> None:
    """Even a formula that reached formulae without the parser finds no other function."""
    marker = tmp_path / "written.txt"
    frame = pd.DataFrame({"x": np.linspace(1, 2, 8)})
    for formula in (f"0 + np.savetxt({str(marker)!r}, x)", "0 + np.load('x')", "0 + open('x')", "0 + print(x)"):
        with pytest.raises(Exception):
            columns.build_matrix(formula, frame)
    assert not marker.exists()
    np.testing.assert_allclose(np.asarray(columns.build_matrix("0 + np.log(x) + sqrt(x)", frame)), np.c_[np.log(frame.x), np.sqrt(frame.x)])


# -- a file that does not hold together ------------------------------------------------------
def _edit_arrays(members: dict[str, bytes], edit) -> bytes:
    arrays = dict(safetensors.numpy.load(members[ARRAYS]))
    edit(arrays)
    return safetensors.numpy.save(arrays)


def _drop_level(meta: dict) -> None:
    meta["spec"]["grouping"][0]["levels"]["values"].pop()


def _set(path: list, value):
    def edit(meta: dict) -> None:
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


META_EDITS = {
    "truncated levels": (_drop_level, "effect_mean/0 has shape"),
    "edited family": (_set(["spec", "family"], "poisson"), r"response is saved as 'y' \(gaussian\), not 'y' \(poisson\)"),
    "unknown family": (_set(["spec", "family"], "weibull"), "unknown family 'weibull'"),
    "zero dispersion": (_set(["fit", "dispersion"], 0.0), "residual variance 0.0 does not suit"),
    "negative dispersion": (_set(["fit", "dispersion"], -3.0), "residual variance -3.0 does not suit"),
    "no dispersion": (_set(["fit", "dispersion"], None), "dispersion is None, not of the kind"),
    "outputs": (_set(["fit", "num_outputs"], 3), "3 outputs, but a gaussian model"),
    "fixed names": (_set(["fit", "fixed_names"], ["(Intercept)"]), "fixed effects are saved as"),
    "grouping columns": (_set(["spec", "grouping", 0, "columns"], ["days"]), "grouping factor of .* is saved as"),
    "response name": (_set(["spec", "response", "name"], "z"), "response is saved as 'z'"),
    "classes": (_set(["spec", "response", "classes"], {"__tuple__": ["a"]}), "classes .* do not suit the gaussian family"),
    "shorter history": (lambda meta: meta["history"].pop(), "draw_epochs .* do not match|history_covariances/0 has shape"),
}


@pytest.mark.parametrize("edit", list(META_EDITS), ids=list(META_EDITS))
def test_inconsistent_file_is_refused(edit: str, saved) -> None:
    path, meta, members = saved
    change, message = META_EDITS[edit]
    change(meta)
    with pytest.raises(ModelFileError, match=message):
        gf.load(_write(path, meta, members))


ARRAY_EDITS = {
    "missing array": (lambda a: a.pop("effect_sd/0"), "saved arrays are"),
    "wrong shape": (lambda a: a.update({"covariances/0": np.zeros((1, 3, 3))}), r"covariances/0 has shape \(1, 3, 3\)"),
    "non-finite": (lambda a: a["effect_mean/0"].__setitem__((0, 0, 0), np.nan), "effect_mean/0 holds non-finite"),
    "indefinite covariance": (lambda a: a.update({"covariances/0": np.array([[[1.0, 5.0], [5.0, 1.0]]])}), "not symmetric positive semi-definite"),
}


@pytest.mark.parametrize("edit", list(ARRAY_EDITS), ids=list(ARRAY_EDITS))
def test_inconsistent_arrays_are_refused(edit: str, saved) -> None:
    path, meta, members = saved
    change, message = ARRAY_EDITS[edit]
    with pytest.raises(ModelFileError, match=message):
        gf.load(_write(path, meta, members, **{ARRAYS: _edit_arrays(members, change)}))


# -- fuzzing: random edits of a model file ----------------------------------------------------
def _paths(node, prefix=()):
    """Every (path, value) of a JSON tree, containers included."""
    yield prefix, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


NASTY = [
    "np.savetxt('{marker}', x)",
    "1 + days + np.savetxt('{marker}', days)",
    "y ~ days + pd.read_pickle('{marker}') + (1 | subject)",
    "__import__('os').system('touch {marker}')",
    "C(days, np.save('{marker}', days))",
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=8) | st.sampled_from(NASTY),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_edits_never_run_code_or_raise_a_raw_error(data, glmm_result, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    marker = folder / "ran.txt"
    path = glmm_result.save(folder / "model.gmenn")
    meta, members = _read(path)
    paths = [p for p, _ in _paths(meta) if p]
    target = data.draw(st.sampled_from(paths))
    value = data.draw(JSON_VALUES)
    if isinstance(value, str):
        value = value.replace("{marker}", str(marker))
    node = meta
    for key in target[:-1]:
        node = node[key]
    node[target[-1]] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            loaded = gf.load(_write(path, meta, members))
        except GmennError:
            loaded = None
        if loaded is not None:  # an edit the file survives (a label, a number in the history) still works
            new = pd.DataFrame({"days": [0.0, 1.0], "subject": ["s1", "s9"]})
            assert np.isfinite(loaded.predict(new)).all()
            str(loaded.summary()), loaded.varcorr(), loaded.history, loaded.ranef()
    assert not marker.exists()
