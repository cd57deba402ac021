"""Maximum likelihood of a gaussian model's variance components in closed form, as lme4's ``lmer``
with ``REML = FALSE``: the profiled deviance of the relative covariance factors, minimised by
COBYQA (method in docs/engine.md, "Gaussian models").

For relative factors theta (per term l a lower-triangular (p_l, p_l) L_l, Sigma_l = s2 L_l L_l'),
M = Z Lambda (n, D) and A = I + M'M, the penalized least squares

    min_{u, beta} |y - X beta - M u|^2 + |u|^2 = r2

gives the ML estimates s2 = r2 / n and beta, and the deviance
-2 log L = log|A| + n (1 + log(2 pi r2 / n)). One blocked factorisation of A per evaluation
(``design/sparse.py``: :class:`PenalizedSystem`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import minimize
from scipy.sparse.linalg import LinearOperator

from gmenn_formula.design.sparse import CrossedSchur, PenalizedSystem, block_diagonal, factor_product, factored_design, identity_plus_scaled
from gmenn_formula.estep.arrays import TermArrays

MAX_EVALUATIONS = 2_000
"""Deviance evaluations before the maximisation gives up (InstEval's three factors need ~60)."""
FINAL_RADIUS = 1e-5
"""COBYQA's final trust radius in the relative factors (lme4's bobyqa stops near 2e-7): a
relative error below 1e-4 in every variance, 10% fewer evaluations than the default 1e-6."""
BOUNDARY = 1e-4
"""A diagonal entry of a relative factor at most this is on the boundary (lme4's isSingular tolerance)."""
ESCAPE_START = 0.1
"""The diagonal entry a restart from the boundary begins at (relative to the residual sd)."""
MAX_OFF_FACTOR_EFFECTS = 5_000
"""Effects outside the largest term's a direct fit allows: with crossed factors the LU fills in
toward a dense matrix of this size (one factor, or factors nested in one, stay sparse at any size)."""


@dataclass(frozen=True)
class GaussianML:
    """The ML estimates: ``covariances`` per term (1, p, p), the residual variance ``dispersion``,
    ``beta`` (k,), the effects' conditional means ``effects`` per term (q, p, 1) at the estimate,
    the maximised log-likelihood ``loglik`` and the deviance evaluations used."""

    covariances: list[np.ndarray]
    dispersion: float
    beta: np.ndarray
    effects: list[np.ndarray]
    loglik: float
    evaluations: int
    converged: bool
    message: str


def direct_fit_applies(terms: tuple[TermArrays, ...], nested: bool) -> bool:
    """Whether the LU of A stays sparse: one term's effects dominate, or all terms nest in one."""
    sizes = [t.num_levels * t.num_coefs for t in terms]
    return nested or sum(sizes) - max(sizes) <= MAX_OFF_FACTOR_EFFECTS


class ProfiledDeviance:
    """-2 log L profiled over beta and s2, as a function of the relative factors' free entries.

    ``terms`` the random terms, ``y`` (n,) the response minus everything held fixed (offsets, a
    frozen network), ``X`` (n, k) the linear fixed effects to estimate (k may be 0), ``correlated``
    per term whether its factor is full lower-triangular (else diagonal).

    Terms are ordered largest first; the first is eliminated per level. Where the other terms' Schur
    complement is dense (at most DENSE_SCHUR columns), its design-fixed part is precomputed once
    (``schur``, a :class:`CrossedSchur`: one sparse mat-vec per evaluation); where that product
    would exceed CrossedSchur.MAX_BYTES, ``schur`` is None and each evaluation forms
    A12' A11^-1 A12 as a sparse product from the dense ``gram22``, as it does for the sparse LU."""

    def __init__(self, terms: tuple[TermArrays, ...], y: np.ndarray, X: np.ndarray, correlated: tuple[bool, ...]) -> None:
        self.terms, self.y, self.X = terms, np.asarray(y, np.float64), np.asarray(X, np.float64)
        self.entries = [
            [(a, b) for a in range(t.num_coefs) for b in range(a + 1)] if full else [(a, a) for a in range(t.num_coefs)]
            for t, full in zip(terms, correlated)
        ]
        self.n = len(self.y)
        self.order = sorted(range(len(terms)), key=lambda l: -terms[l].num_levels * terms[l].num_coefs)
        ordered = [terms[l] for l in self.order]
        identities = [np.eye(t.num_coefs) for t in ordered]
        Z = factored_design([t.codes for t in ordered], [t.Z for t in ordered], [t.num_levels for t in ordered], identities).tocsc()
        q, p = ordered[0].num_levels, ordered[0].num_coefs
        d1 = q * p
        Z1, Z2 = Z[:, :d1], Z[:, d1:]
        first = ordered[0]
        self.gram11 = np.zeros((q, p, p))
        np.add.at(self.gram11, first.codes, first.Z[:, :, None].astype(np.float64) * first.Z[:, None, :])
        self.gram12 = (Z1.T @ Z2).tocsr()
        gram22 = (Z2.T @ Z2).tocsr()
        self.Zb = np.column_stack([Z.T @ self.y, np.asarray(Z.T @ self.X)])
        self.XX, self.Xy, self.yy = self.X.T @ self.X, self.X.T @ self.y, float(self.y @ self.y)
        self.levels = [t.num_levels for t in ordered]
        dense = len(ordered) > 1 and gram22.shape[0] <= PenalizedSystem.DENSE_SCHUR
        self.schur = CrossedSchur.of(self.gram12, gram22, p, self.levels[1:], [t.num_coefs for t in ordered[1:]]) if dense else None
        self.gram22 = gram22.toarray() if dense and self.schur is None else gram22
        self.evaluations = 0

    def start(self) -> np.ndarray:
        """lme4's start: every relative factor the identity."""
        return np.concatenate([[1.0 if a == b else 0.0 for a, b in e] for e in self.entries])

    def bounds(self) -> list[tuple[float | None, float | None]]:
        """Diagonal entries of the factors non-negative, the others free."""
        return [(0.0, None) if a == b else (None, None) for e in self.entries for a, b in e]

    def factors(self, theta: np.ndarray) -> list[np.ndarray]:
        """Per term the (p, p) lower-triangular relative factor of ``theta``."""
        out, i = [], 0
        for t, e in zip(self.terms, self.entries):
            L = np.zeros((t.num_coefs, t.num_coefs))
            for a, b in e:
                L[a, b] = theta[i]
                i += 1
            out.append(L)
        return out

    def solve(self, theta: np.ndarray) -> tuple[float, float, np.ndarray]:
        """(deviance, r2, beta (k,)) at ``theta``; r2 = y'y - x'c at the solution x of the normal equations."""
        deviance, r2, beta, _ = self.solution(theta)
        return deviance, r2, beta

    def conditional_means(self, theta: np.ndarray) -> list[np.ndarray]:
        """E[b | y] per term (q, p, 1), in the order of ``terms``, at ``theta`` (and its beta)."""
        factors = self.factors(theta)
        b = factor_product(self.solution(theta)[3], [factors[l] for l in self.order], self.levels)
        means, offset = [None] * len(self.terms), 0
        for l in self.order:
            t = self.terms[l]
            means[l] = b[offset : offset + t.num_levels * t.num_coefs].reshape(t.num_levels, t.num_coefs, 1)
            offset += t.num_levels * t.num_coefs
        return means

    def solution(self, theta: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
        """(deviance, r2, beta (k,), u (D,)) at ``theta``, u the spherical effects (b = Lambda u), terms largest first."""
        self.evaluations += 1
        unordered = self.factors(theta)
        factors = [unordered[l] for l in self.order]
        L1 = factors[0]
        A11 = np.eye(L1.shape[0]) + L1.T @ self.gram11 @ L1
        system = PenalizedSystem(A11, *self._off_blocks(factors))
        Mb = factor_product(self.Zb, factors, self.levels, transpose=True)
        solved = system.solve(Mb)
        My, MX, cy, CX = Mb[:, 0], Mb[:, 1:], solved[:, 0], solved[:, 1:]
        if self.X.shape[1]:
            beta = np.linalg.solve(self.XX - MX.T @ CX, self.Xy - MX.T @ cy)
        else:
            beta = np.zeros(0)
        u = cy - CX @ beta
        r2 = max(self.yy - float(u @ My) - float(beta @ self.Xy), 1e-300)
        deviance = system.logdet + self.n * (1.0 + math.log(2.0 * math.pi * r2 / self.n))
        return deviance, r2, beta, u

    def _off_blocks(
        self, factors: list[np.ndarray]
    ) -> tuple[sparse.spmatrix | LinearOperator, np.ndarray | sparse.spmatrix | Callable[[np.ndarray], np.ndarray]]:
        """A12 = Lambda1' G12 Lambda2 (q p, D2) and A22 (or the dense Schur complement's function)
        for :class:`PenalizedSystem`; with :class:`CrossedSchur`, A12 is an operator (G12 stays as built)."""
        L1, rest = factors[0], factors[1:]
        if not rest:
            return sparse.csr_matrix((self.gram12.shape[0], 0)), np.zeros((0, 0))
        if self.schur is not None:
            return self._cross_operator(L1, rest), lambda inverse11: self.schur(inverse11, L1, rest)
        Lambda1, Lambda2 = block_diagonal(factors[:1], self.levels[:1]), block_diagonal(rest, self.levels[1:])
        A12 = Lambda1.T @ self.gram12 @ Lambda2
        if isinstance(self.gram22, np.ndarray):
            return A12, identity_plus_scaled(self.gram22.copy(), rest, self.levels[1:])
        return A12, sparse.identity(Lambda2.shape[0]) + Lambda2.T @ self.gram22 @ Lambda2

    def _cross_operator(self, L1: np.ndarray, rest: list[np.ndarray]) -> LinearOperator:
        """A12 = Lambda1' G12 Lambda2 (q p, D2) as products with vectors or (., k) matrices."""
        first, others = ([L1], self.levels[:1]), (rest, self.levels[1:])

        def product(x: np.ndarray) -> np.ndarray:
            return factor_product(self.gram12 @ factor_product(x, *others), *first, transpose=True)

        def adjoint(x: np.ndarray) -> np.ndarray:
            return factor_product(self.gram12.T @ factor_product(x, *first), *others, transpose=True)

        return LinearOperator(self.gram12.shape, matvec=product, rmatvec=adjoint, matmat=product, rmatmat=adjoint, dtype=np.float64)

    def __call__(self, theta: np.ndarray) -> float:
        return self.solve(theta)[0]


def fit_gaussian_ml(terms: tuple[TermArrays, ...], y: np.ndarray, X: np.ndarray, correlated: tuple[bool, ...]) -> GaussianML:
    """Minimise the profiled deviance from lme4's start by COBYQA (Powell's derivative-free
    quadratic-model method, the successor of the BOBYQA that lme4 uses), then out of any boundary
    it stopped on (:func:`escape_boundary`); the ML covariances, residual variance and beta."""
    deviance = ProfiledDeviance(terms, y, X, correlated)
    found = escape_boundary(deviance, _minimise(deviance, deviance.start()))
    value, r2, beta = deviance.solve(found.x)
    s2 = r2 / deviance.n
    covariances = [(s2 * L @ L.T)[None] for L in deviance.factors(found.x)]
    effects = deviance.conditional_means(found.x)
    return GaussianML(covariances, s2, beta, effects, -0.5 * value, deviance.evaluations, bool(found.success), str(found.message))


def _minimise(deviance: ProfiledDeviance, start: np.ndarray):
    return minimize(deviance, start, method="COBYQA", bounds=deviance.bounds(), options={"maxfev": MAX_EVALUATIONS, "final_tr_radius": FINAL_RADIUS})


def escape_boundary(deviance: ProfiledDeviance, found):
    """``found`` or a better minimum of ``deviance`` from restarts off the boundary.

    Where a diagonal entry L_jj of a full factor is 0, Sigma depends on column j's entries below it
    only through the first order in L_jj (Sigma_ij = L_ij L_jj): a local optimiser that reaches
    L_jj = 0 with those entries of the wrong sign sees the deviance rise into the interior and stops,
    although the opposite signs lead to a higher likelihood (flipping them at L_jj = 0 leaves Sigma
    unchanged, so the optimiser never tries). Each restart sets such an L_jj to :data:`ESCAPE_START`,
    with column j below it as found and negated; the lowest deviance wins."""
    while True:
        best = found
        for start in _boundary_restarts(deviance, found.x):
            candidate = _minimise(deviance, start)
            if candidate.fun < best.fun - 1e-8 * max(1.0, abs(best.fun)):
                best = candidate
        if best is found:
            return found
        found = best


def _boundary_restarts(deviance: ProfiledDeviance, theta: np.ndarray) -> list[np.ndarray]:
    """Starts next to ``theta``, one pair per zero diagonal entry that has entries below it."""
    starts, offset = [], 0
    for entries in deviance.entries:
        for i, (a, b) in enumerate(entries):
            below = [offset + m for m, (c, d) in enumerate(entries) if d == a and c > a]
            if a == b and theta[offset + i] <= BOUNDARY and below:
                for sign in (1.0, -1.0):
                    start = theta.copy()
                    start[offset + i] = ESCAPE_START
                    start[below] *= sign
                    starts.append(start)
        offset += len(entries)
    return starts
