"""The variance phases of a fit, on all fitting rows with the network frozen (or no network).

First EM epochs (phase ``em``), parameter-expanded unless switched off, until the
parameters settle (plain GLMMs) or for a fixed number of epochs (the final phase
of network fits); then averaging (phase ``average``): stochastic approximation
with the averaged iterate fed back, until the Monte Carlo error of the reported
variances is small (see :mod:`~gmenn_formula.training.averaging`). A plain GLMM
also gets the exact Newton M-step of its linear fixed effects in every epoch.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from gmenn_formula.estep.arrays import EffectSampler, EpochDraws
from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.mstep.step import newton_fixed_effects
from gmenn_formula.training.averaging import Averager
from gmenn_formula.training.config import FitConfig
from gmenn_formula.training.log import EpochLog
from gmenn_formula.training.problem import EMProblem
from gmenn_formula.training.variance import EffectMoments, predict_fixed, timed_draw, variance_update


class VariancePhases:
    """The EM and averaging epochs of one fit.

    ``fit_beta``: the linear fixed effects get an exact Newton M-step each epoch (plain
    GLMMs; with networks the fixed part stays frozen). ``covariances`` (per term
    (c, p, p)) and ``dispersion`` are where EM starts and, after each epoch, the
    parameters the next E-step uses.
    """

    def __init__(
        self,
        problem: EMProblem,
        model: FixedPart,
        estep: EffectSampler,
        config: FitConfig,
        log: EpochLog,
        covariances: list[np.ndarray],
        dispersion: float,
        fit_beta: bool,
    ) -> None:
        self.problem, self.model, self.estep, self.config, self.log = problem, model, estep, config, log
        self.covariances, self.dispersion, self.fit_beta = covariances, dispersion, fit_beta
        self.averager = Averager(config.convergence.window, config.convergence.tolerance)
        self.moments = EffectMoments(list(problem.shapes))
        self.messages: list[str] = []

    def _epoch(self, expand: bool) -> tuple[EpochDraws, np.ndarray | None, float | None, float]:
        """E-step and M-step on all rows; the new estimates go to the averager. Returns the
        draws, beta (k, c) if fitted, the expected NLL per row if fitted, and the E-step's seconds."""
        problem, estep = self.problem, self.config.estep
        rows = problem.rows
        F = predict_fixed(self.model, rows)
        draws, estep_seconds = timed_draw(self.estep, F, self.covariances, self.dispersion, estep.draws, estep.burn_in)
        effects, self.covariances, new_dispersion = variance_update(
            problem, draws, F, rows, self.covariances, self.dispersion, expand
        )
        beta = loss = None
        if self.fit_beta:
            loss = newton_fixed_effects(self.model, problem.family, rows, effects, self.dispersion)
            beta = self.model.beta.detach().cpu().numpy().copy()
        self.dispersion = new_dispersion
        self.averager.add(self.covariances, self.dispersion if problem.family.has_dispersion else None, beta)
        return draws, beta, loss, estep_seconds

    def em(self, max_epochs: int, settle: bool) -> bool:
        """Up to ``max_epochs`` EM epochs; with ``settle``, stop once the parameters settle
        (and say so in ``messages`` if they do not). Returns whether they settled."""
        expand = self.config.convergence.parameter_expansion
        settled = not settle
        for _ in range(max_epochs):
            started = time.perf_counter()
            draws, _, loss, estep_seconds = self._epoch(expand)
            self.log.add("em", self.covariances, self.dispersion, draws, estep_seconds, time.perf_counter() - started - estep_seconds, loss=loss)
            if settle and self.averager.settled():
                settled = True
                break
        if not settled:
            self.messages.append(
                f"EM did not settle within {max_epochs} epochs (changes above Monte Carlo noise and tolerance "
                f"{self.config.convergence.tolerance}); estimates are averages of the following epochs. "
                "Increase epochs= or check the model."
            )
        return settled

    def average(self) -> None:
        """Averaged epochs until the Monte Carlo error is below target (checked every window
        after ``average_epochs``) or ``max_average_epochs`` are done."""
        convergence = self.config.convergence
        self.averager.start_averaging()
        for averaged in range(1, convergence.max_average_epochs + 1):
            started = time.perf_counter()
            draws, _, loss, estep_seconds = self._epoch(expand=False)
            self.moments.add(draws.effects)
            covariances, dispersion, beta = self.averager.current()
            self.covariances = covariances
            if dispersion is not None:
                self.dispersion = dispersion
            if self.fit_beta:
                self.set_beta(beta)
            self.log.add("average", self.covariances, self.dispersion, draws, estep_seconds, time.perf_counter() - started - estep_seconds, loss=loss)
            if averaged < convergence.average_epochs:
                continue
            at_cap = averaged == convergence.max_average_epochs
            if (at_cap or averaged % convergence.window == 0) and self.averager.precise(convergence.mcse_target, self.problem.num_levels):
                return
        self.messages.append(
            f"Monte Carlo error of the variance components is above {convergence.mcse_target:.0%} (or a tenth of "
            f"their sampling error, if larger) after {convergence.max_average_epochs} averaged epochs; "
            "see varcorr()['mcse']. Increase max_average_epochs= for tighter estimates."
        )

    def set_beta(self, beta: np.ndarray) -> None:
        """Linear fixed effects (k, c) into the model."""
        with torch.no_grad():
            self.model.beta.copy_(torch.as_tensor(beta, device=self.model.beta.device))
