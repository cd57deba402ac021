"""Per-level whitening of the random effects for the E-step sampler.

Shapes: n rows, C classes, term l has q_l levels and p_l coefficients per
level; a level's coefficients are flattened to d_l = p_l * C numbers in the
layout ``index = p * C + c`` (``B_l[q].reshape(p_l, C)``). A *position* is a
tuple with one (q_l, d_l) array per term.

Given the rows, the posterior of one level's block B_l[q] (the other blocks
held fixed) has the negative Hessian

    H_lq = sum_{i: codes_l[i] = q} kron(z_i z_i^T, W_i) + Sigma_l^{-1} (per class)

with W_i (C, C) the negative Hessian of the row log-likelihood in eta_i: the
family's Fisher information ``family.jax_fisher(eta, trials, dispersion)``
(:mod:`gmenn_formula.families`). All four families (gaussian, binomial,
poisson, categorical) have canonical links: each row log-likelihood is
concave in eta_i, and W_i is its negative Hessian (observed = expected
information), positive semi-definite by construction, so no eigenvalue
repair is needed.
:class:`BlockWhitening` samples ``B_l[q] = center_l[q] + L_lq^{-T} z`` with
``H_lq = L_lq L_lq^T``, so that z is close to N(0, I) whatever the class
coupling of the softmax and the prior scales.

Choice of center: the mean of the previous epoch's kept draws (the current
position at the first epoch). With an identity mass, HMC in z is invariant
to a shift of the center, so the center only decides where the Fisher
information W_i is evaluated; the draw mean estimates the posterior mean at
no extra cost, where Newton steps would cost a gradient and Hessian pass per
term and iteration and change nothing in the dynamics. With the paper's K=2,
R=1 that mean is one draw; the benchmark in ``benchmarks/sampler_mixing.py``
runs exactly so and the whitened sampler settles at acceptance ~0.8 with a
step near the one of a standard normal of the same dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

Position = tuple[Array, ...]


def prior_precision_block(prior_precision: Array) -> Array:
    """Prior precision (d, d) of one level in the ``p * C + c`` layout.

    ``prior_precision`` (C, p, p): per class the inverse of Sigma_l[c];
    classes are independent, so entry [(p1, c1), (p2, c2)] is
    ``prior_precision[c1, p1, p2] * (c1 == c2)``.
    """
    num_classes, p, _ = prior_precision.shape
    block = jnp.einsum("cij,cd->icjd", prior_precision, jnp.eye(num_classes, dtype=prior_precision.dtype))
    return block.reshape(p * num_classes, p * num_classes)


def level_information(codes: Array, Z: Array, fisher: Array, num_levels: int) -> Array:
    """Per-level block (q, d, d) of the negative log-likelihood Hessian of one term: the sum of
    kron(z_i z_i^T, W_i) over the rows of each level (a segment sum: memory O(n d^2), never O(n q)).

    ``codes`` (n,) int32 level codes (rows with a code outside [0, q) are ignored); ``Z`` (n, p)
    slope columns; ``fisher`` (n, C, C) the rows' Fisher information W_i.
    """
    n, p = Z.shape
    d = p * fisher.shape[-1]
    per_row = jnp.einsum("np,nr,nce->npcre", Z, Z, fisher).reshape(n, d, d)
    return jax.ops.segment_sum(per_row, codes, num_segments=num_levels)


def level_precision(
    codes: Array,
    Z: Array,
    fisher: Array,
    prior_precision: Array,
    num_levels: int,
) -> Array:
    """Per-level block (q, d, d) of the negative log-posterior Hessian of one term:
    :func:`level_information` plus the prior's, ``prior_precision`` (C, p, p) the inverse prior covariances."""
    return level_information(codes, Z, fisher, num_levels) + prior_precision_block(prior_precision)


class BlockWhitening(NamedTuple):
    """Affine map B_l[q] = center_l[q] + L_lq^{-T} z_l[q], one block per level.

    ``center[l]`` (q_l, d_l); ``chol[l]`` (q_l, d_l, d_l) lower Cholesky factor
    L of the level's approximate posterior precision; ``chol_inv_t[l]``
    (q_l, d_l, d_l) its inverse transpose L^{-T}, computed once so that
    :meth:`unwhiten`, called at every leapfrog step, is a batched matmul (a
    batched triangular solve made a leapfrog step ~40% dearer). If z ~ N(0, I)
    then B has mean ``center`` and precision L L^T. Build it with
    :func:`whitening_from_precision` or :meth:`from_cholesky`. A pytree: pass it to
    jitted code as an argument, so new values do not cause a retrace.
    """

    center: Position
    chol: Position
    chol_inv_t: Position

    @classmethod
    def from_cholesky(cls, center: Sequence[Array], chol: Sequence[Array]) -> BlockWhitening:
        """Whitening from centers (q_l, d_l) and lower Cholesky factors (q_l, d_l, d_l)."""
        chol_inv_t = tuple(lower_triangular_inverse(L).swapaxes(-1, -2) for L in chol)
        return cls(center=tuple(center), chol=tuple(chol), chol_inv_t=chol_inv_t)

    def whiten(self, position: Position) -> Position:
        """z = L^T (B - center), per term (q_l, d_l)."""
        return tuple(
            jnp.einsum("qji,qj->qi", L, B - c) for B, c, L in zip(position, self.center, self.chol, strict=True)
        )

    def unwhiten(self, z: Position) -> Position:
        """B = center + L^{-T} z, per term (q_l, d_l). Array operators only: the same on JAX and
        numpy arrays (the E-step's first chain starts from a draw made on the host)."""
        return tuple(c + (U @ z_l[..., None])[..., 0] for z_l, c, U in zip(z, self.center, self.chol_inv_t, strict=True))


def whitened_logdensity(logdensity_fn: Callable[..., Array], whitening: Whitening) -> Callable[..., Array]:
    """Log density of z: ``fn(z, *args) = logdensity_fn(whitening.unwhiten(z), *args)``.

    The Jacobian of the affine map is a constant and is left out.
    """

    def logdensity_z(z: Position, *args: Any) -> Array:
        return logdensity_fn(whitening.unwhiten(z), *args)

    return logdensity_z


# Batched factorisations written as loops of array operations. JAX's own (jnp.linalg.cholesky,
# lax.linalg.triangular_solve) call LAPACK on the CPU through custom calls that split a large batch
# over XLA's intra-op thread pool and wait for the parts; two such calls running side by side (one
# per random-effect term) occupied both threads of a 2-core pool and waited forever (docs/engine.md,
# "XLA on the CPU"). These run d steps of (batch, d, d) work: cheap for the small blocks of the E-step.
def batched_cholesky(H: Array) -> Array:
    """Lower Cholesky factors L (..., d, d) of symmetric positive definite H (..., d, d), column by column."""
    d = H.shape[-1]
    rows = jnp.arange(d)

    def column(j: Array, L: Array) -> Array:
        row_j = L[..., j, :]  # entries left of the diagonal are set, the rest are 0
        diagonal = jnp.sqrt(jnp.maximum(H[..., j, j] - jnp.sum(row_j * row_j, axis=-1), jnp.finfo(H.dtype).tiny))
        below = (H[..., :, j] - jnp.einsum("...ik,...k->...i", L, row_j)) / diagonal[..., None]
        values = jnp.where(rows > j, below, jnp.where(rows == j, diagonal[..., None], 0.0))
        return L.at[..., :, j].set(values)

    return jax.lax.fori_loop(0, d, column, jnp.zeros_like(H))


def lower_triangular_inverse(L: Array) -> Array:
    """L^-1 (..., d, d) of lower triangular L (..., d, d), row by row (forward substitution on I)."""
    d = L.shape[-1]
    identity = jnp.eye(d, dtype=L.dtype)

    def row(i: Array, X: Array) -> Array:
        value = (identity[i] - jnp.einsum("...k,...kj->...j", L[..., i, :], X)) / L[..., i, i][..., None]
        return X.at[..., i, :].set(value)

    return jax.lax.fori_loop(0, d, row, jnp.zeros_like(L))


def whitening_from_precision(center: Sequence[Array], precision: Sequence[Array]) -> BlockWhitening:
    """Whitening from centers (q_l, d_l) and per-level precisions (q_l, d_l, d_l).

    A jitter of 1e-6 times the mean diagonal keeps float32 factorisations finite.
    """
    chol = []
    for H in precision:
        d = H.shape[-1]
        jitter = 1e-6 * jnp.trace(H, axis1=-2, axis2=-1)[:, None, None] / d
        chol.append(batched_cholesky(H + jitter * jnp.eye(d, dtype=H.dtype)))
    return BlockWhitening.from_cholesky(center, chol)


@jax.jit
def build_whitening(
    center: Position,
    fisher: Array,
    codes: tuple[Array, ...],
    Z: tuple[Array, ...],
    prior_precisions: tuple[Array, ...],
) -> BlockWhitening:
    """Whitening around ``center`` from the rows' Fisher information evaluated there.

    ``center`` position (tuple of (q_l, d_l)), e.g. the mean of the previous
    epoch's kept draws; ``fisher`` (n, C, C) the rows' Fisher information at
    the linear predictor of ``center``, ``family.jax_fisher(eta, trials,
    dispersion)``; ``codes[l]`` (n,), ``Z[l]`` (n, p_l),
    ``prior_precisions[l]`` (C, p_l, p_l) = inverse of Sigma_l. Jitted.
    """
    information = [level_information(codes_l, Z_l, fisher, B_l.shape[0]) for codes_l, Z_l, B_l in zip(codes, Z, center, strict=True)]
    return whitening_from_information(center, information, prior_precisions)


DENSE_OUTPUTS = 16
"""Most outputs c for which a family whose Fisher information is diagonal minus rank one
(categorical) still gets the dense per-level whitening; above it, :class:`RankOneWhitening`."""


class RankOneInformation(NamedTuple):
    """Per-level sums of one term with one coefficient, for rows whose Fisher information is
    ``diag(a_i) - b_i b_i^T`` (weights omega_i = w_i z_i^2): ``diagonal`` (q, c) sum of omega_i a_i,
    ``total`` (q, c) sum of omega_i b_i, ``weight`` (q,) sum of omega_i. Additive over rows (a
    data-parallel E-step sums them over processes). The level's information is approximated by
    ``diag(diagonal) - total total^T / weight``: sum omega_i b_i b_i^T is at least that (Jensen), so the
    approximation is never below the information, and equal to it where b_i is constant in a level."""

    diagonal: Array
    total: Array
    weight: Array


class RankOneWhitening(NamedTuple):
    """Affine map B_l[q] = center + s * (z + g v (v . z)) per level of a one-coefficient term, the
    inverse square root of the precision ``diag(1 / s) (I - v v^T) diag(1 / s)``.

    ``center[l]``, ``scale[l]`` (s), ``direction[l]`` (v): (q_l, c); ``gain[l]`` (g): (q_l,),
    ``1 / (r (1 + r))`` with ``r = sqrt(1 - |v|^2)``. O(q c) per map where :class:`BlockWhitening`
    costs O(q c^2): a softmax with 100 classes and 1,000 levels holds 10^7 numbers per term in
    BlockWhitening's factors and 2 x 10^5 here. Built by :func:`whitening_from_information`.
    """

    center: Position
    scale: Position
    direction: Position
    gain: Position

    def whiten(self, position: Position) -> Position:
        """z = (I - g r v v^T) (B - center) / s per term (q_l, c) (g r = 1 / (1 + r): the inverse of unwhiten's map)."""
        out = []
        for B, c, s, v, g in zip(position, self.center, self.scale, self.direction, self.gain, strict=True):
            y = (B - c) / s
            inverse_gain = g / (1.0 + g * jnp.sum(v * v, axis=-1))
            out.append(y - (inverse_gain * jnp.sum(v * y, axis=-1))[:, None] * v)
        return tuple(out)

    def unwhiten(self, z: Position) -> Position:
        """B = center + s * (z + g v (v . z)) per term (q_l, c) (array operators only, as :meth:`BlockWhitening.unwhiten`)."""
        return tuple(
            c + s * (z_l + (g * (v * z_l).sum(-1))[:, None] * v)
            for z_l, c, s, v, g in zip(z, self.center, self.scale, self.direction, self.gain, strict=True)
        )


Whitening = BlockWhitening | RankOneWhitening


def uses_rank_one(family: Any, shapes: Sequence[tuple[int, int, int]]) -> bool:
    """Whether terms of ``shapes`` (q_l, p_l, c) get :class:`RankOneWhitening`: more than
    :data:`DENSE_OUTPUTS` outputs, one coefficient per term, and a family whose Fisher
    information is diagonal minus rank one (``family.fisher_rank_one``)."""
    many_outputs = all(p == 1 and c > DENSE_OUTPUTS for _, p, c in shapes)
    return many_outputs and family.fisher_rank_one(np.zeros((1, shapes[0][2])), np.ones(1), 1.0) is not None


def dense_whitening_bytes(family: Any, n: int, shapes: Sequence[tuple[int, int, int]]) -> int:
    """Bytes the dense whitening's build holds at once for ``n`` rows and terms of ``shapes``
    (q_l, p_l, c): the rows' Fisher information (n, c, c) and one term's per-row blocks (n, d, d),
    float32; 0 where :func:`uses_rank_one`."""
    if uses_rank_one(family, shapes):
        return 0
    c = shapes[0][2]
    d = max(p * c for _, p, c in shapes)
    return 4 * n * (c * c + d * d)


def term_information(
    family: Any, eta: Array, trials: Array, dispersion: Array, weights: Array, codes: tuple[Array, ...], Z: tuple[Array, ...], shapes: Sequence[tuple[int, int, int]]
) -> tuple[Array | RankOneInformation, ...]:
    """Per term the rows' information about its levels at the linear predictor ``eta`` (n, c):
    :class:`RankOneInformation` where :func:`uses_rank_one`, else the (q, d, d) blocks of
    :func:`level_information`. Row ``weights`` (n,); ``codes[l]`` (n,), ``Z[l]`` (n, p_l).
    Additive over rows."""
    if uses_rank_one(family, shapes):
        a, b = family.fisher_rank_one(eta, trials, dispersion, xp=jnp)
        out = []
        for codes_l, Z_l, (q, _, _) in zip(codes, Z, shapes, strict=True):
            omega = weights * Z_l[:, 0] ** 2
            sums = jax.ops.segment_sum(jnp.concatenate([omega[:, None] * a, omega[:, None] * b, omega[:, None]], axis=1), codes_l, num_segments=q)
            c = a.shape[1]
            out.append(RankOneInformation(sums[:, :c], sums[:, c : 2 * c], sums[:, 2 * c]))
        return tuple(out)
    fisher = family.fisher(eta, trials, dispersion, xp=jnp) * weights[:, None, None]
    return tuple(level_information(codes_l, Z_l, fisher, q) for codes_l, Z_l, (q, _, _) in zip(codes, Z, shapes, strict=True))


def whitening_from_information(center: Position, information: Sequence[Array | RankOneInformation], precisions: Sequence[Array]) -> Whitening:
    """The whitening at ``center`` (per term (q_l, d_l)) from :func:`term_information` plus the prior
    ``precisions`` (c, p_l, p_l) = inverse of Sigma_l."""
    if not isinstance(information[0], RankOneInformation):
        return whitening_from_precision(center, [H + prior_precision_block(P) for H, P in zip(information, precisions, strict=True)])
    scale, direction, gain = [], [], []
    for info, P in zip(information, precisions, strict=True):
        s = jax.lax.rsqrt(info.diagonal + P[:, 0, 0])
        v = info.total * s * jax.lax.rsqrt(jnp.maximum(info.weight, jnp.finfo(s.dtype).tiny))[:, None]
        r = jnp.sqrt(jnp.maximum(1.0 - jnp.sum(v * v, axis=-1), 1e-6))
        scale.append(s)
        direction.append(v)
        gain.append(1.0 / (r * (1.0 + r)))
    return RankOneWhitening(tuple(center), tuple(scale), tuple(direction), tuple(gain))
