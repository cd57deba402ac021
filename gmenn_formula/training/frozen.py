"""A fitted model with its networks frozen: E-steps and refits of the rest.

The networks' output on the rows (what they learned, with the scale the fit put them on)
becomes a fixed input of the model: :class:`FrozenNetworks` passes it through, so nothing of
the networks trains or changes. What is left is a GLMM with a known offset per output, which
:func:`fit_glmm` fits as any plain GLMM (the linear fixed effects beta by Newton, the
covariances and the gaussian residual variance by EM or, for gaussian models, in closed form).
With networks present beta has no intercept column (the networks' output bias plays it), so a
refit keeps the overall level the networks set.

Used by ``confint()`` (posterior draws at the estimate for the observed information; refits of
simulated responses for the parametric bootstrap) and ``refit_effects()`` (an E-step for new
levels). Shapes: n rows, c outputs, k linear fixed effects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gmenn_formula.design import Design
from gmenn_formula.estep.arrays import EpochDraws
from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.results.state import FitState
from gmenn_formula.training.config import FitConfig
from gmenn_formula.training.glmm import fit_glmm
from gmenn_formula.training.log import EpochLog
from gmenn_formula.training.problem import EMProblem
from gmenn_formula.training.variance import chains_for_problem, chunk_for, make_estep, predict_fixed, sampler_config


class FrozenNetworks(nn.Module):
    """The networks' output given as the input: (b, c) -> (b, c), no parameters."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return X


@dataclass(frozen=True)
class Refit:
    """A refit's estimates: ``covariances`` per term (c, p, p), ``dispersion`` (1.0 without one),
    ``beta`` (k, c), and whether EM settled by its own rule (``converged``)."""

    covariances: list[np.ndarray]
    dispersion: float
    beta: np.ndarray
    converged: bool


def frozen(design: Design, state: FitState, extra: np.ndarray | None = None) -> tuple[EMProblem, FixedPart]:
    """The problem of ``design`` (on the CPU) with the fitted networks' output (plus ``extra`` (n, c),
    a further known part of eta such as the effects of levels already estimated) as its fixed input,
    and a fixed part holding that input and the fitted beta (a copy: the fit's model is not touched)."""
    problem = EMProblem.from_design(design, torch.device("cpu"))
    rows, model = problem.rows, state.model.to(problem.device).eval()
    c, k = problem.num_outputs, len(problem.fixed_names)
    networks: list[nn.Module] = []
    inputs: tuple[torch.Tensor, ...] = ()
    if model.networks or extra is not None:
        with torch.no_grad():
            held = model(list(rows.X_networks), torch.zeros_like(rows.X_fixed), torch.zeros_like(rows.offset))
        if extra is not None:
            held = held + torch.as_tensor(extra, dtype=held.dtype, device=held.device)
        inputs, networks = (held,), [FrozenNetworks()]
    part = FixedPart(networks, k, c, ["frozen networks"] * len(networks)).to(problem.device)
    with torch.no_grad():
        part.beta.copy_(model.beta.detach())
    rows = dataclasses.replace(rows, X_networks=inputs)
    return dataclasses.replace(problem, rows=rows, networks=(), network_inputs=()), part


def with_response(problem: EMProblem, y: np.ndarray) -> EMProblem:
    """``problem`` with the response ``y`` (n,) in the family's coding (class codes, successes, values)."""
    rows = dataclasses.replace(problem.rows, y=torch.as_tensor(y, dtype=problem.rows.y.dtype, device=problem.device))
    return dataclasses.replace(problem, rows=rows, y=np.asarray(y).astype(problem.y.dtype))


def posterior_draws(problem: EMProblem, model: FixedPart, state: FitState, num_draws: int, seed: int) -> EpochDraws:
    """At least ``num_draws`` draws of the random effects given y, the fixed part and the fitted covariances
    and dispersion (after the fit's burn-in), by the fit's E-step with its settings and ``seed``."""
    config = dataclasses.replace(state.config, runtime=dataclasses.replace(state.config.runtime, seed=seed))
    estep_settings = config.estep
    chains = chains_for_problem(problem, config)
    sampler = sampler_config(problem, config, chunk_for(estep_settings.draws, chains), variances=True)
    estep = make_estep(problem, config, sampler, np.ones(problem.num_rows))
    F = predict_fixed(model, problem.rows).cpu().numpy()
    burn_in, chunk = estep_settings.burn_in, estep.chunk
    wanted = num_draws + chains * burn_in  # at least num_draws kept, however many chains draw them
    return estep.draw(F, state.covariances, state.dispersion, -(-wanted // chunk) * chunk, burn_in, chains)


def refit(problem: EMProblem, model: FixedPart, config: FitConfig) -> Refit:
    """Fit the covariances, dispersion and beta of the frozen ``problem`` from scratch (``model``
    is changed: it ends at the refit's beta)."""
    phases, converged = fit_glmm(problem, model, config, EpochLog())
    covariances, dispersion, beta = phases.layout.unflatten(phases.result.theta)
    return Refit(covariances, float(dispersion), np.asarray(beta).reshape(len(problem.fixed_names), problem.num_outputs), converged)
