"""Monte Carlo EM for a Design (paper section 2.2; the method in docs/engine.md).

Each epoch: F = f(X) once on the fitting rows (no gradient); the E-step draws the
random effects given F and the current covariances; the M-step updates the fixed
part against the draws and sets every covariance to the draws' second moments
(and the gaussian residual variance to their mean squared residual). The two
schedules: :func:`~gmenn_formula.training.glmm.fit_glmm` without networks,
:func:`~gmenn_formula.training.network.fit_network` with them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import torch

from gmenn_formula.design import Design
from gmenn_formula.errors import ControlError, ConvergenceWarning
from gmenn_formula.mstep.networks import FixedPart, build_network
from gmenn_formula.results.state import EpochRecord, FitState
from gmenn_formula.training.config import FitConfig
from gmenn_formula.training.glmm import fit_glmm
from gmenn_formula.training.log import EpochLog
from gmenn_formula.training.network import fit_network
from gmenn_formula.training.phases import VariancePhases
from gmenn_formula.training.problem import EMProblem


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


def fit_design(
    design: Design,
    config: FitConfig,
    nets: Mapping | None = None,
    progress: Callable[[EpochRecord], None] | None = None,
) -> FitState:
    """Fit the model of ``design`` (response required) by Monte Carlo EM."""
    started = time.perf_counter()
    device = resolve_device(config.runtime.device)
    problem = EMProblem.from_design(design, device)
    seed = config.runtime.seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    c = problem.num_outputs
    networks = [build_network(spec, inputs, c, nets) for spec, inputs in zip(problem.networks, problem.network_inputs)]
    model = FixedPart(networks, len(problem.fixed_names), c).to(device)
    log = EpochLog(progress)
    extra = {}
    if problem.has_networks:
        phases, stopping = fit_network(problem, model, config, log, rng, generator)
        converged = stopping.stopped
        extra = {"best_epoch": stopping.epoch, "best_validation_loss": stopping.loss}
    else:
        phases, converged = fit_glmm(problem, model, config, log)
    state = _finish(problem, model, phases, log, converged, config, **extra)
    state.seconds = time.perf_counter() - started
    if state.messages:
        warnings.warn("The fit did not converge: " + " ".join(state.messages), ConvergenceWarning, stacklevel=3)
    return state


def _finish(problem: EMProblem, model: FixedPart, phases: VariancePhases, log: EpochLog, converged: bool, config: FitConfig, **extra) -> FitState:
    """The FitState of a finished fit: the averaged estimates and the effects' moments."""
    layout, result = phases.layout, phases.result
    covariances, dispersion, _ = layout.unflatten(result.theta)
    covariance_se, dispersion_se, _ = layout.unflatten(result.se)
    model.eval()
    return FitState(
        num_outputs=problem.num_outputs,
        model=model.cpu(),
        fixed_names=problem.fixed_names,
        covariances=covariances,
        covariance_se=covariance_se,
        dispersion=dispersion,
        dispersion_se=dispersion_se if layout.dispersion else 0.0,
        effect_mean=phases.moments.mean(),
        effect_sd=phases.moments.sd(),
        draws=phases.moments.draws(),
        draw_epochs=np.array(phases.moments.stored_epochs, dtype=np.int64),
        history=log.records,
        converged=converged,
        nobs=problem.num_rows,
        messages=phases.messages,
        epochs=log.last_epoch,
        config=config,
        **extra,
    )
