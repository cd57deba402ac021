"""Monte Carlo EM for a Design (paper section 2.2; the method in docs/engine.md).

Each epoch: F = f(X) once on the fitting rows (no gradient); the E-step draws the
random effects given F and the current covariances; the M-step updates the fixed
part against the draws and sets every covariance to the draws' second moments
(and the gaussian residual variance to their mean squared residual). The two
schedules: :func:`~gmenn_formula.training.glmm.fit_glmm` without networks,
:func:`~gmenn_formula.training.network.fit_network` with them.

Every epoch's variance components pass a :class:`~gmenn_formula.training.guard.VarianceGuard`.
Ctrl-C, taken at safe points (:mod:`~gmenn_formula.training.interrupts`), ends the fit with what exists (see
:func:`_interrupted`), flagged ``interrupted``; a second Ctrl-C while that is assembled, or
one before the first epoch is logged, goes on to the caller. An E-step call past its time
bound (:mod:`~gmenn_formula.training.watchdog`) raises EStepTimeoutError carrying the same
kind of state as ``error.state`` (None before the first epoch).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import torch

from gmenn_formula.design import Design
from gmenn_formula.errors import ControlError, ConvergenceWarning, EStepTimeoutError
from gmenn_formula.mstep.networks import FixedPart, build_network
from gmenn_formula.results.state import EpochRecord, FitState
from gmenn_formula.training.config import FitConfig
from gmenn_formula.training.glmm import fit_glmm
from gmenn_formula.training.guard import VarianceGuard
from gmenn_formula.training.interrupts import deferred_interrupts
from gmenn_formula.training.log import EpochLog
from gmenn_formula.training.network import fit_network
from gmenn_formula.training.phases import VariancePhases
from gmenn_formula.training.problem import EMProblem
from gmenn_formula.training.variance import EffectMoments


def resolve_device(device: str) -> torch.device:
    """"auto": CUDA when torch sees a GPU, else the CPU; "cpu", "cuda", "cuda:N" as given,
    ControlError for anything else or a GPU that is not there."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ControlError(f"Invalid fit setting device={device!r}: it must be 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    if resolved.type == "cuda" and (not torch.cuda.is_available() or (resolved.index or 0) >= torch.cuda.device_count()):
        raise ControlError(f"device={device!r} asks for a GPU that torch does not see here; use device='auto' or 'cpu'.")
    return resolved


@deferred_interrupts()
def fit_design(
    design: Design,
    config: FitConfig,
    nets: Mapping | None = None,
    progress: Callable[[EpochRecord], None] | None = None,
    data_parallel: bool = False,
) -> FitState:
    """Fit the model of ``design`` (response required) by Monte Carlo EM. ``data_parallel``:
    ``design`` holds this process's shard of the rows, every process of the group fits alike
    (:mod:`gmenn_formula.distributed`) and each returns the same FitState."""
    started = time.perf_counter()
    device = resolve_device(config.runtime.device)
    problem = EMProblem.from_design(design, device, data_parallel)
    config.estep.kind(problem.family.has_dispersion)  # a sampler the family cannot use: ControlError before any work
    seed = config.runtime.seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    c = problem.num_outputs
    networks = [build_network(spec, inputs, c, nets) for spec, inputs in zip(problem.networks, problem.network_inputs)]
    labels = [spec.label(index) for index, spec in enumerate(problem.networks)]
    model = FixedPart(networks, len(problem.fixed_names), c, labels).to(device)
    guard = VarianceGuard.of(tuple(str(r.term) for r in design.random), problem.family, problem.y)

    def observe(record: EpochRecord) -> None:
        guard(record)
        if progress is not None:
            progress(record)

    log = EpochLog(observe)
    extra = {}
    try:
        if problem.has_networks:
            phases, stopping = fit_network(problem, model, config, log, rng, generator)
            converged = stopping.stopped
            extra = {"best_epoch": stopping.epoch, "best_validation_loss": stopping.loss}
        else:
            phases, converged = fit_glmm(problem, model, config, log)
    except KeyboardInterrupt:
        if not log.records:
            raise
        state = _interrupted(problem, model, log, config, "interrupted (Ctrl-C)")
    except EStepTimeoutError as error:
        if log.records:
            error.state = _interrupted(problem, model, log, config, "stopped by the E-step's time bound")
            error.state.seconds = time.perf_counter() - started
        raise
    else:
        state = _finish(problem, model, phases, log, converged, config, **extra)
        guard.check(state.covariances, state.dispersion, "the final estimate")
    state.seconds = time.perf_counter() - started
    if state.messages:
        opening = "Convergence warnings: " if state.converged else "The fit did not converge: "
        warnings.warn(opening + " ".join(state.messages), ConvergenceWarning, stacklevel=3)
    return state


def _finish(problem: EMProblem, model: FixedPart, phases: VariancePhases, log: EpochLog, converged: bool, config: FitConfig, **extra) -> FitState:
    """The FitState of a finished fit: the averaged estimates and the effects' moments."""
    layout, result = phases.layout, phases.result
    covariances, dispersion, _ = layout.unflatten(result.theta)
    covariance_se, dispersion_se, _ = layout.unflatten(result.se)
    return _state(
        problem, model, log, phases.moments, config,
        covariances=covariances,
        covariance_se=covariance_se,
        dispersion=dispersion,
        dispersion_se=dispersion_se if layout.dispersion else 0.0,
        converged=converged,
        messages=[*log.messages, *phases.messages],
        epochs=log.last_epoch,
        closed_form=phases.closed_form,
        **extra,
    )


def _interrupted(problem: EMProblem, model: FixedPart, log: EpochLog, config: FitConfig, how: str) -> FitState:
    """The FitState of a fit ended early (``how``: by Ctrl-C or the E-step's time bound) after at
    least one epoch, flagged interrupted: the last epoch's
    covariances and residual variance with unknown (NaN) Monte Carlo errors, the effects'
    moments from its draws, the fixed part as it stands (a network at its best epoch's weights)."""
    last = log.records[-1]
    moments = EffectMoments(list(problem.shapes))
    moments.add(log.last_draws.effects, last.epoch)
    covariances = [S.copy() for S in last.covariances]
    network = "; the network is the best epoch's so far" if problem.has_networks else ""
    scored = [r for r in log.records if r.validation_loss is not None and math.isfinite(r.validation_loss)]
    best = min(scored, key=lambda r: r.validation_loss) if scored else None  # the first best, as EarlyStopping keeps
    message = (
        f"The fit was {how} after epoch {last.epoch} ({last.phase} phase): the variance components are "
        f"that epoch's, their Monte Carlo errors unknown (NaN), and the random effects come from its draws{network}. "
        "Refit for final estimates."
    )
    return _state(
        problem, model, log, moments, config,
        covariances=covariances,
        covariance_se=[np.full_like(S, np.nan) for S in covariances],
        dispersion=last.dispersion,
        dispersion_se=math.nan if problem.family.has_dispersion else 0.0,
        converged=False,
        messages=[*log.messages, message],
        epochs=last.epoch,
        best_epoch=None if best is None else best.epoch,
        best_validation_loss=None if best is None else best.validation_loss,
        interrupted=True,
    )


def _state(problem: EMProblem, model: FixedPart, log: EpochLog, moments: EffectMoments, config: FitConfig, **estimates) -> FitState:
    """A FitState of ``problem`` with the model in eval mode on the CPU, the effects' moments and
    the epoch log; ``estimates``: the variance components and the fit's flags and messages."""
    model.eval()
    return FitState(
        num_outputs=problem.num_outputs,
        model=model.cpu(),
        fixed_names=problem.fixed_names,
        effect_mean=moments.mean(),
        effect_sd=moments.sd(),
        draws=moments.draws(),
        draw_epochs=np.array(moments.stored_epochs, dtype=np.int64),
        history=log.records,
        nobs=problem.total_rows,
        config=config,
        **estimates,
    )
