"""Saving and loading a fitted model: ``GmennResult.save(path)`` and ``gmenn_formula.load(path)``.

The file (``.gmenn`` by convention) is one zip archive, format version 1:

- ``model.json``: ``format``, ``format_version``, ``written_by``; the design spec
  (formula, family, response classes, grouping levels, formulae encodings: see
  :mod:`gmenn_formula.results.spec_json`); the fit's scalars and settings; the
  number of rows, the scaled-residual quantiles of the summary and its
  log-likelihood (``data.loglik``, optional: files written before it was
  added print no fit criteria); the per-epoch history (scalars).
- ``weights.safetensors``: the torch state of the fixed part (networks, beta).
- ``arrays.safetensors``: per random-effect term l, ``covariances/l`` (c, p, p),
  ``covariance_se/l`` (c, p, p), ``effect_mean/l`` and ``effect_sd/l`` (q, p, c),
  ``draws/l`` (s, q, p, c) and ``history_covariances/l`` (epochs, c, p, p).

Loading reads JSON and safetensors only: no pickle, nothing in a file can run
code. The training data is not saved: a loaded model predicts and simulates on
new data, prints its summary and gives every table, but ``fitted()``,
``residuals()`` and verbs without ``newdata`` raise NoTrainingDataError.
Default MLPs are rebuilt from the formula's ``nn()`` options; a network named
by ``nn(..., net="name")`` must be passed again: ``load(path, nets={"name": ...})``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import safetensors.numpy
import safetensors.torch
import torch
from torch import nn

from gmenn_formula.design import Design, DesignSpec, RandomEffectDesign
from gmenn_formula.errors import MissingNetworkError, ModelFileError, ModelVersionError, NetworkError, NoTrainingDataError
from gmenn_formula.families import get_family
from gmenn_formula.mstep.networks import FixedPart, NetworkSpec, build_network
from gmenn_formula.results.likelihood import LogLik
from gmenn_formula.results.result import GmennResult
from gmenn_formula.results.spec_json import check_rebuilt, decode_value, encode_value, spec_from_json, spec_to_json
from gmenn_formula.results.summary import Summary
from gmenn_formula.training.config import FitConfig
from gmenn_formula.training.em import FitState

FORMAT = "gmenn-formula model"
FORMAT_VERSION = 1
META, WEIGHTS, ARRAYS = "model.json", "weights.safetensors", "arrays.safetensors"
_PER_TERM = ("covariances", "covariance_se", "effect_mean", "effect_sd", "draws")
_FIT_SCALARS = (
    "num_outputs",
    "fixed_names",
    "dispersion",
    "dispersion_se",
    "converged",
    "messages",
    "epochs",
    "best_epoch",
    "best_validation_loss",
    "seconds",
)


class LoadedResult(GmennResult):
    """A fit read by :func:`load`. Every verb works except those that need the training rows."""

    def __init__(self, design: Design, state: FitState, nobs: int, scaled_residuals: pd.DataFrame | None) -> None:
        super().__init__(design, state)
        self._nobs = nobs
        self._scaled_residuals = scaled_residuals

    @property
    def nobs(self) -> int:
        """Rows used in the fit (stored in the file)."""
        return self._nobs

    def _design_for(self, newdata: pd.DataFrame | None, allow_new_levels: bool, with_random_effects: bool = True) -> Design:
        if newdata is None:
            raise NoTrainingDataError(
                "This model was loaded from a file, which does not keep the training rows, so fitted values, "
                "residuals and predictions without newdata are unavailable; pass newdata= (e.g. the training data frame)."
            )
        return super()._design_for(newdata, allow_new_levels, with_random_effects)

    def loglik(self, method: str = "auto", draws: int | None = None, seed: int | None = None) -> LogLik:
        """The log-likelihood stored in the file (computed at save time with the default arguments)."""
        stored = self._logliks.get(("auto", None, None))
        if stored is None or (method, draws, seed) != ("auto", None, None):
            raise NoTrainingDataError(
                "This model was loaded from a file, which does not keep the training rows; the log-likelihood "
                + ("was not stored in it (an older file)." if stored is None else "is stored only for the default loglik() arguments.")
            )
        return stored

    def summary(self) -> Summary:
        return _SavedSummary(self)


class _SavedSummary(Summary):
    """Summary of a loaded fit: the scaled residuals come from the file."""

    def scaled_residuals(self) -> pd.DataFrame | None:
        return self.result._scaled_residuals


# -- save -----------------------------------------------------------------------------
def save(result: GmennResult, path: str | os.PathLike) -> Path:
    """Write ``result`` to ``path`` (one zip file; see the module docstring). Returns the path.

    Raises UnsupportedSaveError, before writing anything, when the model holds
    an encoding the format cannot represent (e.g. a ``cr()`` spline).
    """
    import gmenn_formula

    path = Path(path)
    spec_json = spec_to_json(result.spec)
    check_rebuilt(result.spec, spec_from_json(json.loads(json.dumps(spec_json))))
    state = result.state
    summary = result.summary()
    residuals = summary.scaled_residuals()
    loglik = summary.loglik()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "written_by": f"gmenn-formula {gmenn_formula.__version__}",
        "spec": spec_json,
        "fit": {
            **{name: encode_value(getattr(state, name), f"FitState.{name}") for name in _FIT_SCALARS},
            "config": dataclasses.asdict(state.config),
        },
        "data": {
            "nobs": result.nobs,
            "num_dropped": result.design.num_dropped,
            "scaled_residuals": None if residuals is None else {"columns": list(residuals.columns), "rows": residuals.values.tolist()},
            "loglik": None if loglik is None else loglik.to_dict(),
        },
        "history": [{k: encode_value(v, "history") for k, v in entry.items() if k != "covariances"} for entry in state.history],
    }
    arrays = {f"{key}/{l}": np.ascontiguousarray(value) for key in _PER_TERM for l, value in enumerate(getattr(state, key))}
    for l in range(len(state.covariances)):
        arrays[f"history_covariances/{l}"] = np.stack([entry["covariances"][l] for entry in state.history])
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in state.model.state_dict().items()}
    _write_zip(
        path,
        {
            META: (json.dumps(meta, indent=1).encode(), zipfile.ZIP_DEFLATED),
            WEIGHTS: (safetensors.torch.save(weights), zipfile.ZIP_STORED),
            ARRAYS: (safetensors.numpy.save(arrays), zipfile.ZIP_STORED),
        },
    )
    return path


def _write_zip(path: Path, members: dict[str, tuple[bytes, int]]) -> None:
    """Write the archive next to ``path`` and move it into place, so a failed save leaves no half file."""
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory; give a file name such as {path / 'model.gmenn'}.")
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as stream, zipfile.ZipFile(stream, "w") as archive:
            for name, (content, compression) in members.items():
                archive.writestr(name, content, compress_type=compression)
        os.replace(temporary, path)
    except OSError as exc:
        raise ModelFileError(f"Could not write the model file {path}: {exc.strerror or exc}.") from exc


# -- load -----------------------------------------------------------------------------
def load(path: str | os.PathLike, nets: Mapping[str, nn.Module | object] | None = None) -> LoadedResult:
    """Read a model written by ``GmennResult.save``.

    ``nets``: the user networks the formula names (``nn(..., net="name")``), as
    given to ``gmenn()``; modules are copied, never modified. Raises
    ModelFileError (missing, corrupt or foreign file), ModelVersionError
    (format version not readable here), MissingNetworkError.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"No model file at {path}.")
    try:
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read(META))
            _check_format(meta, path)
            weights = safetensors.torch.load(archive.read(WEIGHTS))
            arrays = safetensors.numpy.load(archive.read(ARRAYS))
        return _restore(meta, weights, arrays, nets)
    except (ModelFileError, NetworkError):
        raise
    except Exception as exc:  # anything else a damaged file can trigger while decoding (bad formula text, settings, arrays)
        raise ModelFileError(
            f"{path} is not a readable gmenn model file ({type(exc).__name__}: {exc}). "
            "Check that it was written by GmennResult.save() and copied completely."
        ) from exc


def _check_format(meta: object, path: Path) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a gmenn model file (no {FORMAT!r} header in {META}).")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelVersionError(
            f"{path} has model file format version {version!r} (written by {meta.get('written_by', 'an unknown version')}); "
            f"this gmenn-formula reads version {FORMAT_VERSION}. Load it with the gmenn-formula version that wrote it, "
            "or refit the model."
        )


def _networks(spec: DesignSpec, c: int, nets: Mapping | None) -> list[nn.Module]:
    """The ``nn()`` modules with the saved architecture (weights not yet loaded)."""
    nets = dict(nets or {})
    for term in spec.formula.networks:
        if term.net is not None and term.net not in nets:
            raise MissingNetworkError(
                f"The saved model uses nn(..., net={term.net!r}); pass the same network to load: "
                f"gmenn_formula.load(path, nets={{{term.net!r}: module_or_factory}})."
            )
    copies = {name: copy.deepcopy(entry) if isinstance(entry, nn.Module) else entry for name, entry in nets.items()}
    return [
        build_network(NetworkSpec.from_term(term), len(block.names), c, copies)
        for term, block in zip(spec.formula.networks, spec.networks)
    ]


def _restore(meta: dict, weights: dict, arrays: dict, nets: Mapping | None) -> LoadedResult:
    spec = spec_from_json(meta["spec"])
    fit = {name: decode_value(meta["fit"][name]) for name in _FIT_SCALARS}
    _check_fit(spec, fit, arrays, len(meta["history"]))
    c = fit["num_outputs"]
    model = FixedPart(_networks(spec, c, nets), len(fit["fixed_names"]), c)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        if any(term.net for term in spec.formula.networks):
            raise NetworkError(f"The networks passed to load() do not match the saved weights: {exc}") from exc
        raise
    if not all(bool(torch.isfinite(tensor).all()) for tensor in weights.values()):
        raise ModelFileError("the saved network weights hold non-finite values")
    terms = range(len(spec.random))
    history = [
        {**entry, "covariances": [arrays[f"history_covariances/{l}"][i] for l in terms]} for i, entry in enumerate(meta["history"])
    ]
    state = FitState(
        family=get_family(spec.family),
        model=model.eval(),
        history=history,
        config=FitConfig(**meta["fit"]["config"]),
        **{key: [arrays[f"{key}/{l}"] for l in terms] for key in _PER_TERM},
        **fit,
    )
    residuals = meta["data"]["scaled_residuals"]
    table = None if residuals is None else pd.DataFrame(residuals["rows"], columns=residuals["columns"])
    loaded = LoadedResult(_structure(spec, meta["data"]["num_dropped"]), state, int(meta["data"]["nobs"]), table)
    if meta["data"].get("loglik") is not None:
        loaded._logliks["auto", None, None] = LogLik.from_dict(meta["data"]["loglik"])
    return loaded


def _check_fit(spec: DesignSpec, fit: dict, arrays: dict, num_epochs: int) -> None:
    """Raise ModelFileError unless the saved fit suits the saved design: outputs, fixed-effect
    names, the dispersion, and every array's shape (levels, terms, classes, epochs) and values."""
    classes = spec.response.classes
    c = get_family(spec.family).num_outputs(len(classes) if classes else None)
    if fit["num_outputs"] != c:
        raise ModelFileError(f"the fit has {fit['num_outputs']!r} outputs, but a {spec.family} model of this response has {c}")
    names = spec.fixed.names[1:] if spec.networks and spec.fixed.names[:1] == ("(Intercept)",) else spec.fixed.names
    if tuple(fit["fixed_names"]) != names:
        raise ModelFileError(f"the fixed effects are saved as {fit['fixed_names']!r}, but the design has {list(names)}")
    dispersion = fit["dispersion"]
    if (dispersion is None) == get_family(spec.family).has_dispersion or (
        dispersion is not None and not (isinstance(dispersion, float) and math.isfinite(dispersion) and dispersion > 0)
    ):
        raise ModelFileError(f"the residual variance {dispersion!r} does not suit the {spec.family} family (a positive number for gaussian only)")
    expected = {}
    for l, part in enumerate(spec.random):
        q, p = part.factor.num_levels, len(part.slopes.names)
        expected |= {f"covariances/{l}": (c, p, p), f"covariance_se/{l}": (c, p, p), f"effect_mean/{l}": (q, p, c)}
        expected |= {f"effect_sd/{l}": (q, p, c), f"draws/{l}": (None, q, p, c), f"history_covariances/{l}": (num_epochs, c, p, p)}
    if set(arrays) != set(expected):
        raise ModelFileError(f"the saved arrays are {sorted(arrays)}, not {sorted(expected)}")
    for key, shape in expected.items():
        array = arrays[key]
        if array.ndim != len(shape) or any(want is not None and have != want for have, want in zip(array.shape, shape)):
            raise ModelFileError(f"the saved array {key} has shape {array.shape}; the design needs {shape} (levels, terms, classes)")
        if not np.isfinite(array).all():
            raise ModelFileError(f"the saved array {key} holds non-finite values")
    for l in range(len(spec.random)):
        S = arrays[f"covariances/{l}"]
        if not np.allclose(S, np.swapaxes(S, 1, 2)) or (np.linalg.eigvalsh(S).min(initial=0.0) < -1e-8 * max(1.0, np.abs(S).max(initial=0.0))):
            raise ModelFileError(f"the saved covariance of {spec.random[l].term} is not symmetric positive semi-definite")


def _structure(spec: DesignSpec, num_dropped: int) -> Design:
    """A design with the spec's columns and grouping factors but no rows."""
    random = tuple(
        RandomEffectDesign(part.term, part.factor, part.slopes.names, np.zeros(0, np.int32), np.zeros((0, len(part.slopes.names))))
        for part in spec.random
    )
    return Design(
        spec=spec,
        response=None,
        X_fixed=np.zeros((0, len(spec.fixed.names))),
        offset=np.zeros(0),
        X_networks=tuple(np.zeros((0, len(block.names))) for block in spec.networks),
        random=random,
        rows=pd.RangeIndex(0),
        num_dropped=num_dropped,
    )
