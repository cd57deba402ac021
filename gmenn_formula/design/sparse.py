"""Sparse random-effects design and its penalized cross-product (scipy; no dense rows-by-levels matrix).

Shapes: n rows; term l has q_l levels and p_l coefficients, its effects laid out level-major
(level j's p_l coefficients at ``offset_l + j p_l + (0..p_l-1)``); D = sum_l q_l p_l.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import sparse
from scipy.linalg import cho_factor, cho_solve
from scipy.sparse.linalg import LinearOperator, splu


def factored_design(codes: Sequence[np.ndarray], Z: Sequence[np.ndarray], num_levels: Sequence[int], factors: Sequence[np.ndarray]) -> sparse.csr_matrix:
    """M = Z Lambda (n, D): term l's columns ``Z[l]`` (n, p_l) times its factor ``factors[l]``
    (p_l, p_l), placed at the level ``codes[l]`` (n,) of each row."""
    n = len(codes[0]) if codes else 0
    rows, cols, vals = [], [], []
    offset = 0
    for c, z, q, L in zip(codes, Z, num_levels, factors):
        p = z.shape[1]
        rows.append(np.repeat(np.arange(n), p))
        cols.append((offset + c.astype(np.int64)[:, None] * p + np.arange(p)).ravel())
        vals.append((np.asarray(z, dtype=np.float64) @ L).ravel())
        offset += q * p
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, offset))


def block_diagonal(factors: Sequence[np.ndarray], num_levels: Sequence[int]) -> sparse.csr_matrix:
    """Lambda (D, D): term l's (p_l, p_l) ``factors[l]`` repeated for each of its ``num_levels[l]`` levels."""
    return sparse.block_diag([sparse.kron(sparse.identity(q, format="csr"), sparse.csr_matrix(L)) for L, q in zip(factors, num_levels)], format="csr")


def factor_product(v: np.ndarray, factors: Sequence[np.ndarray], num_levels: Sequence[int], transpose: bool = False) -> np.ndarray:
    """Lambda v, or Lambda' v, for v (D,) or (D, k) and Lambda = ``block_diagonal(factors,
    num_levels)``, per level without forming Lambda."""
    out, offset = [], 0
    for L, q in zip(factors, num_levels):
        p = L.shape[0]
        block = v[offset : offset + q * p].reshape(q, p, -1)
        out.append(((L.T if transpose else L) @ block).reshape(q * p, *v.shape[1:]))
        offset += q * p
    return np.concatenate(out)


def identity_plus_scaled(M: np.ndarray, factors: Sequence[np.ndarray], num_levels: Sequence[int]) -> np.ndarray:
    """I + Lambda' M Lambda (D, D) for a dense M (D, D) and Lambda = ``block_diagonal(factors,
    num_levels)``; M is overwritten when every factor is 1 x 1 (Lambda diagonal: in-place scalings)."""
    if all(L.shape == (1, 1) for L in factors):
        d = np.repeat([L[0, 0] for L in factors], num_levels)
        M *= d[:, None]
        M *= d[None, :]
    else:
        M = factor_product(factor_product(M, factors, num_levels, transpose=True).T, factors, num_levels, transpose=True).T
    M[np.diag_indices_from(M)] += 1.0
    return M


class CrossedSchur:
    """The dense Schur complement S = I + Lambda2' (G22 - G12' W G12) Lambda2 (D2, D2) of the other
    terms' block of A = I + Lambda' G Lambda, where the first term's block is eliminated.

    G = Z'Z is fixed by the design: ``gram12`` (q p, D2) the first term's rows (level-major, p
    coefficients per level) against the other terms' columns, ``gram22`` (D2, D2); Lambda2 repeats
    each other term's (p_l, p_l) factor over its levels. W = L1 A11^-1 L1' is block diagonal with one
    (p, p) block per level s of the first term, so G12' W G12 = sum_s G12_s' W_s G12_s is linear in
    W's q p p entries: the sparse ``product`` (U, q p p + 1) maps (-W's entries, 1) to G22 -
    G12' W G12 at the U entries of the lower block triangle (a block: one level of one term, p_l
    columns) where that can be non-zero, the flat ``positions`` (U,) of a (D2, D2) matrix (the last
    column holds G22). Elsewhere in that triangle S is I. One evaluation is that mat-vec and a
    scatter; Lambda2 on both sides is, where every other term is scalar, a scaling of the U values
    by the product of their two terms' factors (``term_pairs`` (U,): row term * terms + column
    term), else a dense product. Only the lower triangle of S is meant to be read (the Cholesky of
    :class:`PenalizedSystem`).

    ``product`` has one entry per level s and pair of G12_s's entries whose blocks are in order (the
    multiplications of the sparse product G12' W G12) and per entry of G22 there, 12 bytes each
    (InstEval, 2,972 / 1,128 / 14 levels: 1.8 million, 22 MB). :meth:`of` declines above MAX_BYTES;
    the caller then forms G12' W G12 sparsely per evaluation. ``positions`` and ``term_pairs`` are
    smaller than the dense S; building takes about four times the stored bytes for a moment
    (10^6 rows, 3 x 10^5 / 2,500 / 2,500 levels: 201 MB stored, 840 MB while built)."""

    MAX_BYTES = 200_000_000

    def __init__(self, product: sparse.csr_matrix, positions: np.ndarray, num_levels: Sequence[int], num_coefs: Sequence[int]) -> None:
        self.product, self.positions, self.num_levels = product, positions, list(num_levels)
        self.scalar = all(p == 1 for p in num_coefs)
        sizes = [q * p for q, p in zip(num_levels, num_coefs)]
        term = np.repeat(np.arange(len(sizes), dtype=np.min_scalar_type(len(sizes) ** 2)), sizes)
        self.term_pairs = term[positions // sum(sizes)] * len(sizes) + term[positions % sum(sizes)]

    @classmethod
    def of(cls, gram12: sparse.spmatrix, gram22: sparse.spmatrix, p: int, num_levels: Sequence[int], num_coefs: Sequence[int]) -> CrossedSchur | None:
        """The complement for the first term's ``p`` coefficients and the other terms' levels and
        coefficients; None where ``product`` would take more than MAX_BYTES."""
        coo, g22 = sparse.coo_matrix(gram12), sparse.coo_matrix(gram22)
        d2, width = coo.shape[1], coo.shape[0] * p
        blocks = np.repeat(np.arange(sum(num_levels)), np.repeat(num_coefs, num_levels))
        level = coo.row // p
        key = level.astype(np.int64) * len(blocks) + blocks[coo.col]
        order = np.argsort(key, kind="stable")
        row, col, value, level, key = coo.row[order], coo.col[order], coo.data[order], level[order], key[order]
        first = np.searchsorted(key, level.astype(np.int64) * len(blocks))
        reps = np.searchsorted(key, key, side="right") - first
        lower = blocks[g22.row] >= blocks[g22.col]
        if 12 * (int(reps.sum()) + int(lower.sum())) > cls.MAX_BYTES:
            return None
        e, f = _level_pairs(first, reps)
        positions = np.concatenate([col[e].astype(np.int64) * d2 + col[f], g22.row[lower].astype(np.int64) * d2 + g22.col[lower]])
        columns = np.concatenate([level[e] * p * p + (row[e] % p) * p + row[f] % p, np.full(int(lower.sum()), width)])
        full = sparse.csr_matrix((np.concatenate([value[e] * value[f], g22.data[lower]]), (positions, columns)), shape=(d2 * d2, width + 1))
        used = np.flatnonzero(np.diff(full.indptr))
        product = sparse.csr_matrix((full.data, full.indices, np.concatenate([[0], full.indptr[used + 1]])), shape=(len(used), width + 1))
        return cls(product, used, num_levels, num_coefs)

    def __call__(self, inverse11: np.ndarray, L1: np.ndarray, factors: Sequence[np.ndarray]) -> np.ndarray:
        """S (D2, D2) for A11^-1 (q, p, p), the first term's factor ``L1`` (p, p) and the other
        terms' ``factors``."""
        W = L1 @ inverse11 @ L1.T
        values = self.product @ np.append(-W.ravel(), 1.0)
        d2 = sum(q * L.shape[0] for q, L in zip(self.num_levels, factors))
        S = np.zeros((d2, d2))
        if not self.scalar:
            S.ravel()[self.positions] = values
            return identity_plus_scaled(S, factors, self.num_levels)
        theta = np.array([L[0, 0] for L in factors])
        S.ravel()[self.positions] = values * np.outer(theta, theta).ravel()[self.term_pairs]
        S[np.diag_indices_from(S)] += 1.0
        return S


def _level_pairs(first: np.ndarray, reps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (e, f): each e in 0..len(reps)-1 ``reps[e]`` times, with f running over
    first[e] .. first[e] + reps[e] - 1."""
    e = np.repeat(np.arange(len(reps)), reps)
    f = np.arange(len(e)) + np.repeat(first - (np.cumsum(reps) - reps), reps)
    return e, f


class PenalizedSystem:
    """A (D, D) symmetric positive definite, in blocks: the first term's ``A11`` (q, p, p) (block
    diagonal, one p x p block per level), ``A12`` (q p, D2) sparse and ``A22`` (D2, D2) (dense, or
    sparse beyond DENSE_SCHUR), or in its place a function of A11^-1 (q, p, p) that gives the dense
    Schur complement (a bound :class:`CrossedSchur`; then ``A12`` may be any linear operator, only
    its products with vectors are used): log|A| and solves A^-1 b.

    The first block is eliminated per level (batched p x p inverses); the Schur complement of the
    other D2 columns is factored densely (Cholesky) up to DENSE_SCHUR columns, else by a sparse LU
    (it stays sparse when those terms nest in the first). Put the largest term first."""

    DENSE_SCHUR = 5_000

    def __init__(
        self, A11: np.ndarray, A12: sparse.spmatrix | LinearOperator, A22: np.ndarray | sparse.spmatrix | Callable[[np.ndarray], np.ndarray]
    ) -> None:
        q, p, _ = A11.shape
        d1 = q * p
        self.d1, self.d2 = d1, A12.shape[1]
        chol = np.linalg.cholesky(A11)
        self.logdet = float(2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum())
        index = np.arange(d1).reshape(q, p)
        inverse = np.linalg.inv(A11)
        self._inverse11 = sparse.csr_matrix((inverse.ravel(), (np.repeat(index, p, axis=1).ravel(), np.tile(index, (1, p)).ravel())), shape=(d1, d1))
        if not self.d2:
            return
        if callable(A22):
            self._A12 = A12
            self._factor_dense(A22(inverse))
            return
        self._A12 = sparse.csr_matrix(A12)
        correction = self._A12.T @ (self._inverse11 @ self._A12)
        if self.d2 <= self.DENSE_SCHUR:
            self._factor_dense((A22.toarray() if sparse.issparse(A22) else np.array(A22, dtype=np.float64)) - correction.toarray())
        else:
            self._dense = None
            schur = sparse.csc_matrix(A22 - correction)
            self._lu = splu(schur, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
            self.logdet += float(np.log(np.abs(self._lu.U.diagonal())).sum())

    def _factor_dense(self, schur: np.ndarray) -> None:
        """Cholesky of the Schur complement (D2, D2), its lower triangle read and overwritten (as the
        upper triangle of its transpose: LAPACK factors a C-ordered matrix without a copy)."""
        self._dense = cho_factor(schur.T, lower=False, overwrite_a=True, check_finite=False)
        self.logdet += float(2.0 * np.log(np.diagonal(self._dense[0])).sum())

    @classmethod
    def of(cls, A: sparse.spmatrix, q: int, p: int) -> PenalizedSystem:
        """The system of a whole sparse A whose first q p rows and columns are block diagonal."""
        A = sparse.csr_matrix(A)
        d1 = q * p
        coo = A[:d1, :d1].tocoo()
        blocks = np.zeros((q, p, p))
        blocks[coo.row // p, coo.row % p, coo.col % p] = coo.data
        return cls(blocks, A[:d1, d1:], A[d1:, d1:])

    def _solve_schur(self, b: np.ndarray) -> np.ndarray:
        return cho_solve(self._dense, b, check_finite=False) if self._dense is not None else self._lu.solve(b)

    def solve(self, b: np.ndarray) -> np.ndarray:
        """A^-1 b for b (D,) or (D, k)."""
        b = np.asarray(b, dtype=np.float64)
        b1, b2 = b[: self.d1], b[self.d1 :]
        if not self.d2:
            return self._inverse11 @ b1
        x2 = self._solve_schur(b2 - self._A12.T @ (self._inverse11 @ b1))
        x1 = self._inverse11 @ (b1 - self._A12 @ x2)
        return np.concatenate([x1, x2], axis=0)
