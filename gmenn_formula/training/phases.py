"""The variance phases of a fit, on all fitting rows with the network frozen (or no network).

1. EM epochs (phase ``em``), parameter-expanded unless switched off, until the
   parameters settle (plain GLMMs) or for a fixed number of epochs (the final phase
   of network fits): fast far from the optimum.
2. Blocks (phase ``average``): epochs at fixed parameters, whose EM targets give a
   Newton step on the EM map (:mod:`~gmenn_formula.training.newton`) once the step
   stands out of its Monte Carlo error; this converges in flat directions, where EM
   crawls. The block whose step stays within its error, once that error is small, and
   whose step is itself short (within the error allowed in the result) is the last: its
   Newton estimate is reported with that error, and its draws give the reported effects.
   A precise but longer step is taken and checked by another block: the estimate's error
   leaves out J's, which a long step carries (a correlated slope's variance, EM rate ~.95:
   a step of 5 allowed errors ended 16% above the exact ML with a reported error of 2%).

A plain GLMM also gets an exact Newton M-step of its linear fixed effects: every
epoch while in EM; in a block, from the block's fixed beta in every epoch, their
mean becoming the next block's beta.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch

from gmenn_formula.estep.arrays import EffectSampler, EpochDraws
from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.mstep.step import newton_fixed_effects
from gmenn_formula.training.averaging import MAX_Z, SAMPLING_SHARE, Averager, largest_noise_z, precise, stationary_se
from gmenn_formula.training.config import FitConfig
from gmenn_formula.training.gaussian_ml import direct_fit_applies, fit_gaussian_ml
from gmenn_formula.training.information import fixed_effect_information
from gmenn_formula.training.log import EpochLog
from gmenn_formula.training.newton import MissingInformation, ParameterLayout, UnitGroup, unit_groups
from gmenn_formula.training.overlap import DrawAhead, torch_threads_beside
from gmenn_formula.training.problem import EMProblem
from gmenn_formula.training.variance import EffectMoments, chains_for_problem, predict_fixed, predict_held, timed_draw, variance_update


MAX_BLOCKS = 20
"""Newton steps before the last one is reported anyway (with a convergence message)."""
BLOCK_WORK = 50_000
"""Rows x classes x draws an epoch of a block aims at: small data get more draws per epoch (up to
MAX_BLOCK_DRAWS), which cost little beside the fixed cost of an epoch and pin the Newton step down.
A 10,000-row binomial GLMM with three crossed factors (12 seeds): at 100,000 (10 draws per epoch)
0.59 s, Monte Carlo errors 0.7-1.4% of the variances, seed-to-seed sd 0.82-1.03x the reported
error; at 50,000 (4 draws) 0.42 s, 1.0-2.0%, 0.76-1.07x (the target is 2%); at 400,000 (40 draws,
an earlier engine) 1.60 s, 0.2-0.4%."""
MAX_BLOCK_DRAWS = 64
SIGNIFICANT_MEAN_SQUARED_Z = 4.0
"""A Newton step counts as real when its pooled squared z (step over Monte Carlo error) averages
above this, or the largest z exceeds what noise alone reaches among so many parameters
(:func:`~gmenn_formula.training.averaging.largest_noise_z`); otherwise the parameters are at the fixed point within noise."""
SHORT_STEP = 2.0
"""A Newton step may end the fit when it is within this many times the error allowed in the result
(in :func:`~gmenn_formula.training.averaging.precise`'s sense); a longer one is taken and checked by
another block."""
QUICK_RATE = 0.9
GAIN_ERROR = 4.0
"""A block may end the fit at its first look (``window`` epochs) unless its Newton step has a part
along directions where EM's rate exceeds QUICK_RATE that would move the estimate by more than its
allowance were the gain there GAIN_ERROR times J's; then not before ``average_epochs``. J from
short blocks underestimates a rate near 1 (heavy-tailed scores; .97 from 40 epochs where 200 read
.9925, a gain 4x too small), and so the step and its error with it: a correlated slope (rate
~.95-.99) ended 11% above the exact ML after 10 epochs with a reported error of 2.7%."""
MAX_VARIANCE_FACTOR = 2.0
"""A Newton step changes no variance by more than this factor (plus 1% of the largest variance)."""


@dataclass(frozen=True)
class Estimate:
    """A block's result: the Newton estimate ``theta`` (see
    :class:`~gmenn_formula.training.newton.ParameterLayout`: covariances, residual variance, beta)
    and its Monte Carlo standard error ``se``."""

    theta: np.ndarray
    se: np.ndarray
    flat_step: np.ndarray | None = None
    """The part of the Newton step along J's eigenvectors whose eigenvalue exceeds QUICK_RATE (the
    directions where EM crawls and the step's length rests on J's estimated gain)."""


def damped_step(layout: ParameterLayout, theta: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, bool]:
    """``theta`` moved toward ``new`` by the largest share (at most all) that changes no variance
    by more than a factor MAX_VARIANCE_FACTOR (a noisy J can overshoot in a flat direction), and
    whether that share is all of the step."""
    share = 1.0
    floor = 0.01 * max(float(np.max(theta[layout.variance_indices()], initial=0.0)), 1e-12)
    for i in layout.variance_indices():
        old, target = max(theta[i], 0.0), new[i]
        high, low = MAX_VARIANCE_FACTOR * old + floor, old / MAX_VARIANCE_FACTOR
        if target > high:
            share = min(share, (high - old) / (target - old))
        elif target < low:
            share = min(share, (old - low) / (old - target))
    return layout.project(theta + share * (new - theta)), share == 1.0


class VariancePhases:
    """The EM, Newton and final epochs of one fit.

    ``fit_beta``: the linear fixed effects get an exact Newton M-step (plain GLMMs; with
    networks the fixed part stays frozen). ``covariances`` (per term (c, p, p)) and
    ``dispersion`` are where EM starts and, after each epoch or block, the parameters the
    next E-step uses. ``groups``: the problem's :func:`~gmenn_formula.training.newton.unit_groups`
    where the caller has them (None: found here). After :meth:`estimate`, ``result`` holds the
    reported estimate.
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
        groups: list[UnitGroup] | None = None,
    ) -> None:
        self.problem, self.model, self.estep, self.config, self.log = problem, model, estep, config, log
        self.covariances, self.dispersion, self.fit_beta = covariances, dispersion, fit_beta
        self.averager = Averager(config.convergence.window, config.convergence.tolerance)
        self.moments = EffectMoments(list(problem.shapes))
        self.layout = ParameterLayout.of(problem, fit_beta)
        self.groups = unit_groups(problem) if groups is None else groups
        self.messages: list[str] = []
        self.result: Estimate | None = None
        self.block_epochs = 0
        """Epochs the blocks of :meth:`estimate` have run."""

    def _draw(self, num_draws: int, burn_in: int | None = None) -> tuple[EpochDraws, torch.Tensor, float]:
        """One E-step of ``num_draws`` draws on all rows at the current parameters, the first ``burn_in``
        dropped (None: the ``burn_in`` setting): the draws, F (n, c), the sampler's seconds."""
        F = predict_fixed(self.model, self.problem.rows)
        burn_in = self.config.estep.burn_in if burn_in is None else burn_in
        draws, seconds = timed_draw(self.estep, F, self.covariances, self.dispersion, num_draws, burn_in)
        return draws, F, seconds

    @property
    def block_draws(self) -> int:
        """Draws per epoch in a block: ``draws``, or more for small data (see BLOCK_WORK), a multiple of the E-step's chunk."""
        chunk, draws = self.estep.chunk, self.config.estep.draws
        wanted = min(MAX_BLOCK_DRAWS, BLOCK_WORK // max(self.problem.total_rows * self.problem.num_outputs, 1))
        return max(draws, wanted // chunk * chunk)

    def _beta_step(self, effects: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, float]:
        """The exact M-step of beta given ``effects``: (beta (k, c), expected NLL per row); the model keeps it."""
        loss = newton_fixed_effects(self.model, self.problem.family, self.problem.rows, effects, self.dispersion)
        return self.model.beta.detach().cpu().numpy().copy(), loss

    @property
    def closed_form(self) -> bool:
        """Whether the variance components come from the closed-form maximum likelihood (gaussian
        models with the exact E-step, whose sparse factorisation stays small, all rows in one process) instead of EM."""
        exact = self.config.estep.kind(self.problem.family.has_dispersion) == "exact"
        direct = self.config.convergence.closed_form and exact and not self.problem.data_parallel
        return direct and direct_fit_applies(self.problem.terms, nested=self.nested)

    @property
    def _overlaps(self) -> bool:
        """Whether a block's next E-step runs beside this epoch's M-step (``overlap_estep``): not in a
        data-parallel fit (both would all-reduce), nor with the exact gaussian E-step, which is torch
        itself (on 2 cores the 10^6-row gaussian GLMM took 47.8 s against 45.8 s without)."""
        exact = self.config.estep.kind(self.problem.family.has_dispersion) == "exact"
        return self.config.training.overlap_estep and not self.problem.data_parallel and not exact

    @property
    def nested(self) -> bool:
        """Whether all terms nest in one factor (one unit group: levels independent a posteriori across its units)."""
        return len(self.groups) == 1

    def run(self, max_epochs: int, settle: bool) -> bool:
        """Estimate the variance components: :meth:`maximise` where :attr:`closed_form`, else
        :meth:`em` (``max_epochs``, ``settle``) then :meth:`estimate`. Returns whether EM settled
        (True for the closed form)."""
        if self.closed_form:
            self.maximise()
            return True
        settled = self.em(max_epochs, settle)
        self.estimate()
        return settled

    def maximise(self) -> None:
        """The gaussian maximum likelihood in closed form (:mod:`~gmenn_formula.training.gaussian_ml`),
        the fixed part held (or, for plain GLMMs, its linear effects estimated with it); then up to
        ``window`` epochs of exact draws at the estimate (no more than the draws kept) give the
        effects' sds and stored draws; their means are the exact conditional means. Monte Carlo error 0; each epoch's ``loss`` is the marginal NLL per row."""
        started = time.perf_counter()
        rows = self.problem.rows
        if self.fit_beta:  # y less what the fixed part holds fixed: the offset, and frozen networks' output
            y, X = rows.y - predict_held(self.model, rows)[:, 0], rows.X_fixed
        else:
            y, X = rows.y - predict_fixed(self.model, rows)[:, 0], rows.X_fixed[:, :0]
        ml = fit_gaussian_ml(self.problem.terms, y.cpu().numpy(), X.cpu().numpy(), self.problem.correlated)
        if not ml.converged:
            self.messages.append(f"The likelihood maximisation stopped before converging ({ml.message}); check the model.")
        self.covariances, self.dispersion = ml.covariances, ml.dispersion
        beta = ml.beta.reshape(-1, 1) if self.fit_beta else None
        if beta is not None:
            self.set_beta(beta)
        theta = self.layout.flatten(self.covariances, self.dispersion, beta)
        self.result = Estimate(theta, np.zeros_like(theta))
        self.moments = EffectMoments(list(self.problem.shapes))
        self.moments.exact_mean = ml.effects
        maximised, loss = time.perf_counter() - started, -ml.loglik / self.problem.num_rows
        per_epoch = self.block_draws
        for epoch in range(min(self.config.convergence.window, max(1, self.moments.max_draws // per_epoch))):
            started = time.perf_counter()
            draws, _, estep_seconds = self._draw(per_epoch, None if epoch == 0 else 0)
            self.moments.add(draws.effects, self.log.last_epoch + 1)
            seconds = time.perf_counter() - started - estep_seconds + maximised
            self.log.add("average", self.covariances, self.dispersion, draws, estep_seconds, seconds, loss=loss)
            maximised = 0.0

    def em(self, max_epochs: int, settle: bool) -> bool:
        """Up to ``max_epochs`` EM epochs; with ``settle``, stop once the parameters settle
        (and say so in ``messages`` if they do not). Returns whether they settled."""
        expand = self.config.convergence.parameter_expansion
        settled = not settle
        for _ in range(max_epochs):
            started = time.perf_counter()
            draws, F, estep_seconds = self._draw(self.config.estep.draws)
            effects, self.covariances, new_dispersion = variance_update(
                self.problem, draws, F, self.problem.rows, self.covariances, self.dispersion, expand
            )
            beta, loss = self._beta_step(effects) if self.fit_beta else (None, None)
            self.dispersion = new_dispersion
            self.averager.add(self.covariances, self.dispersion if self.layout.dispersion else None, beta)
            self.log.add("em", self.covariances, self.dispersion, draws, estep_seconds, time.perf_counter() - started - estep_seconds, loss=loss)
            if settle and self.averager.settled():
                settled = True
                break
        if not settled:
            self.messages.append(
                f"EM did not settle within {max_epochs} epochs (changes above Monte Carlo noise and tolerance "
                f"{self.config.convergence.tolerance}); the Newton steps start from where it stopped. "
                "Increase epochs= or check the model."
            )
        return settled

    def estimate(self) -> None:
        """Blocks of epochs at fixed parameters, each ending in a Newton step once the step stands
        out of its Monte Carlo error; the block whose step does not, and whose error is within what
        is allowed, is the last: its estimate is reported and its draws give the effects. The
        blocks run ``max_average_epochs`` epochs at most, all together."""
        limit = self.config.convergence.max_average_epochs
        self.block_epochs = 0
        for _ in range(MAX_BLOCKS):
            estimate, final = self._block(limit - self.block_epochs)
            self._move_to(estimate)
            if final:
                break
            if self.block_epochs >= limit:
                self.messages.append(
                    f"The Newton steps on the variance components still moved after {limit} epochs of blocks; the "
                    "estimates are those of the last step, their Monte Carlo errors those of the block before it. "
                    "Increase max_average_epochs= or draws=, or check the model."
                )
                break
        else:
            self.messages.append(
                f"The Newton steps on the variance components still moved after {MAX_BLOCKS} blocks; the "
                "estimates are those of the last step. Increase draws= or check the model."
            )
        self.result = estimate

    def _move_to(self, estimate: Estimate) -> None:
        self.covariances, self.dispersion, beta = self.layout.unflatten(estimate.theta)
        if beta is not None:
            self.set_beta(beta)

    def _block(self, budget: int) -> tuple[Estimate, bool]:
        """At most ``budget`` epochs at the current parameters, looked at every ``window`` epochs: a
        Newton step beyond its Monte Carlo error ends the block with that step (damped), as does a
        precise one longer than the error allowed; a short step within its error ends the fit
        once the error is small enough and ``average_epochs`` are done (``window`` where the step's
        flat part is short: :meth:`_gain_matters`), or when the budget is spent. Returns the
        estimate and whether it is the final one."""
        beta = self.model.beta.detach().cpu().numpy().copy() if self.fit_beta else None
        theta = self.layout.flatten(self.covariances, self.dispersion, beta)
        rows = self.problem.rows
        F = predict_fixed(self.model, rows)  # the parameters, and so F, stay fixed within the block
        chains = chains_for_problem(self.problem, self.config)
        draw = partial(timed_draw, self.estep, F, self.covariances, self.dispersion, self.block_draws, chains=chains)
        ahead = DrawAhead() if self._overlaps else None
        with torch_threads_beside(ahead, self.problem.device):
            try:
                return self._block_epochs(budget, theta, beta, F, draw, ahead)
            except BaseException:  # an error or Ctrl-C: stop the E-step in flight
                if ahead is not None:
                    ahead.cancel()
                raise

    def _block_epochs(
        self,
        budget: int,
        theta: np.ndarray,
        beta: np.ndarray | None,
        F: torch.Tensor,
        draw: Callable[[int], tuple[EpochDraws, float]],
        ahead: DrawAhead | None,
    ) -> tuple[Estimate, bool]:
        """The epochs of :meth:`_block`; ``draw(burn_in)`` is the E-step at the block's parameters.
        With ``ahead``, the next epoch's E-step runs beside this epoch's M-step, except after an
        epoch whose Newton step is looked at (the block may end there): the sampler makes the same
        calls as without it."""
        layout, rows, convergence = self.layout, self.problem.rows, self.config.convergence
        information = MissingInformation(self.problem, layout, self.groups)
        self.moments = EffectMoments(list(self.problem.shapes))
        targets: list[np.ndarray] = []
        for epoch in range(1, budget + 1):
            self.block_epochs += 1
            started = time.perf_counter()
            if ahead is not None and ahead.pending:
                (draws, estep_seconds), waited = ahead.take()
            else:
                # the chain carries on at fixed parameters: only the block's first epoch follows a change
                draws, estep_seconds = draw(self.config.estep.burn_in if epoch == 1 else 0)
                waited = estep_seconds
            looks = epoch >= min(convergence.average_epochs, convergence.window) and epoch % convergence.window == 0
            if ahead is not None and not looks and epoch < budget:
                ahead.submit(partial(draw, 0))
            effects, covariances, dispersion = variance_update(self.problem, draws, F, rows, self.covariances, self.dispersion, False)
            information.add(tuple(torch.as_tensor(B, device=self.problem.device) for B in draws.effects), F, rows, self.dispersion)
            beta_t = loss = None
            if self.fit_beta:
                beta_t, loss = self._beta_step(effects)
                self.set_beta(beta)
            targets.append(layout.flatten(covariances, dispersion, beta_t))
            self.moments.add(draws.effects, self.log.last_epoch + 1)
            seconds = time.perf_counter() - started
            self.log.add("average", self.covariances, self.dispersion, draws, estep_seconds, seconds - waited, seconds, loss=loss)
            if not looks:
                continue
            estimate, significant = self._newton(theta, targets, information)
            allowed = self._allowed(theta)
            fewest = convergence.average_epochs if self._gain_matters(estimate, allowed) else min(convergence.window, convergence.average_epochs)
            may_end = epoch >= fewest and self._precise(estimate)
            if significant or (may_end and not self._short(theta, estimate, allowed)):
                return replace(estimate, theta=damped_step(layout, theta, estimate.theta)[0]), False
            if may_end:
                return estimate, True
        estimate, _ = self._newton(theta, targets, information)
        self.messages.append(
            f"Monte Carlo error of the variance components is above {convergence.mcse_target:.0%} (or a tenth of "
            f"their sampling error, if larger) after {convergence.max_average_epochs} epochs of blocks (the last "
            f"{len(targets)} at the last parameters); see varcorr()['mcse']. Increase max_average_epochs= or draws= for tighter estimates."
        )
        return estimate, True

    def _newton(self, theta: np.ndarray, targets: list[np.ndarray], information: MissingInformation) -> tuple[Estimate, bool]:
        """The Newton estimate from the epochs' EM targets (t, size) at ``theta`` with its
        batch-means error, and whether its step stands out of that error and of the error allowed
        in the result (a smaller step is taken into the estimate, its linearisation error second
        order; the 5-class base scenario's final phase otherwise ran 20 blocks, 580 epochs)."""
        J = information.jacobian(theta)
        steps = np.linalg.solve(np.eye(len(theta)) - J, (np.asarray(targets) - theta).T).T
        step, se = steps.mean(0), stationary_se(steps)
        convergence = self.config.convergence
        scale = np.maximum(np.abs(theta), 1e-3 * np.abs(theta).max() + 1e-12)
        floor = convergence.tolerance * scale
        allowed = self.layout.allowed_errors(theta, convergence.mcse_target)
        floor[: len(allowed)] = np.maximum(floor[: len(allowed)], allowed)
        z = np.abs(step) / np.maximum(se, floor)
        significant = bool(np.mean(z**2) > SIGNIFICANT_MEAN_SQUARED_Z or np.max(z) > max(MAX_Z, largest_noise_z(len(z), len(targets))))
        values, vectors = np.linalg.eig(J)
        coefficients = np.linalg.lstsq(vectors, step.astype(complex), rcond=None)[0]
        flat = np.abs(values) > QUICK_RATE
        flat_step = np.real(vectors[:, flat] @ coefficients[flat])
        return Estimate(self.layout.project(theta + step), se, flat_step), significant

    @staticmethod
    def _gain_matters(estimate: Estimate, allowed: np.ndarray) -> bool:
        """Whether the step's part in directions where EM's rate exceeds QUICK_RATE would move the
        estimate by more than the error ``allowed`` at the step's start (:meth:`_allowed`, judged as
        :meth:`_precise` judges errors) were their gain GAIN_ERROR times what J says: J from a short
        block underestimates a gain near 1."""
        return not precise((GAIN_ERROR - 1.0) * np.abs(estimate.flat_step), allowed)

    @staticmethod
    def _short(theta: np.ndarray, estimate: Estimate, allowed: np.ndarray) -> bool:
        """Whether the Newton step from ``theta`` to ``estimate`` is within SHORT_STEP times the error
        ``allowed`` at ``theta`` (:meth:`_allowed`, judged as :meth:`_precise` judges errors), so that
        J's own error, which the estimate's error leaves out, moves it by a fraction of that."""
        return precise(np.abs(estimate.theta - theta) / SHORT_STEP, allowed)

    def _precise(self, estimate: Estimate) -> bool:
        """Whether the estimate's Monte Carlo errors are within what is allowed (:meth:`_allowed`)."""
        return precise(estimate.se, self._allowed(estimate.theta))

    def _allowed(self, theta: np.ndarray) -> np.ndarray:
        """Monte Carlo error allowed at ``theta`` in the variance parameters
        (:meth:`~gmenn_formula.training.newton.ParameterLayout.allowed_errors`) and, where beta takes
        Newton steps with them (terms nested in one factor), in beta: SAMPLING_SHARE of its
        standard error (lme4's Laplace information, at the block's posterior means of the effects).
        Without it a poisson model with nested factors reported an intercept whose Newton estimate
        carried an error of .2 (gain ~200 from a noisy J) beside a standard error of ~.2."""
        allowed = self.layout.allowed_errors(theta, self.config.convergence.mcse_target)
        if not (self.fit_beta and self.nested and self.moments.count):
            return allowed
        covariances, dispersion, _ = self.layout.unflatten(theta)
        largest = max(float(np.abs(S).max()) for S in covariances)
        held = {(l, k) for l, S in enumerate(covariances) for k in range(len(S)) if np.linalg.eigvalsh(S[k]).min() <= 1e-8 * largest}
        information = fixed_effect_information(self.problem, self.model, covariances, dispersion, self.moments.mean(), held)
        beta_se = np.sqrt(np.maximum(np.diag(np.linalg.pinv(information)), 0.0))
        return np.concatenate([allowed, SAMPLING_SHARE * beta_se])

    def set_beta(self, beta: np.ndarray) -> None:
        """Linear fixed effects (k, c) into the model."""
        with torch.no_grad():
            self.model.beta.copy_(torch.as_tensor(beta, device=self.model.beta.device))
