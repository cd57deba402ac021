"""Sparse random-effects design and its penalized cross-product (scipy; no dense rows-by-levels matrix).

Shapes: n rows; term l has q_l levels and p_l coefficients, its effects laid out level-major
(level j's p_l coefficients at ``offset_l + j p_l + (0..p_l-1)``); D = sum_l q_l p_l.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.linalg import cho_factor, cho_solve
from scipy.sparse.linalg import splu


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


class PenalizedSystem:
    """A (D, D) symmetric positive definite, in blocks: the first term's ``A11`` (q, p, p) (block
    diagonal, one p x p block per level), ``A12`` (q p, D2) sparse and ``A22`` (D2, D2) (dense, or
    sparse beyond DENSE_SCHUR): log|A| and solves A^-1 b.

    The first block is eliminated per level (batched p x p inverses); the Schur complement of the
    other D2 columns is factored densely (Cholesky) up to DENSE_SCHUR columns, else by a sparse LU
    (it stays sparse when those terms nest in the first). Put the largest term first."""

    DENSE_SCHUR = 5_000

    def __init__(self, A11: np.ndarray, A12: sparse.spmatrix, A22: np.ndarray | sparse.spmatrix) -> None:
        q, p, _ = A11.shape
        d1 = q * p
        self.d1, self.d2 = d1, A12.shape[1]
        chol = np.linalg.cholesky(A11)
        self.logdet = float(2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum())
        index = np.arange(d1).reshape(q, p)
        self._inverse11 = sparse.csr_matrix(
            (np.linalg.inv(A11).ravel(), (np.repeat(index, p, axis=1).ravel(), np.tile(index, (1, p)).ravel())), shape=(d1, d1)
        )
        if not self.d2:
            return
        self._A12 = sparse.csr_matrix(A12)
        correction = self._A12.T @ (self._inverse11 @ self._A12)
        if self.d2 <= self.DENSE_SCHUR:
            schur = (A22.toarray() if sparse.issparse(A22) else np.array(A22, dtype=np.float64)) - correction.toarray()
            self._dense = cho_factor(schur, lower=True, overwrite_a=True, check_finite=False)
            self.logdet += float(2.0 * np.log(np.diagonal(self._dense[0])).sum())
        else:
            self._dense = None
            schur = sparse.csc_matrix(A22 - correction)
            self._lu = splu(schur, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
            self.logdet += float(np.log(np.abs(self._lu.U.diagonal())).sum())

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
        return cho_solve(self._dense, b) if self._dense is not None else self._lu.solve(b)

    def solve(self, b: np.ndarray) -> np.ndarray:
        """A^-1 b for b (D,) or (D, k)."""
        b = np.asarray(b, dtype=np.float64)
        b1, b2 = b[: self.d1], b[self.d1 :]
        if not self.d2:
            return self._inverse11 @ b1
        x2 = self._solve_schur(b2 - self._A12.T @ (self._inverse11 @ b1))
        x1 = self._inverse11 @ (b1 - self._A12 @ x2)
        return np.concatenate([x1, x2], axis=0)
