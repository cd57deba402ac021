"""Saving and loading a fitted model: ``GmennResult.save(path)`` and ``gmenn_formula.load(path)``.

The file (``.gmenn`` by convention) is one zip archive, format version 1:

- ``model.json``: ``format``, ``format_version``, ``written_by``; the design spec
  (formula, family, response classes, grouping levels, formulae encodings: see
  :mod:`gmenn_formula.design.spec_json`); the fit's scalars and settings; the
  number of rows, the scaled-residual quantiles of the summary and its
  log-likelihood (``data.loglik``, optional: files written before it was
  added print no fit criteria); the per-epoch history (scalars). The fit's
  ``interrupted`` flag (files without it: False); an interrupted fit may store
  NaN Monte Carlo errors (``dispersion_se``, ``covariance_se``), nothing else.
- ``weights.safetensors``: the torch state of the fixed part (networks, beta,
  ``output_offset`` and ``output_scale``; files without them: 0 and 1).
- ``arrays.safetensors``: per random-effect term l, ``covariances/l`` (c, p, p),
  ``covariance_se/l`` (c, p, p), ``effect_mean/l`` and ``effect_sd/l`` (q, p, c),
  ``draws/l`` (s, q, p, c) and ``history_covariances/l`` (epochs, c, p, p); ``draw_epochs``
  (s,) the epoch of each stored draw (files of 0.1.0 have none: their draws come from the
  averaged epochs in order).

A model file is data. Loading reads JSON and safetensors only (no pickle);
the formula is parsed, so it calls only the functions of
:mod:`gmenn_formula.formula.functions`; every saved block must be the one that
formula makes before anything is evaluated; and the fit must suit the design
(family, outputs, fixed effects, dispersion, every array's shape, finite values):
a file that does not hold together raises ModelFileError. The training data is
not saved (see :class:`~gmenn_formula.results.result.GmennResult`). Default MLPs
are rebuilt from the formula's ``nn()`` options; a network named by
``nn(..., net="name")`` must be passed again: ``load(path, nets={"name": ...})``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import safetensors.numpy
import safetensors.torch
import torch
from torch import nn

from gmenn_formula.design import Design, DesignSpec
from gmenn_formula.design.spec_json import check_rebuilt, decode_value, encode_value, spec_from_json, spec_to_json
from gmenn_formula.errors import ControlError, MissingNetworkError, ModelFileError, ModelVersionError, NetworkError
from gmenn_formula.mstep.networks import FixedPart, NetworkOptions, build_network
from gmenn_formula.results.likelihood import DESCRIPTIONS, LogLik
from gmenn_formula.results.state import EpochRecord, FitState
from gmenn_formula.training.config import FitConfig

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
    "interrupted",
    "closed_form",
)
_LATER_SCALARS = {"interrupted": False, "closed_form": False}
"""Fit scalars added after format version 1 was first written, and their value in older files."""
_LATER_WEIGHTS = {"output_offset": 0.0, "output_scale": 1.0}
"""Buffers of the fixed part added after format version 1 was first written, and their value in older files."""


@dataclass(frozen=True)
class SavedModel:
    """What a model file holds: the design (encodings, no rows), the fit, the summary's
    scaled-residual quantiles and its log-likelihood (None where the file has none)."""

    design: Design
    state: FitState
    scaled_residuals: pd.DataFrame | None
    loglik: LogLik | None


# -- write ----------------------------------------------------------------------------
def write_model(path: Path, design: Design, state: FitState, scaled_residuals: pd.DataFrame | None, loglik: LogLik | None) -> Path:
    """Write a fit to ``path`` (one zip file; see the module docstring). Returns the path.

    Raises UnsupportedSaveError, before writing anything, when the model holds
    an encoding the format cannot represent (e.g. a ``cr()`` spline).
    """
    import gmenn_formula

    spec_json = spec_to_json(design.spec)
    check_rebuilt(design.spec, spec_from_json(json.loads(json.dumps(spec_json))))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "written_by": f"gmenn-formula {gmenn_formula.__version__}",
        "spec": spec_json,
        "fit": {
            **{name: encode_value(getattr(state, name), f"FitState.{name}") for name in _FIT_SCALARS},
            "config": state.config.to_control(),
        },
        "data": {
            "nobs": state.nobs,
            "num_dropped": design.num_dropped,
            "scaled_residuals": None if scaled_residuals is None else {"columns": list(scaled_residuals.columns), "rows": scaled_residuals.values.tolist()},
            "loglik": None if loglik is None else loglik.to_dict(),
        },
        "history": [{k: encode_value(v, "history") for k, v in record.scalars().items()} for record in state.history],
    }
    arrays = {f"{key}/{l}": np.ascontiguousarray(value) for key in _PER_TERM for l, value in enumerate(getattr(state, key))}
    for l in range(len(state.covariances)):
        arrays[f"history_covariances/{l}"] = np.stack([record.covariances[l] for record in state.history])
    arrays["draw_epochs"] = np.asarray(state.draw_epochs, dtype=np.int64)
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


# -- read -----------------------------------------------------------------------------
def read_model(path: Path, nets: Mapping[str, nn.Module | object] | None = None) -> SavedModel:
    """Read a model file (see :func:`gmenn_formula.load`)."""
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
    for net in spec.networks:
        if net.term.net is not None and net.term.net not in nets:
            raise MissingNetworkError(
                f"The saved model uses nn(..., net={net.term.net!r}); pass the same network to load: "
                f"gmenn_formula.load(path, nets={{{net.term.net!r}: module_or_factory}})."
            )
    copies = {name: copy.deepcopy(entry) if isinstance(entry, nn.Module) else entry for name, entry in nets.items()}
    return [build_network(NetworkOptions.from_term(net.term), len(net.block.names), c, copies) for net in spec.networks]


def _restore(meta: dict, weights: dict, arrays: dict, nets: Mapping | None) -> SavedModel:
    spec = spec_from_json(meta["spec"])
    saved = {**_LATER_SCALARS, **meta["fit"]}
    fit = {name: decode_value(saved[name]) for name in _FIT_SCALARS}
    history_scalars = meta["history"]
    if not spec.family.has_dispersion:  # files of 0.1.0 store None where there is no dispersion
        fit["dispersion"] = 1.0 if fit["dispersion"] is None else fit["dispersion"]
        fit["dispersion_se"] = 0.0 if fit["dispersion_se"] is None else fit["dispersion_se"]
        history_scalars = [{**entry, "dispersion": 1.0} if entry.get("dispersion", 1.0) is None else entry for entry in history_scalars]
    _check_fit(spec, fit, arrays, len(history_scalars))
    c = fit["num_outputs"]
    labels = [NetworkOptions.from_term(net.term).label(index) for index, net in enumerate(spec.networks)]
    model = FixedPart(_networks(spec, c, nets), len(fit["fixed_names"]), c, labels)
    weights = {**{name: torch.full_like(model.state_dict()[name], value) for name, value in _LATER_WEIGHTS.items()}, **weights}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        if any(net.term.net for net in spec.networks):
            raise NetworkError(f"The networks passed to load() do not match the saved weights: {exc}") from exc
        raise
    if not all(bool(torch.isfinite(tensor).all()) for tensor in weights.values()):
        raise ModelFileError("the saved network weights hold non-finite values")
    terms = range(len(spec.random))
    history = [
        EpochRecord.from_scalars(entry, tuple(arrays[f"history_covariances/{l}"][i] for l in terms))
        for i, entry in enumerate(history_scalars)
    ]
    try:
        config = FitConfig.from_control(**meta["fit"]["config"])
    except ControlError as exc:
        raise ModelFileError(f"the saved fit settings are not valid: {exc}") from exc
    data = meta["data"]
    draw_epochs = arrays["draw_epochs"] if "draw_epochs" in arrays else _legacy_draw_epochs(history, arrays["draws/0"].shape[0] if terms else 0, config)
    state = FitState(
        model=model.eval(),
        history=history,
        config=config,
        nobs=_count(data["nobs"], "nobs"),
        draw_epochs=draw_epochs,
        **{key: [arrays[f"{key}/{l}"] for l in terms] for key in _PER_TERM},
        **fit,
    )
    residuals = data["scaled_residuals"]
    table = None if residuals is None else _residual_table(residuals)
    loglik = None if data.get("loglik") is None else _loglik(data["loglik"])
    return SavedModel(Design.without_rows(spec, _count(data["num_dropped"], "num_dropped")), state, table, loglik)


def _legacy_draw_epochs(history: list[EpochRecord], stored: int, config: FitConfig) -> np.ndarray:
    """The epochs of a 0.1.0 file's stored draws: the averaged epochs in order, K - R draws each."""
    averaged = [record.epoch for record in history if record.phase == "average"]
    return np.repeat(averaged, config.estep.draws - config.estep.burn_in)[:stored].astype(np.int64)


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ModelFileError(f"the saved {what} is {value!r}, not a count")
    return value


def _residual_table(saved: dict) -> pd.DataFrame:
    """The summary's scaled-residual quantiles: five strings that read as numbers."""
    rows, columns = saved["rows"], saved["columns"]
    ok = columns == ["Min", "1Q", "Median", "3Q", "Max"] and isinstance(rows, list) and len(rows) == 1 and isinstance(rows[0], list)
    if not ok or len(rows[0]) != 5 or not all(isinstance(v, str) and _is_number(v) for v in rows[0]):
        raise ModelFileError("the saved scaled residuals are not five quantiles")
    return pd.DataFrame(rows, columns=columns)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _loglik(saved: object) -> LogLik:
    try:
        loglik = LogLik.from_dict(saved)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"the saved log-likelihood is malformed ({exc})") from exc
    numbers = [float(loglik), loglik.se] + ([] if loglik.ess is None else [loglik.ess])
    if not all(math.isfinite(v) for v in numbers) or loglik.nobs < 1 or loglik.method not in DESCRIPTIONS:
        raise ModelFileError(f"the saved log-likelihood {saved!r} is not valid")
    return loglik


def _check_fit(spec: DesignSpec, fit: dict, arrays: dict, num_epochs: int) -> None:
    """Raise ModelFileError unless the saved fit suits the saved design: outputs, fixed-effect
    names, the dispersion, and every array's shape (levels, terms, classes, epochs) and values."""
    kinds = {
        "num_outputs": int, "fixed_names": (list, tuple), "dispersion": float, "dispersion_se": float, "converged": bool,
        "messages": (list, tuple), "epochs": int, "best_epoch": (int, type(None)), "best_validation_loss": (float, type(None)), "seconds": float,
        "interrupted": bool, "closed_form": bool,
    }
    unknown = {"dispersion_se"} if fit["interrupted"] is True else set()  # an interrupted fit's Monte Carlo errors are NaN
    for name, kind in kinds.items():
        value = fit[name]
        not_finite = isinstance(value, float) and not math.isfinite(value) and not (name in unknown and math.isnan(value))
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool) or not_finite:
            raise ModelFileError(f"the saved fit's {name} is {value!r}, not of the kind it should be")
    if not all(isinstance(text, str) for text in [*fit["fixed_names"], *fit["messages"]]):
        raise ModelFileError("the saved fixed-effect names and messages must be text")
    c = spec.num_outputs
    if fit["num_outputs"] != c:
        raise ModelFileError(f"the fit has {fit['num_outputs']!r} outputs, but a {spec.family.name} model of this response has {c}")
    if tuple(fit["fixed_names"]) != spec.fixed_names:
        raise ModelFileError(f"the fixed effects are saved as {fit['fixed_names']!r}, but the design has {list(spec.fixed_names)}")
    dispersion = fit["dispersion"]
    if not (isinstance(dispersion, float) and math.isfinite(dispersion) and dispersion > 0) or (
        not spec.family.has_dispersion and dispersion != 1.0
    ):
        raise ModelFileError(
            f"the residual variance {dispersion!r} does not suit the {spec.family.name} family (a positive number for gaussian, 1.0 otherwise)"
        )
    expected = {}
    for l, part in enumerate(spec.random):
        q, p = part.factor.num_levels, len(part.slopes.names)
        expected |= {f"covariances/{l}": (c, p, p), f"covariance_se/{l}": (c, p, p), f"effect_mean/{l}": (q, p, c)}
        expected |= {f"effect_sd/{l}": (q, p, c), f"draws/{l}": (None, q, p, c), f"history_covariances/{l}": (num_epochs, c, p, p)}
    if set(arrays) - {"draw_epochs"} != set(expected):
        raise ModelFileError(f"the saved arrays are {sorted(arrays)}, not {sorted(expected)}")
    if "draw_epochs" in arrays:
        epochs, stored = arrays["draw_epochs"], arrays["draws/0"].shape[0] if spec.random else 0
        if epochs.shape != (stored,) or epochs.dtype.kind not in "iu" or (stored and not (1 <= epochs.min() and epochs.max() <= num_epochs)):
            raise ModelFileError(f"the saved draw_epochs (shape {epochs.shape}) do not match the {stored} stored draws and {num_epochs} epochs")
    for key, shape in expected.items():
        array = arrays[key]
        if array.ndim != len(shape) or any(want is not None and have != want for have, want in zip(array.shape, shape)):
            raise ModelFileError(f"the saved array {key} has shape {array.shape}; the design needs {shape} (levels, terms, classes)")
        finite = np.isfinite(array)
        if fit["interrupted"] and key.startswith("covariance_se/"):
            finite |= np.isnan(array)
        if not finite.all():
            raise ModelFileError(f"the saved array {key} holds non-finite values")
    for l in range(len(spec.random)):
        S = arrays[f"covariances/{l}"]
        if not np.allclose(S, np.swapaxes(S, 1, 2)) or (np.linalg.eigvalsh(S).min(initial=0.0) < -1e-8 * max(1.0, np.abs(S).max(initial=0.0))):
            raise ModelFileError(f"the saved covariance of {spec.random[l].term} is not symmetric positive semi-definite")
