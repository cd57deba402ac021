"""A deterministic start for the EM of a plain GLMM: Laplace-approximate EM, no sampling.

Each iteration, per random-effect term in turn (backfitting over crossed terms), one Fisher
scoring step of the term's effects toward their conditional mode given the others, with the
per-level precision H_lq = sum_{i in q} kron(z_i z_i^T, W_i) + Sigma_l^{-1} (W_i the row's
Hessian in eta, classes coupled within a level); then every covariance from the Laplace
approximation of the effects' second moments, Sigma_l[c] = mean_q (b_lq b_lq^T + H_lq^{-1}) on
class c's block, and one Newton step of the linear fixed effects at the modes. It stops when no
variance moves by more than :data:`TOLERANCE` (relative) or after :data:`MAX_ITERATIONS`.

The result only starts EM: Laplace's variances are biased where clusters are small (binary
rows, few per level), and the exact-likelihood Monte Carlo EM and its Newton blocks that follow
are what the fit reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.mstep.step import Rows, newton_fixed_effects, random_part, row_derivatives
from gmenn_formula.training.problem import EMProblem
from gmenn_formula.training.variance import predict_fixed

MAX_ITERATIONS = 100
TOLERANCE = 1e-3
MAX_EFFECT_SIZE = 25
"""Coefficients x classes per level up to which the start runs (its (q, d, d) precisions)."""
RIDGE = 1e-8


def laplace_applies(problem: EMProblem) -> bool:
    """Whether :func:`laplace_start` runs: a non-gaussian plain GLMM whose per-level effects are small."""
    return not problem.family.has_dispersion and all(p * c <= MAX_EFFECT_SIZE for _, p, c in problem.shapes)


@dataclass(frozen=True)
class LaplaceStart:
    """Where the Laplace-approximate EM ends: ``covariances`` per term (c, p, p), and ``prior_share``,
    the largest over terms of the mean over levels of the prior's share of a level's posterior
    precision, trace(Sigma^-1 H^-1) / d (0: the data determine every level; 1: they say nothing)."""

    covariances: list[np.ndarray]
    prior_share: float


def laplace_start(problem: EMProblem, model: FixedPart, covariances: list[np.ndarray], stop_share: float | None = None) -> LaplaceStart:
    """Laplace-approximate EM from ``covariances`` (per term (c, p, p)), the model's beta updated in
    place. ``stop_share``: end after the first iteration whose prior share exceeds it (None: never).

    Where the data hardly determine the levels of crossed terms, exact-likelihood EM must settle
    after the start anyway, and Laplace's iterations only lead it astray: binary rows, three crossed
    factors of 10^4 levels at ~10 rows each (prior share .88), truth .5/.3/.2, the third variance
    went .22 -> .07 over the 100 iterations while the exact ML is .19 and EM then climbed back for
    ~15 epochs; at 10^6 rows the 100 iterations also took ~20 s."""
    rows, family = problem.rows, problem.family
    y, trials = rows.y.double(), rows.trials.double()
    intercepts = _intercept_columns(rows)
    effects = [torch.zeros(shape, dtype=torch.float64, device=problem.device) for shape in problem.shapes]
    current = [np.array(S, dtype=np.float64) for S in covariances]
    shares: list[float] = []
    for _ in range(MAX_ITERATIONS):
        eta_fixed = predict_fixed(model, rows).double()
        inverses, shares = [], []
        for index in range(len(effects)):
            eta = eta_fixed + random_part(tuple(B.float()[None] for B in effects), rows)[0].double()
            gradient, hessian = row_derivatives(family, eta, y, trials, 1.0)  # of the NLL
            effects[index], inverse, share = _scoring_step(rows.codes[index], rows.Z[index].double(), gradient, hessian, effects[index], current[index])
            inverses.append(inverse)
            shares.append(share)
        _centre_intercepts(model, effects, intercepts)
        updated = [_laplace_covariance(B, inverse, full) for B, inverse, full in zip(effects, inverses, problem.correlated)]
        newton_fixed_effects(model, family, rows, tuple(B.float()[None] for B in effects), 1.0, steps=1)
        variances = [np.diagonal(S, axis1=1, axis2=2) for S in current]
        change = max((np.abs(np.diagonal(S, axis1=1, axis2=2) - old) / np.maximum(old, 1e-8)).max() for S, old in zip(updated, variances))
        current = updated
        if change < TOLERANCE or (stop_share is not None and max(shares) > stop_share):
            break
    return LaplaceStart(current, max(shares, default=0.0))


def _intercept_columns(rows: Rows) -> tuple[int | None, tuple[tuple[int, ...], ...]]:
    """The fixed part's column of ones in X (None without one) and per term its columns of ones in Z."""
    ones = [k for k in range(rows.X_fixed.shape[1]) if bool(torch.all(rows.X_fixed[:, k] == 1))]
    return (ones[0] if ones else None), tuple(tuple(j for j in range(Z.shape[1]) if bool(torch.all(Z[:, j] == 1))) for Z in rows.Z)


def _centre_intercepts(model: FixedPart, effects: list[torch.Tensor], intercepts: tuple[int | None, tuple[tuple[int, ...], ...]]) -> None:
    """Move each term's mean random intercept (per class) into the fixed intercept, where both
    exist (``intercepts``, see :func:`_intercept_columns`): eta is unchanged, and the slow direction
    of backfitting (the intercepts of crossed terms and beta's trading a constant; 3% of it removed
    per iteration on a poisson model with two crossed factors) is gone."""
    fixed, per_term = intercepts
    if fixed is None:
        return
    for B, columns in zip(effects, per_term):
        for j in columns:
            shift = B[:, j, :].mean(0)  # (c,)
            B[:, j, :] -= shift
            with torch.no_grad():
                model.beta[fixed] += shift.to(model.beta.dtype)


def _scoring_step(codes: torch.Tensor, Z: torch.Tensor, gradient: torch.Tensor, hessian: torch.Tensor, B: torch.Tensor, covariance: np.ndarray):
    """A term's effects B (q, p, c) after one Fisher scoring step, given the rows' NLL ``gradient``
    (n, c) and ``hessian`` (n, c, c) in eta, its ``codes`` (n,), ``Z`` (n, p) and prior
    ``covariance`` (c, p, p); the inverse (q, d, d) of their per-level precision (layout p * c + class);
    and the prior's mean share of that precision, mean over levels of trace(prior H^-1) / d."""
    q, p, c = B.shape
    d = p * c
    score = torch.zeros((q, p, c), dtype=B.dtype, device=B.device).index_add_(0, codes, -Z[:, :, None] * gradient[:, None, :])
    outer = torch.einsum("ia,ib,ixy->iaxby", Z, Z, hessian.double()).reshape(len(codes), d, d)
    precision = torch.zeros((q, d, d), dtype=B.dtype, device=B.device).index_add_(0, codes, outer)
    prior = torch.as_tensor(np.linalg.inv(covariance + RIDGE * np.eye(p)), dtype=B.dtype, device=B.device)  # (c, p, p)
    block = torch.einsum("xab,xy->axby", prior, torch.eye(c, dtype=B.dtype, device=B.device)).reshape(d, d)
    precision = precision + block
    flat = B.reshape(q, d)
    score = score.reshape(q, d) - flat @ block
    inverse = torch.linalg.inv(precision)
    share = float(torch.einsum("xy,qyx->", block, inverse)) / (q * d)
    return (flat + torch.einsum("qxy,qy->qx", inverse, score)).reshape(q, p, c), inverse, share


def _laplace_covariance(B: torch.Tensor, inverse: torch.Tensor, correlated: bool) -> np.ndarray:
    """Per class (c, p, p): the mean over levels of b b^T plus the class's block of H^-1 (its
    diagonal only for an uncorrelated term)."""
    q, p, c = B.shape
    second = torch.einsum("qac,qbc->cab", B, B) / q
    blocks = inverse.reshape(q, p, c, p, c).diagonal(dim1=2, dim2=4).permute(3, 1, 2, 0).mean(-1)  # (c, p, p)
    covariance = (second + blocks).cpu().numpy()
    return covariance if correlated else covariance * np.eye(p)
