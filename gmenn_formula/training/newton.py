"""Newton steps on the EM map, and the Monte Carlo error of the result.

EM's map M sets each covariance to the posterior mean of its second moments,
M(theta) = E_theta[S | y] / q, and its fixed point is the maximum likelihood
estimate. Plain EM converges at the rate of the largest eigenvalue of M's Jacobian
J (the fraction of missing information), which is near 1 where the likelihood is
flat: EM then crawls, and a convergence test on its movement stops it short (a
binomial model with a correlated random slope stopped 15-20% off the exact ML, with a
reported Monte Carlo error 10x below the seed-to-seed spread). A Newton step on
theta - M(theta) = 0,

    theta_new = theta + (I - J)^-1 (M(theta) - theta),

converges whatever J is. J comes from the same draws: the random-effect prior is an
exponential family with natural parameter eta = -Sigma^-1 / 2 and sufficient
statistic S, so dE[S | y] / d eta = Cov(S | y), the posterior covariance of the
second moments, and with d eta = Sigma^-1 dSigma Sigma^-1 / 2,

    J = D^-1 Cov(T) W^T,   T = the unique entries of S,   W[j, i] = d<eta, S>/d theta_j / d T_i,

D the levels of each entry's term (the residual variance: its statistic is the
residual sum of squares, eta = -1 / (2 s2), D = n). A plain GLMM's linear fixed
effects beta join theta: their M-step solves E[g_beta(b)] = 0 for the complete-data
score g_beta = X' dlog p(y | b) / d eta, so by the implicit function theorem their rows
of J are I_beta^-1 Cov(g_beta, .) (I_beta = E[X' H X], the M-step's Hessian), and
dE[T] / d beta = Cov(T, g_beta): with V = (T, g_beta), J = P Cov(V) Q,
P = diag(D^-1, I_beta^-1), Q = diag(W^T, I). Cov(T) is estimated per
*unit*: levels whose effects are independent a posteriori. When every term nests in
one grouping factor (one factor, several terms on it, or nested factors), a unit is a
level of that factor and Cov(T) = sum over units of each unit's covariance, which a
few dozen draws per unit pin down; with crossed factors each term's levels are units
of their own, which leaves out the covariances between terms (J is then block
diagonal by term, and the residual variance and beta have no Newton step: they
follow EM, block by block).

The block's epochs all draw at the same theta, so they form a stationary chain: each
epoch's EM target M_t maps to a Newton estimate theta + (I - J)^-1 (M_t - theta), and
the spread of those (batch means) is the Monte Carlo error of their mean, with the
amplification of flat directions included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gmenn_formula.design.grouping import nested_units
from gmenn_formula.mstep.step import Rows, random_part, row_derivatives
from gmenn_formula.training.averaging import SAMPLING_SHARE
from gmenn_formula.training.problem import EMProblem

MAX_AMPLIFICATION = 200.0
"""Largest (I - J)^-1 gain allowed in a flat direction: J's spectral radius is capped at 1 - 1/200.
A cap below the true gain shortens the Newton step and its error alike (the step's z is unchanged),
so a block stops short of the fixed point with an error too small: at 1 - 1/50 a correlated slope
on 60 groups (exact ML .497, radius ~.98-.99) read .44 with an error of .015 on one seed of three."""


@dataclass(frozen=True)
class ParameterLayout:
    """The parameters as one vector theta: per term l and class k the entries (a, b), a <= b, of
    Sigma_lk (the diagonal only for ``||`` terms), then the residual variance (gaussian), then the
    linear fixed effects beta (k, c) row by row (plain GLMMs: ``num_fixed`` = k c)."""

    entries: tuple[tuple[tuple[int, int], ...], ...]
    """Per term, the (a, b) pairs of its covariance that are parameters."""
    num_outputs: int
    num_levels: tuple[int, ...]
    dispersion: bool
    num_rows: int
    num_fixed: int

    @classmethod
    def of(cls, problem: EMProblem, fit_beta: bool) -> ParameterLayout:
        entries = []
        for (_, p, _), full in zip(problem.shapes, problem.correlated):
            entries.append(tuple((a, b) for a in range(p) for b in range(a, p) if full or a == b))
        num_fixed = len(problem.fixed_names) * problem.num_outputs if fit_beta else 0
        return cls(tuple(entries), problem.num_outputs, tuple(problem.num_levels), problem.family.has_dispersion, problem.total_rows, num_fixed)

    @property
    def num_variance(self) -> int:
        """Entries of the covariances and the residual variance (theta without beta)."""
        return sum(len(e) for e in self.entries) * self.num_outputs + self.dispersion

    @property
    def size(self) -> int:
        return self.num_variance + self.num_fixed

    def variance_indices(self) -> list[int]:
        """Positions in theta of the variances (diagonal entries) and of the residual variance."""
        indices = [start + k * len(e) + j for start, e in zip(self.offsets(), self.entries) for k in range(self.num_outputs) for j, (a, b) in enumerate(e) if a == b]
        return indices + ([self.num_variance - 1] if self.dispersion else [])

    def offsets(self) -> list[int]:
        """Start of each term's block (its classes one after the other)."""
        starts, start = [], 0
        for e in self.entries:
            starts.append(start)
            start += len(e) * self.num_outputs
        return starts

    def flatten(self, covariances: list[np.ndarray], dispersion: float, beta: np.ndarray | None = None) -> np.ndarray:
        parts = [np.array([S[k, a, b] for k in range(self.num_outputs) for a, b in e]) for S, e in zip(covariances, self.entries)]
        if self.dispersion:
            parts.append(np.array([dispersion]))
        if self.num_fixed:
            parts.append(np.asarray(beta, dtype=float).ravel())
        return np.concatenate(parts)

    def unflatten(self, theta: np.ndarray) -> tuple[list[np.ndarray], float, np.ndarray | None]:
        """Covariances (c, p, p) per term (symmetric; 0 outside the parameters), the dispersion
        (1.0 without one) and beta (k, c) (None without it)."""
        covariances = []
        for start, e in zip(self.offsets(), self.entries):
            p = max(b for _, b in e) + 1
            S = np.zeros((self.num_outputs, p, p))
            for k in range(self.num_outputs):
                for j, (a, b) in enumerate(e):
                    S[k, a, b] = S[k, b, a] = theta[start + k * len(e) + j]
            covariances.append(S)
        dispersion = float(theta[self.num_variance - 1]) if self.dispersion else 1.0
        beta = theta[self.num_variance :].reshape(-1, self.num_outputs) if self.num_fixed else None
        return covariances, dispersion, beta

    def project(self, theta: np.ndarray) -> np.ndarray:
        """theta with every covariance made positive semi-definite (eigenvalues clipped at 0) and
        the residual variance kept positive."""
        covariances, dispersion, beta = self.unflatten(theta)
        clipped = []
        for S in covariances:
            values, vectors = np.linalg.eigh(S)
            clipped.append(np.einsum("cij,cj,ckj->cik", vectors, np.clip(values, 0.0, None), vectors))
        return self.flatten(clipped, max(dispersion, 1e-8 * abs(dispersion) + 1e-12), beta)

    def allowed_errors(self, theta: np.ndarray, target: float) -> np.ndarray:
        """Monte Carlo error allowed for each variance parameter (num_variance,): ``target`` times
        its scale (sqrt(S_aa S_bb)), 1% of the largest variance or of the residual variance (1 on
        the link scale of a family without one), or SAMPLING_SHARE of its sampling standard
        error, whichever is largest. The sampling error of an entry from q levels is about
        sqrt((S_aa S_bb + S_ab^2) / q) (Wishart): 45% of a variance with 10 levels, where a tighter
        Monte Carlo error buys nothing. The floor keeps variances near 0 from demanding endless
        averaging."""
        covariances, dispersion, _ = self.unflatten(theta)
        largest = max([float(np.diagonal(S, axis1=1, axis2=2).max()) for S in covariances] + [dispersion])
        floor = 0.01 * largest + 1e-12
        parts = []
        for S, e, q in zip(covariances, self.entries, self.num_levels):
            for k in range(self.num_outputs):
                for a, b in e:
                    product = max(S[k, a, a] * S[k, b, b], 0.0)
                    sampling = np.sqrt((product + S[k, a, b] ** 2) / q)
                    parts.append(max(target * np.sqrt(product), floor, SAMPLING_SHARE * sampling))
        if self.dispersion:
            parts.append(max(target * dispersion, floor))
        return np.array(parts)

    def levels(self) -> np.ndarray:
        """D (num_variance,): the levels behind each variance parameter's statistic (the rows for the residual variance)."""
        parts = [np.full(len(e) * self.num_outputs, q, dtype=float) for e, q in zip(self.entries, self.num_levels)]
        return np.concatenate(parts + ([np.array([float(self.num_rows)])] if self.dispersion else []))

    def natural_map(self, theta: np.ndarray) -> np.ndarray:
        """W (num_variance, num_variance): row j the derivative of <eta, S> in theta_j as a linear form in T."""
        covariances, dispersion, _ = self.unflatten(theta)
        W = np.zeros((self.num_variance, self.num_variance))
        for start, e, S in zip(self.offsets(), self.entries, covariances):
            p = S.shape[-1]
            for k in range(self.num_outputs):
                P = np.linalg.pinv(S[k])
                base = start + k * len(e)
                for j, (a, b) in enumerate(e):
                    E = np.zeros((p, p))
                    E[a, b] = E[b, a] = 1.0
                    R = 0.5 * P @ E @ P
                    for i, (c, d) in enumerate(e):
                        W[base + j, base + i] = R[c, d] * (1.0 if c == d else 2.0)
        if self.dispersion:
            W[-1, -1] = 0.5 / dispersion**2
        return W


@dataclass(frozen=True)
class UnitGroup:
    """Terms whose levels fall into shared units (levels independent a posteriori across units):
    ``units[l]`` (q_l,) the unit of each level of term ``terms[l]``, ``row_units`` (n,) each
    row's unit when the units hold every row's effects (all terms nest in one factor; the
    residual variance and beta then join the group), else None."""

    terms: tuple[int, ...]
    units: tuple[torch.Tensor, ...]
    num_units: int
    row_units: torch.Tensor | None


def unit_groups(problem: EMProblem) -> list[UnitGroup]:
    """One group of every term when all nest in one of them (units: that term's levels), else one
    group per term (units: its own levels). A data-parallel fit takes one group per term: its
    nesting would have to be agreed over every shard's rows (J then leaves out the couplings
    between nested terms, and the Newton steps only take longer to settle)."""
    codes = [t.codes.astype(np.int64) for t in problem.terms]
    device = problem.device
    nested = None if problem.data_parallel else nested_units(codes, [t.num_levels for t in problem.terms])
    if nested is not None:
        top, maps = nested
        units = tuple(torch.as_tensor(m, device=device) for m in maps)
        rows = torch.as_tensor(codes[top], device=device)
        return [UnitGroup(tuple(range(len(codes))), units, problem.terms[top].num_levels, rows)]
    return [
        UnitGroup((l,), (torch.arange(t.num_levels, device=device),), t.num_levels, None) for l, t in enumerate(problem.terms)
    ]


DRAWS_PER_INDEPENDENT = 2.0
"""Draws of the E-step's chain worth one independent draw of the second moments (its ESS of B^2 is
about half a draw per draw: estep/sampler.py)."""


def shrunk_covariance(per_unit: torch.Tensor, num_draws: int) -> np.ndarray:
    """The sum over units of per-unit covariances (units, d, d), each from ``num_draws`` draws, its
    off-diagonal shrunk toward 0 by the Ledoit-Wolf share: the off-diagonal entries' estimation
    variance (Gaussian, sum_u (C_u,ii C_u,jj + C_u,ij^2) / effective draws) over their summed squares,
    at most 1. Few units in many dimensions (a 10-level factor with 100 classes: 100 entries, 10 units
    x 40 draws) give a sum whose noise alone puts J's spectral radius at 1 (.995 against a largest
    diagonal entry of .50), and the Newton steps ran away; with many units the share is ~0."""
    total = per_unit.sum(0)
    d = total.shape[0]
    if d == 1:
        return total.cpu().numpy()
    diagonal = torch.diagonal(per_unit, dim1=1, dim2=2)  # (units, d)
    effective = max(num_draws / DRAWS_PER_INDEPENDENT - 1.0, 1.0)
    noise = (torch.einsum("ui,uj->ij", diagonal, diagonal) + (per_unit**2).sum(0)) / effective
    off = ~torch.eye(d, dtype=torch.bool, device=total.device)
    signal = float((total[off] ** 2).sum())
    share = min(1.0, float(noise[off].sum()) / signal) if signal > 0 else 1.0
    return torch.where(off, (1.0 - share) * total, total).cpu().numpy()


class MissingInformation:
    """Per-unit sums over draws of V = (T, g_beta) and of V V^T at fixed parameters, and the sum of
    the beta M-step's Hessian X' H X (plain GLMMs whose terms nest in one factor, the units then
    holding every row; with crossed terms beta belongs to no unit, its rows of J are 0, and neither
    its scores nor that Hessian are formed: on 10^6 rows they were (draws, rows, k) arrays)."""

    def __init__(self, problem: EMProblem, layout: ParameterLayout, groups: list[UnitGroup]) -> None:
        self.problem, self.layout, self.groups = problem, layout, groups
        self.count = 0
        self.sums, self.products = [], []
        for group in groups:
            d = self._width(group)
            self.sums.append(torch.zeros(group.num_units, d, dtype=torch.float64, device=problem.device))
            self.products.append(torch.zeros(group.num_units, d, d, dtype=torch.float64, device=problem.device))
        self.hessian = torch.zeros(layout.num_fixed, layout.num_fixed, dtype=torch.float64, device=problem.device)

    def _width(self, group: UnitGroup) -> int:
        covariances = sum(len(self.layout.entries[l]) for l in group.terms) * self.layout.num_outputs
        return covariances + (group.row_units is not None) * (self.layout.dispersion + self.layout.num_fixed)

    def add(self, effects: tuple[torch.Tensor, ...], F: torch.Tensor, rows: Rows, dispersion: float) -> None:
        """The raw draws (m, q, p, c) of one epoch, drawn given F (n, c) on ``rows`` and the residual variance."""
        m, c = effects[0].shape[0], self.layout.num_outputs
        rows_in_units = any(g.row_units is not None for g in self.groups)
        eta = F.unsqueeze(0) + random_part(effects, rows) if rows_in_units else None  # (m, n, c)
        scores = None
        if rows_in_units and self.layout.num_fixed:
            y, trials = rows.per_draw(m)
            gradient, hessian = row_derivatives(self.problem.family, eta.reshape(-1, c).double(), y, trials, dispersion)
            X = rows.X_fixed.double()
            scores = -torch.einsum("ni,mna->mnia", X, gradient.reshape(m, -1, c)).flatten(2)  # (m, n, k c)
            self.hessian += torch.einsum("ni,mnab,nj->iajb", X, hessian.reshape(m, -1, c, c), X).reshape(self.layout.num_fixed, -1)
        for group, sums, products in zip(self.groups, self.sums, self.products):
            columns = []
            for l in group.terms:
                B, (a, b) = effects[l].double(), zip(*self.layout.entries[l])  # (m, q, p, c)
                per_level = (B[:, :, list(a)] * B[:, :, list(b)]).transpose(2, 3).flatten(2)  # (m, q, c entries), class-major
                X = torch.zeros(m, group.num_units, per_level.shape[2], dtype=torch.float64, device=B.device)
                columns.append(X.index_add_(1, group.units[group.terms.index(l)], per_level))
            if group.row_units is not None and self.layout.dispersion:
                squares = (rows.y.unsqueeze(0) - eta[..., 0]).double() ** 2  # (m, n)
                X = torch.zeros(m, group.num_units, 1, dtype=torch.float64, device=squares.device)
                columns.append(X.index_add_(1, group.row_units, squares[..., None]))
            if group.row_units is not None and scores is not None:
                X = torch.zeros(m, group.num_units, self.layout.num_fixed, dtype=torch.float64, device=scores.device)
                columns.append(X.index_add_(1, group.row_units, scores))
            X = torch.cat(columns, 2)  # (m, units, d)
            sums += X.sum(0)
            per_unit = X.permute(1, 2, 0)  # (units, d, m)
            products.baddbmm_(per_unit, per_unit.transpose(1, 2))
        self.count += m

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        """J (size, size) of the EM map at theta, its spectral radius capped (MAX_AMPLIFICATION)."""
        layout = self.layout
        covariance = np.zeros((layout.size, layout.size))
        if self.count >= 2:
            offsets = layout.offsets()
            for group, sums, products in zip(self.groups, self.sums, self.products):
                per_unit = (products - sums[:, :, None] * sums[:, None, :] / self.count) / (self.count - 1)
                index = [i for l in group.terms for i in range(offsets[l], offsets[l] + len(layout.entries[l]) * layout.num_outputs)]
                if group.row_units is not None:
                    index += list(range(layout.num_variance - layout.dispersion, layout.size))
                covariance[np.ix_(index, index)] = shrunk_covariance(per_unit, self.count)
        left = np.zeros((layout.size, layout.size))
        right = np.zeros((layout.size, layout.size))
        v = layout.num_variance
        left[:v, :v] = np.diag(1.0 / layout.levels())
        right[:v, :v] = layout.natural_map(theta).T
        if layout.num_fixed:
            H = self.hessian.cpu().numpy() / max(self.count, 1)
            ridge = 1e-8 * (1.0 + np.abs(np.diag(H)).mean()) * np.eye(len(H))
            left[v:, v:] = np.linalg.inv(H + ridge)
            right[v:, v:] = np.eye(layout.num_fixed)
        J = left @ covariance @ right
        radius = float(np.max(np.abs(np.linalg.eigvals(J)), initial=0.0))
        limit = 1.0 - 1.0 / MAX_AMPLIFICATION
        return J * (limit / radius) if radius > limit else J
