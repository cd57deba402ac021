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
from gmenn_formula.training.newton import unit_groups
from gmenn_formula.training.phases import VariancePhases
from gmenn_formula.training.problem import EMProblem
from gmenn_formula.training.variance import chains_for_problem, chunk_for, initial_dispersion, make_estep, sampler_config

START_NEWTON_STEPS = 25
"""Newton steps of the fixed effects with the random effects at 0, where EM starts."""
MAX_CROSSED_PRIOR_SHARE = 0.2
"""Crossed terms take the short EM after a Laplace start only where the data determine their
levels: the prior's mean share of a level's posterior precision at most this, for every term."""
LAPLACE_STOP_SHARE = 0.5
"""A crossed design's Laplace start ends after the first iteration whose prior share exceeds this:
EM settles after such a start anyway (the share rarely falls from there to MAX_CROSSED_PRIOR_SHARE),
and Laplace's further iterations lead it away from the exact answer (laplace.laplace_start)."""


def fit_glmm(problem: EMProblem, model: FixedPart, config: FitConfig, log: EpochLog) -> tuple[VariancePhases, bool]:
    """Fit by EM until settled, then the Newton blocks. After a Laplace start on a design whose
    terms nest in one factor, or whose crossed terms' levels the data determine
    (MAX_CROSSED_PRIOR_SHARE), EM runs only ``final_epochs``: the blocks' Jacobian (per-unit missing
    information) is exact, or nearly, there and takes the steps from Laplace's answer to the exact
    one. Crossed levels that the data hardly determine are coupled a posteriori, which that Jacobian
    leaves out (it read EM's rate as .77-.91 where EM moved at ~.95 on 10^6 binary rows and 3 x 10^5
    levels, ~10 rows each), so its steps fall short there and EM settles first, from the Laplace
    start's first iteration (its later ones move toward Laplace's own, biased, answer). A data-parallel
    fit has no Laplace start (its sparse Newton solve needs every row): EM starts from the
    fixed effects alone and settles. Returns the
    finished phases and whether EM settled (True after a short EM)."""
    rows = problem.rows
    no_effects = tuple(torch.zeros((1, *shape), device=problem.device) for shape in problem.shapes)
    newton_fixed_effects(model, problem.family, rows, no_effects, 1.0, steps=START_NEWTON_STEPS)
    dispersion, scale = initial_dispersion(problem, model, rows)
    covariances, start, groups = problem.initial_covariances(scale), None, unit_groups(problem)
    if config.convergence.laplace_start and laplace_applies(problem) and not problem.data_parallel:
        start = laplace_start(problem, model, covariances, stop_share=None if len(groups) == 1 else LAPLACE_STOP_SHARE)
        covariances = start.covariances
    chunk = chunk_for(config.estep.draws, chains_for_problem(problem, config))
    estep = make_estep(problem, config, sampler_config(problem, config, chunk, variances=True), np.ones(problem.num_rows))
    phases = VariancePhases(problem, model, estep, config, log, covariances, dispersion, fit_beta=True, groups=groups)
    epochs, settle = config.training.max_epochs(False), True
    if start is not None and (phases.nested or start.prior_share <= MAX_CROSSED_PRIOR_SHARE):
        epochs, settle = min(epochs, config.convergence.final_epochs), False
    return phases, phases.run(epochs, settle)
