"""What a fit is, as the engine hands it over and a model file stores it.

:class:`FitState` holds the fitted parameters and effects; :class:`EpochRecord` is
one row of the epoch log, the one source of ``history``, the progress bar, the
summary's E-step lines and the InferenceData's sampler statistics. This module
imports numpy and torch only, so reading a model never imports the engine.

Shapes: per random-effect term l with q_l levels and p_l coefficients, c outputs
(classes for categorical, else 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from gmenn_formula.errors import ModelFileError
from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.training.config import FitConfig

PHASES = ("train", "em", "average")
"""Epoch phases: the network trains (``train``); EM with the fixed part frozen or solved
exactly (``em``); blocks of epochs at fixed parameters, each averaged into a Newton step, the
last into the reported values (``average``)."""


@dataclass(frozen=True)
class EpochRecord:
    """One EM epoch.

    ``epoch`` 1-based; ``phase`` one of :data:`PHASES`; ``seconds`` the epoch's wall
    time, of which ``estep_seconds`` the sampler's draw call (run on the worker thread
    when it overlapped the M-step) and ``mstep_seconds`` the rest on the main thread
    (the network output, variance statistics, training or Newton, validation);
    ``covariances[l]`` (c, p_l, p_l) the covariances after the epoch (the averaged
    iterate while averaging); ``dispersion`` the gaussian residual variance (1.0 for
    other families); the sampler's ``acceptance`` (mean), ``step_size``,
    ``leapfrog_steps`` (mean per draw) and ``divergences``; ``loss`` the training loss
    per row (the expected NLL per row for a plain GLMM), ``validation_loss`` per
    validation row (network fits), None where the phase has none; ``setup_seconds`` the part of
    ``estep_seconds`` spent making the E-step's compiled code (tracing the model and XLA's
    compilation, or loading them from the on-disk caches: once per model structure and process).
    """

    epoch: int
    phase: str
    seconds: float
    estep_seconds: float
    mstep_seconds: float
    covariances: tuple[np.ndarray, ...]
    dispersion: float
    acceptance: float
    step_size: float
    leapfrog_steps: float
    divergences: int
    loss: float | None = None
    validation_loss: float | None = None
    setup_seconds: float = 0.0

    def scalars(self) -> dict[str, object]:
        """Every field but the covariances (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "covariances"}

    @classmethod
    def from_scalars(cls, scalars: dict, covariances: tuple[np.ndarray, ...]) -> EpochRecord:
        """Inverse of :meth:`scalars`, checked field by field (a model file is data)."""
        names = {f.name for f in fields(cls)} - {"covariances"}
        if not isinstance(scalars, dict) or not set(scalars) <= names:
            raise ModelFileError(f"an epoch of the history has fields {sorted(scalars) if isinstance(scalars, dict) else scalars!r}")
        record = cls(**scalars, covariances=covariances)
        numbers = [record.seconds, record.estep_seconds, record.mstep_seconds, record.dispersion, record.acceptance, record.step_size]
        numbers += [record.leapfrog_steps, record.setup_seconds] + [v for v in (record.loss, record.validation_loss) if v is not None]
        ok = isinstance(record.epoch, int) and isinstance(record.divergences, int) and record.phase in PHASES
        if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise ModelFileError(f"epoch {scalars.get('epoch')!r} of the history holds values of the wrong type")
        return record


@dataclass
class FitState:
    """The fitted model as the engine hands it to the results stage.

    ``model`` the fixed part (networks and ``beta`` (k, c), columns ``fixed_names``);
    per random-effect term l: ``covariances[l]`` (c, p, p) and their Monte Carlo
    standard errors ``covariance_se[l]``; ``effect_mean[l]``/``effect_sd[l]`` (q, p, c)
    posterior means/sds of the effects; ``draws[l]`` (s, q, p, c) kept draws of the
    final phase and ``draw_epochs`` (s,) the epoch (1-based) each comes from. ``dispersion``
    the gaussian residual variance and its Monte Carlo
    error ``dispersion_se`` (1.0 and 0.0 for the other families); ``nobs`` the rows
    fitted; ``history`` the epoch log; ``converged`` whether EM (and early stopping)
    ended by its own rule, ``messages`` why not (and events such as learning-rate halvings);
    ``interrupted`` whether Ctrl-C ended the fit early (its Monte Carlo errors are then NaN);
    ``closed_form`` whether the variance components are the gaussian maximum likelihood in closed
    form (then no Monte Carlo error; the effects' moments still come from exact draws);
    ``seconds`` the fit's wall time.
    """

    num_outputs: int
    model: FixedPart
    fixed_names: tuple[str, ...]
    covariances: list[np.ndarray]
    covariance_se: list[np.ndarray]
    dispersion: float
    dispersion_se: float
    effect_mean: list[np.ndarray]
    effect_sd: list[np.ndarray]
    draws: list[np.ndarray]
    history: list[EpochRecord]
    converged: bool
    nobs: int
    draw_epochs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    messages: list[str] = field(default_factory=list)
    epochs: int = 0
    best_epoch: int | None = None
    best_validation_loss: float | None = None
    seconds: float = 0.0
    config: FitConfig = field(default_factory=FitConfig)
    interrupted: bool = False
    closed_form: bool = False
