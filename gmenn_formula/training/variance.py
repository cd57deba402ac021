"""One E-step and the variance M-step that follows it.

The E-step draws the random effects given the fixed part's output F (n, c) and
the current covariances; the variance M-step sets every covariance (c, p, p)
to the draws' second moments (Rao-Blackwellised where a closed form exists),
optionally parameter-expanded, and the gaussian residual variance to the mean
squared residual. :class:`EffectMoments` accumulates the draws that the results
report (posterior means, sds and a thinned store).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from gmenn_formula.estep.arrays import EpochDraws
from gmenn_formula.estep.arrays import EffectSampler, SamplerConfig
from gmenn_formula.estep.gaussian import GaussianEStep
from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.mstep.step import (
    Rows,
    expand_effects,
    expand_second_moments,
    expansion_maps,
    GaussianConditionals,
    random_part,
    residual_variance,
)
from gmenn_formula.mstep.moments import level_second_moments, score_controlled, softmax_level_moments
from gmenn_formula.training.config import FitConfig
from gmenn_formula.training.problem import EMProblem
from gmenn_formula.training.watchdog import WatchedSampler

MAX_STORED_DRAW_BYTES = 200 * 2**20
"""Cap on the memory of stored final-phase draws (for ranef sds and InferenceData)."""


def predict_fixed(model: FixedPart, rows: Rows) -> torch.Tensor:
    """The fixed part's output F (n, c) on ``rows``, in eval mode, without gradient."""
    model.eval()
    with torch.no_grad():
        return model(list(rows.X_networks), rows.X_fixed, rows.offset)


def predict_held(model: FixedPart, rows: Rows) -> torch.Tensor:
    """(n, c) the fixed part's output less its linear effects X beta: the offset and the networks'
    output, what a fit of beta with the networks frozen holds fixed (no gradient)."""
    with torch.no_grad():
        return predict_fixed(model, rows) - rows.X_fixed @ model.beta


def initial_dispersion(problem: EMProblem, model: FixedPart, rows: Rows) -> tuple[float, float]:
    """(dispersion, covariance scale) to start EM from: half the mean squared residual of the
    fixed part on ``rows`` (every shard's) and that residual for gaussian; 1.0 and 1.0 otherwise."""
    if not problem.family.has_dispersion:
        return 1.0, 1.0
    F = predict_fixed(model, rows)
    residual = float(rows.total(((rows.y - F[:, 0]) ** 2).double().sum())) / rows.num_total
    return residual / 2, residual


def sampler_config(problem: EMProblem, config: FitConfig, chunk: int, variances: bool) -> SamplerConfig:
    """NUTS settings for chunks of ``chunk`` draws that set reported ``variances`` or feed a network's
    loss (the gaussian E-step ignores them)."""
    kind = config.estep.kind(problem.family.has_dispersion)
    depth = config.estep.tree_depth(variances, exact_moments=problem.family.has_dispersion)
    return SamplerConfig(kind="whitened" if kind == "exact" else kind, num_draws=chunk, burn_in=0, max_tree_depth=depth)


CHAIN_WORK = 20_000
"""Rows x outputs below which the E-step runs one chain whatever the ``chains`` setting: the epochs
of small models are dispatch-bound (cbpp, 56 rows: second fits .30 -> .35 s on two chains; 10,000
binary rows: the same time), larger ones gain (the base scenario, 16,000 rows x 5 classes:
final-phase epochs 0.115 -> 0.059 s)."""


def chains_for_problem(problem: EMProblem, config: FitConfig) -> int:
    """The most chains an epoch at fixed parameters is dealt to (see :data:`CHAIN_WORK`)."""
    return config.estep.chains if problem.total_rows * problem.num_outputs >= CHAIN_WORK else 1


def chunk_for(draws: int, chains: int) -> int:
    """Draws per compiled chunk for epochs of ``draws`` dealt to ``chains`` chains: draws / chains
    where that divides, else all of them (one chain)."""
    return draws // chains if draws % chains == 0 else draws


def make_estep(problem: EMProblem, config: FitConfig, sampler: SamplerConfig, weights: np.ndarray) -> EffectSampler:
    """The E-step on all fitting rows, ``weights`` (n,) 1 for the rows the draws condition on: exact
    block Gibbs in torch for gaussian models (``sampler`` "auto" or "exact"), else NUTS on the PyMC
    model compiled to JAX (imported here, so gaussian fits never load PyMC or JAX); every call is
    bounded in time (:class:`~gmenn_formula.training.watchdog.WatchedSampler`)."""
    seed = config.runtime.seed
    if config.estep.kind(problem.family.has_dispersion) == "exact":
        estep = GaussianEStep(problem.terms, problem.y, weights, seed, problem.device, over_shards=problem.rows.over_shards)
    else:
        from gmenn_formula.estep.driver import EStep
        from gmenn_formula.estep.sharded import row_mesh

        mesh = row_mesh() if problem.data_parallel else None
        estep = EStep(problem.family, problem.terms, problem.y, problem.trials, weights, problem.num_outputs, sampler, seed, mesh)
    return WatchedSampler(estep, config.runtime.estep_timeout)


def timed_draw(
    estep: EffectSampler, F: torch.Tensor, covariances: list[np.ndarray], dispersion: float, draws: int, burn_in: int, chains: int = 1
) -> tuple[EpochDraws, float]:
    """One E-step of K = ``draws`` (R = ``burn_in`` dropped per chain, at most ``chains``) given F (n, c), and its wall seconds."""
    started = time.perf_counter()
    result = estep.draw(F.cpu().numpy(), covariances, dispersion, draws, burn_in, chains)
    return result, time.perf_counter() - started


def variance_update(
    problem: EMProblem,
    draws: EpochDraws,
    F: torch.Tensor,
    rows: Rows,
    covariances: list[np.ndarray],
    dispersion: float,
    expand: bool,
    score_form: bool = True,
) -> tuple[tuple[torch.Tensor, ...], list[np.ndarray], float]:
    """The covariance/dispersion M-step from ``draws`` (drawn given F (n, c) on ``rows``,
    ``covariances`` and ``dispersion``). ``expand``: parameter-expanded (PX-EM; see
    :func:`~gmenn_formula.mstep.step.expansion_maps`), and the returned effects are the
    rescaled draws; for gaussian the last term's draws are its conditional means, see
    :class:`~gmenn_formula.mstep.step.GaussianConditionals`). Returns the effects (m, q, p, c)
    per term, the covariances, the dispersion (1.0 without one)."""
    family = problem.family
    drawn = effects = tuple(torch.as_tensor(B, device=problem.device) for B in draws.effects)
    current = [torch.as_tensor(S, device=problem.device) for S in covariances]
    new_dispersion = 1.0
    if family.has_dispersion:
        conditionals = GaussianConditionals.of(effects, rows, F, current, dispersion)
        statistics = conditionals.second_moments()
        new_dispersion = conditionals.residual_variance(rows)
        effects = conditionals.effects_with_last_mean(effects)
    else:
        per_level = [softmax_level_moments(B, S) if family.shift_invariant else level_second_moments(B) for B, S in zip(effects, current)]
        statistics = score_controlled(family, effects, per_level, current, F, rows, dispersion) if score_form else [S.mean(0) for S in per_level]
    if expand:
        # From the draws themselves: a term at its conditional mean (shrunk toward 0) would read a
        # working parameter above 1 at the fixed point (a gaussian GLMM's last term went .2 -> .43)
        maps = expansion_maps(family, F, drawn, rows, dispersion)
        effects = expand_effects(effects, maps)
        statistics = expand_second_moments(statistics, maps)
        if family.has_dispersion:  # the last term is at its conditional mean: add back its spread, A V A'
            A, V, ZtZ = maps[-1][:, :, 0].double(), conditionals.variances[-1], conditionals.ZtZ[-1]
            spread = float(torch.einsum("qij,jk,qkl,il->", ZtZ, A, V, A)) / rows.num_total
            new_dispersion = residual_variance(F, random_part(effects, rows), rows) + spread
    new_covariances = [_covariance(S, full) for S, full in zip(statistics, problem.correlated)]
    return effects, new_covariances, new_dispersion


def _covariance(statistic: torch.Tensor, full: bool) -> np.ndarray:
    """Second moments (c, p, p) as a covariance: as they are, or their diagonal for ``||`` terms."""
    S = statistic.cpu().numpy().astype(np.float64)
    return S if full else np.stack([np.diag(np.diag(s)) for s in S])


class EffectMoments:
    """Running mean and sd of the draws (q, p, c) per term, and a store of at most
    ``max_draws`` draws (None: 200, fewer where they would take more than
    MAX_STORED_DRAW_BYTES) thinned evenly across the whole phase: every ``stride``-th
    draw is kept, and when the store fills up every other stored draw is dropped
    and the stride doubles."""

    def __init__(self, shapes: list[tuple[int, ...]], max_draws: int | None = None) -> None:
        self.shapes = shapes
        self.count = 0
        self.sum = [np.zeros(s) for s in shapes]
        self.sum_sq = [np.zeros(s) for s in shapes]
        self.stored: list[list[np.ndarray]] = [[] for _ in shapes]
        self.stored_epochs: list[int] = []
        size = sum(int(np.prod(s)) for s in shapes) * 4
        self.max_draws = max(2, max_draws or min(200, MAX_STORED_DRAW_BYTES // max(size, 1)))
        self.stride = 1
        self.exact_mean: list[np.ndarray] | None = None
        """Conditional means known in closed form (the gaussian ML), reported instead of the draws' mean."""

    def add(self, effects: tuple[np.ndarray, ...], epoch: int = 0) -> None:
        """One epoch's draws (m, q, p, c) per term; ``epoch`` is recorded with each stored draw."""
        for index, B in enumerate(effects):
            self.sum[index] += B.sum(0)
            self.sum_sq[index] += (B.astype(np.float64) ** 2).sum(0)
        for offset in range(effects[0].shape[0] if effects else 0):
            if (self.count + offset) % self.stride == 0:
                for index, B in enumerate(effects):
                    self.stored[index].append(B[offset].copy())  # a view would keep the whole epoch alive
                self.stored_epochs.append(epoch)
                self._thin()
        self.count += effects[0].shape[0] if effects else 0

    def _thin(self) -> None:
        """Drop every other stored draw, doubling the stride, until the store is below ``max_draws``."""
        while len(self.stored_epochs) >= self.max_draws:
            self.stored = [kept[::2] for kept in self.stored]
            self.stored_epochs = self.stored_epochs[::2]
            self.stride *= 2

    def mean(self) -> list[np.ndarray]:
        """Per term (q, p, c): ``exact_mean`` where set, else the draws' mean."""
        return self.exact_mean if self.exact_mean is not None else self._draw_mean()

    def _draw_mean(self) -> list[np.ndarray]:
        return [s / max(self.count, 1) for s in self.sum]

    def sd(self) -> list[np.ndarray]:
        return [np.sqrt(np.maximum(q / max(self.count, 1) - m**2, 0.0)) for q, m in zip(self.sum_sq, self._draw_mean())]

    def draws(self) -> list[np.ndarray]:
        return [np.stack(d) if d else np.zeros((0, *s)) for d, s in zip(self.stored, self.shapes)]
