"""The schedule of a plain GLMM (no ``nn()``): all rows, the linear fixed effects by an exact
Newton M-step in every epoch, EM until the parameters settle, then Newton blocks (or, for gaussian
models, the closed-form maximum likelihood: :meth:`VariancePhases.run`). With the
paper's lambda at 0 the fixed point is the maximum likelihood estimate (lme4's ``REML = FALSE``)."""

from __future__ import annotations

import numpy as np
import torch

from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.mstep.step import newton_fixed_effects
from gmenn_formula.training.config import FitConfig
from gmenn_formula.training.laplace import laplace_applies, laplace_start
from gmenn_formula.training.log import EpochLog
from gmenn_formula.training.phases import VariancePhases
from gmenn_formula.training.problem import EMProblem
from gmenn_formula.training.variance import initial_dispersion, make_estep, sampler_config

START_NEWTON_STEPS = 25
"""Newton steps of the fixed effects with the random effects at 0, where EM starts."""


def fit_glmm(problem: EMProblem, model: FixedPart, config: FitConfig, log: EpochLog) -> tuple[VariancePhases, bool]:
    """Fit by EM until settled (or, from a Laplace start, ``final_epochs`` EM epochs), then the
    Newton blocks. Returns the finished phases and whether EM settled (True after a Laplace start)."""
    rows = problem.rows
    no_effects = tuple(torch.zeros((1, *shape), device=problem.device) for shape in problem.shapes)
    newton_fixed_effects(model, problem.family, rows, no_effects, 1.0, steps=START_NEWTON_STEPS)
    dispersion, scale = initial_dispersion(problem, model, rows)
    covariances = problem.initial_covariances(scale)
    epochs, settle = config.training.max_epochs(False), True
    if config.convergence.laplace_start and laplace_applies(problem):
        covariances = laplace_start(problem, model, covariances)
        epochs, settle = min(epochs, config.convergence.final_epochs), False
    estep = make_estep(problem, config, sampler_config(problem, config, config.estep.draws, variances=True), np.ones(problem.num_rows))
    phases = VariancePhases(problem, model, estep, config, log, covariances, dispersion, fit_beta=True)
    return phases, phases.run(epochs, settle)
