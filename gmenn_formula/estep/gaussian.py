"""Exact draws of gaussian random effects: block Gibbs over the terms, in torch, no compilation.

For the gaussian family the random effects given the fixed part's output F, the
covariances and the residual variance s2 are jointly normal. Given the other terms,
the levels of one term are independent, each normal with precision
H_q = Sigma^-1 + Z_q'W Z_q / s2 and mean H_q^-1 Z_q'W r_q / s2 (r the residual of
the rest, W the row weights). A draw is one sweep that draws every term given the
others' current values: with one term (``(x | g)`` is one term of p = 2) every sweep
is an exact independent draw of the posterior; with several terms the sweeps form a
Gibbs chain, warm-started across epochs like the NUTS chain of
:class:`~gmenn_formula.estep.driver.EStep`.

Shapes: n rows, term l with q_l levels and p_l coefficients, one output.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from gmenn_formula.distributed.group import single_shard
from gmenn_formula.errors import ControlError
from gmenn_formula.estep.arrays import DrawInfo, EpochDraws, SamplerConfig, TermArrays

VARIANCE_FLOOR = 1e-8
"""Smallest prior variance (relative to 1) in the precision: keeps a boundary fit's factors finite."""


class GaussianEStep:
    """Exact conditional draws of every term's effects for a gaussian model (the E-step interface).

    ``terms``: per term codes (n,), Z (n, p), q; ``y`` (n,); ``weights`` (n,): 1 for the
    rows the draws condition on, 0 for held-out rows; ``seed`` seeds the draws;
    ``device`` where they are computed. ``over_shards`` sums the per-level sums over every
    process's rows in a data-parallel fit (an all-reduce; the rows given are this process's
    shard, and every process draws the same effects from the same seed); the identity otherwise.
    """

    def __init__(
        self,
        terms: tuple[TermArrays, ...],
        y: np.ndarray,
        weights: np.ndarray,
        seed: int,
        device: torch.device,
        over_shards: Callable[[torch.Tensor], torch.Tensor] = single_shard,
    ) -> None:
        self.device = device
        self.over_shards = over_shards
        self.y = torch.as_tensor(y, dtype=torch.float64, device=device)
        self.codes = tuple(torch.as_tensor(t.codes, dtype=torch.long, device=device) for t in terms)
        self.Z = tuple(torch.as_tensor(t.Z, dtype=torch.float64, device=device) for t in terms)
        self.shapes = tuple((t.num_levels, t.num_coefs, 1) for t in terms)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.set_weights(weights)
        self.current = tuple(torch.zeros(q, p, dtype=torch.float64, device=device) for q, p, _ in self.shapes)

    def set_weights(self, weights: np.ndarray) -> None:
        """Row weights (n,) of the following draws; the per-level Z'WZ are summed once here."""
        self.weights = torch.as_tensor(weights, dtype=torch.float64, device=self.device)
        self.ZtWZ = tuple(
            self.over_shards(torch.zeros(q, p, p, dtype=torch.float64, device=self.device).index_add_(0, codes, self.weights[:, None, None] * Z[:, :, None] * Z[:, None, :]))
            for (q, p, _), codes, Z in zip(self.shapes, self.codes, self.Z)
        )

    chunk = 1
    """Any number of draws makes an epoch."""

    def use_sampler(self, config: SamplerConfig) -> None:
        """Nothing to change: the draws are exact (kept for the E-step interface)."""

    def draw(self, F: np.ndarray, covariances: list[np.ndarray], dispersion: float, num_draws: int, burn_in: int, chains: int = 1) -> EpochDraws:
        """K = ``num_draws`` Gibbs sweeps of one chain (``chains`` is not used), the first R =
        ``burn_in`` dropped, given F (n, 1), per term covariances (1, p, p) and the residual variance ``dispersion``."""
        if not 0 <= burn_in < num_draws:
            raise ControlError(f"An epoch of K={num_draws} draws cannot drop R={burn_in} of them.")
        residual = self.y - torch.as_tensor(F[:, 0], dtype=torch.float64, device=self.device)
        factors = [self._precision_factor(S, dispersion, l) for l, S in enumerate(covariances)]
        total = sum(torch.einsum("np,np->n", Z, B[codes]) for B, codes, Z in zip(self.current, self.codes, self.Z))
        current, kept = list(self.current), [[] for _ in self.shapes]
        for sweep in range(num_draws):
            for l, (codes, Z, L) in enumerate(zip(self.codes, self.Z, factors)):
                total = total - torch.einsum("np,np->n", Z, current[l][codes])
                current[l] = self._conditional_draw(l, residual - total, L, dispersion)
                total = total + torch.einsum("np,np->n", Z, current[l][codes])
                if sweep >= burn_in:
                    kept[l].append(current[l])
        self.current = tuple(current)
        effects = tuple(torch.stack(draws)[..., None].float().cpu().numpy() for draws in kept)
        return EpochDraws(effects=effects, info=exact_info(num_draws))

    def _precision_factor(self, covariance: np.ndarray, dispersion: float, l: int) -> torch.Tensor:
        """Lower Cholesky factors (q, p, p) of the levels' conditional precisions Sigma^-1 + Z'WZ / s2."""
        S = torch.as_tensor(covariance[0], dtype=torch.float64, device=self.device)
        S = S + VARIANCE_FLOOR * torch.eye(S.shape[0], dtype=S.dtype, device=self.device)
        return torch.linalg.cholesky(torch.linalg.inv(S) + self.ZtWZ[l] / dispersion)

    def _conditional_draw(self, l: int, rest: torch.Tensor, L: torch.Tensor, dispersion: float) -> torch.Tensor:
        """One draw (q, p) of term l given the residual ``rest`` (n,) of everything else."""
        q, p, _ = self.shapes[l]
        Ztr = self.over_shards(torch.zeros(q, p, dtype=torch.float64, device=self.device).index_add_(0, self.codes[l], (self.weights * rest)[:, None] * self.Z[l]))
        mean = torch.cholesky_solve((Ztr / dispersion)[..., None], L)[..., 0]
        z = torch.randn(q, p, 1, dtype=torch.float64, device=self.device, generator=self.generator)
        return mean + torch.linalg.solve_triangular(L.transpose(1, 2), z, upper=True)[..., 0]


def exact_info(num_draws: int) -> DrawInfo:
    """Diagnostics of K exact draws: every one accepted, no leapfrog steps, no divergence."""
    return DrawInfo(
        step_size=np.float32(0.0),
        acceptance_rate=np.ones(num_draws, np.float32),
        num_leapfrog_steps=np.zeros(num_draws, np.int32),
        tree_depth=np.zeros(num_draws, np.int32),
        is_divergent=np.zeros(num_draws, bool),
        logdensity=np.zeros(num_draws, np.float32),
    )
