"""Per-level whitening: family Fisher information, Hessian blocks, whiten/unwhiten."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.scipy import stats

from gmenn_formula.estep.precondition import (
    DENSE_OUTPUTS,
    BlockWhitening,
    RankOneWhitening,
    build_whitening,
    level_precision,
    term_information,
    uses_rank_one,
    whitened_logdensity,
    whitening_from_information,
    whitening_from_precision,
)
from gmenn_formula.families import get_family
from targets import linear_predictor

NUM_CLASSES = 3
CATEGORICAL = get_family("categorical")


def tiny_problem() -> dict:
    """Two terms: (1 + x | a) with 4 levels and (1 | b) with 3 levels; 30 rows, 3 classes."""
    rng = np.random.default_rng(1)
    n = 30
    x = rng.normal(size=n)
    codes = (jnp.asarray(rng.integers(0, 4, n), jnp.int32), jnp.asarray(rng.integers(0, 3, n), jnp.int32))
    Z = (jnp.asarray(np.stack([np.ones(n), x], 1), jnp.float32), jnp.ones((n, 1), jnp.float32))
    covariances = []
    for p in (2, 1):
        A = rng.normal(size=(NUM_CLASSES, p, p))
        covariances.append(A @ A.transpose(0, 2, 1) + np.eye(p))
    return {
        "codes": codes,
        "Z": Z,
        "F": jnp.asarray(rng.normal(size=(n, NUM_CLASSES)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, NUM_CLASSES, n), jnp.int32),
        "precisions": tuple(jnp.asarray(np.linalg.inv(S), jnp.float32) for S in covariances),
        "position": (
            jnp.asarray(rng.normal(size=(4, 2 * NUM_CLASSES)), jnp.float32),
            jnp.asarray(rng.normal(size=(3, NUM_CLASSES)), jnp.float32),
        ),
    }


def full_logdensity(position: tuple[jax.Array, ...], problem: dict) -> jax.Array:
    """Log posterior written independently of the p * C + c block algebra."""
    eta = linear_predictor(problem["F"], problem["codes"], problem["Z"], position)
    loglik = jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(eta), problem["y"][:, None], axis=1))
    log_prior = 0.0
    for B, P in zip(position, problem["precisions"], strict=True):
        per_class = B.reshape(B.shape[0], P.shape[1], NUM_CLASSES)  # (q, p, C)
        log_prior += -0.5 * jnp.einsum("qpc,cpr,qrc->", per_class, P, per_class)
    return loglik + log_prior


def softmax_fisher(problem: dict, position: tuple[jax.Array, ...]) -> jax.Array:
    """Categorical Fisher information (n, C, C) of the rows at ``position``."""
    return CATEGORICAL.fisher(linear_predictor(problem["F"], problem["codes"], problem["Z"], position), None, None, xp=jnp)


# Per-row negative log-likelihood in eta_i (C,), written with jax.scipy's densities.
ROW_NLL = {
    "gaussian": lambda eta_i, y_i, trials_i, dispersion: -stats.norm.logpdf(y_i, eta_i[0], jnp.sqrt(dispersion)),
    "binomial": lambda eta_i, y_i, trials_i, dispersion: -stats.binom.logpmf(y_i, trials_i, jax.nn.sigmoid(eta_i[0])),
    "poisson": lambda eta_i, y_i, trials_i, dispersion: -stats.poisson.logpmf(y_i, jnp.exp(eta_i[0])),
    "categorical": lambda eta_i, y_i, trials_i, dispersion: -jax.nn.log_softmax(eta_i)[y_i.astype(jnp.int32)],
}


@pytest.mark.parametrize("name", sorted(ROW_NLL))
def test_jax_fisher_is_the_row_nll_hessian_and_psd(name: str) -> None:
    family = get_family(name)
    num_outputs = family.num_outputs(4)
    rng = np.random.default_rng(7)
    n = 40
    eta = jnp.asarray(rng.normal(scale=1.5, size=(n, num_outputs)), jnp.float32)
    trials = jnp.asarray(rng.integers(1, 11, n), jnp.float32)
    y = {
        "gaussian": rng.normal(size=n),
        "binomial": rng.integers(0, np.asarray(trials, np.int64) + 1),
        "poisson": rng.poisson(2.0, n),
        "categorical": rng.integers(0, num_outputs, n),
    }[name]
    y = jnp.asarray(y, jnp.float32)
    dispersion = jnp.float32(0.7)
    hessian = jax.jit(jax.vmap(jax.hessian(ROW_NLL[name]), in_axes=(0, 0, 0, None)))(eta, y, trials, dispersion)
    fisher = np.asarray(family.fisher(eta, trials, dispersion, xp=jnp))
    assert fisher.shape == (n, num_outputs, num_outputs)
    np.testing.assert_allclose(fisher, np.asarray(hessian), rtol=1e-4, atol=1e-5)
    # Canonical links: the Fisher information is PSD with no repair.
    assert np.all(np.linalg.eigvalsh(fisher.astype(np.float64)) > -1e-6)


def test_level_precision_matches_dense_hessian_blocks() -> None:
    problem = tiny_problem()
    flat, unravel = ravel_pytree(problem["position"])
    dense = -np.asarray(jax.jit(jax.hessian(lambda v: full_logdensity(unravel(v), problem)))(flat))
    W = softmax_fisher(problem, problem["position"])
    offset = 0
    for codes, Z, P, B in zip(problem["codes"], problem["Z"], problem["precisions"], problem["position"], strict=True):
        blocks = np.asarray(level_precision(codes, Z, W, P, B.shape[0]))
        q, d = B.shape
        for level in range(q):
            start = offset + level * d
            np.testing.assert_allclose(blocks[level], dense[start : start + d, start : start + d], rtol=1e-4, atol=1e-4)
        offset += q * d


def test_whiten_unwhiten_round_trip_and_covariance() -> None:
    problem = tiny_problem()
    position = problem["position"]
    whitening = build_whitening(
        position, softmax_fisher(problem, position), problem["codes"], problem["Z"], problem["precisions"]
    )
    rng = np.random.default_rng(2)
    B = tuple(jnp.asarray(rng.normal(size=c.shape), jnp.float32) for c in whitening.center)
    for original, back in zip(B, whitening.unwhiten(whitening.whiten(B)), strict=True):
        np.testing.assert_allclose(back, original, rtol=1e-4, atol=1e-4)
    # z ~ N(0, I) gives Cov(B) = L^{-T} L^{-1} = precision^{-1}.
    for L, U in zip(whitening.chol, whitening.chol_inv_t, strict=True):
        covariance = np.asarray(U @ U.swapaxes(-1, -2), np.float64)
        precision = np.asarray(L @ L.swapaxes(-1, -2), np.float64)
        np.testing.assert_allclose(covariance @ precision, np.broadcast_to(np.eye(L.shape[-1]), L.shape), atol=1e-4)


def test_whitening_from_precision_and_whitened_logdensity() -> None:
    problem = tiny_problem()
    precision = [jnp.broadcast_to(4.0 * jnp.eye(d), (q, d, d)) for q, d in (B.shape for B in problem["position"])]
    whitening = whitening_from_precision(problem["position"], precision)
    assert isinstance(whitening, BlockWhitening)
    np.testing.assert_allclose(whitening.chol[0][0], 2.0 * np.eye(6), rtol=1e-5)
    z = tuple(jnp.ones_like(B) for B in problem["position"])
    expected = jax.jit(full_logdensity)(tuple(B + 0.5 for B in problem["position"]), problem)
    logdensity_z = jax.jit(whitened_logdensity(full_logdensity, whitening))
    np.testing.assert_allclose(logdensity_z(z, problem), expected, rtol=1e-5)


@pytest.mark.parametrize("d", [1, 3, 7])
def test_batched_cholesky_and_triangular_inverse_match_numpy(d: int) -> None:
    from gmenn_formula.estep.precondition import batched_cholesky, lower_triangular_inverse

    rng = np.random.default_rng(d)
    A = rng.normal(size=(50, d, d))
    H = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(d)
    L = np.asarray(batched_cholesky(jnp.asarray(H, jnp.float32)), np.float64)
    np.testing.assert_allclose(L, np.linalg.cholesky(H), rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(np.asarray(lower_triangular_inverse(jnp.asarray(L, jnp.float32))), np.linalg.inv(L), rtol=1e-3, atol=1e-3)


def _many_class_problem(num_classes: int, constant_eta: bool) -> dict:
    """(1 | a) with 5 levels on 60 rows with weights, ``num_classes`` classes; ``constant_eta``: every
    row of a level has the same linear predictor (then the rank-one form is exact)."""
    rng = np.random.default_rng(3)
    n, q = 60, 5
    codes = rng.integers(0, q, n)
    eta = rng.normal(size=(q, num_classes))[codes] if constant_eta else rng.normal(size=(n, num_classes))
    weights = np.where(np.arange(n) % 7 == 0, 0.0, 1.0)
    return {
        "eta": jnp.asarray(eta, jnp.float32),
        "weights": jnp.asarray(weights, jnp.float32),
        "codes": (jnp.asarray(codes, jnp.int32),),
        "Z": (jnp.ones((n, 1), jnp.float32),),
        "shapes": ((q, 1, num_classes),),
        "precisions": (jnp.asarray(1.0 / rng.uniform(0.2, 2.0, (num_classes, 1, 1)), jnp.float32),),
        "center": (jnp.asarray(rng.normal(size=(q, num_classes)), jnp.float32),),
    }


def _whitening_of(problem: dict, family=CATEGORICAL):
    information = term_information(family, problem["eta"], None, 1.0, problem["weights"], problem["codes"], problem["Z"], problem["shapes"])
    return information, whitening_from_information(problem["center"], information, problem["precisions"])


def _implied_precisions(whitening, q: int, d: int) -> np.ndarray:
    """(q, d, d) precision of B = unwhiten(z), z ~ N(0, I): the inverse of M M^T, M the map's matrix."""
    columns = [np.asarray(whitening.unwhiten((jnp.tile(jnp.eye(d)[j], (q, 1)),))[0] - whitening.center[0]) for j in range(d)]
    M = np.stack(columns, axis=-1)  # (q, d, d): column j is the image of e_j
    return np.linalg.inv(M @ M.transpose(0, 2, 1))


def test_many_classes_take_the_rank_one_whitening_and_it_is_exact_where_a_level_has_one_eta() -> None:
    problem = _many_class_problem(DENSE_OUTPUTS + 4, constant_eta=True)
    information, whitening = _whitening_of(problem)
    assert isinstance(whitening, RankOneWhitening)
    q, _, d = problem["shapes"][0]
    fisher = CATEGORICAL.fisher(problem["eta"], None, None, xp=jnp) * problem["weights"][:, None, None]
    dense = np.asarray(level_precision(problem["codes"][0], problem["Z"][0], fisher, problem["precisions"][0], q))
    np.testing.assert_allclose(_implied_precisions(whitening, q, d), dense, rtol=2e-3, atol=2e-3)
    z = (jnp.asarray(np.random.default_rng(0).normal(size=(q, d)), jnp.float32),)
    np.testing.assert_allclose(whitening.whiten(whitening.unwhiten(z))[0], z[0], atol=1e-4)


def test_rank_one_whitening_is_never_below_the_information_and_matches_its_formula() -> None:
    problem = _many_class_problem(DENSE_OUTPUTS + 4, constant_eta=False)
    information, whitening = _whitening_of(problem)
    q, _, d = problem["shapes"][0]
    info = information[0]
    formula = (
        jax.vmap(jnp.diag)(info.diagonal + problem["precisions"][0][:, 0, 0])
        - np.einsum("qc,qd->qcd", info.total, info.total) / np.asarray(info.weight)[:, None, None]
    )
    implied = _implied_precisions(whitening, q, d)
    np.testing.assert_allclose(implied, formula, rtol=2e-3, atol=2e-3)
    fisher = CATEGORICAL.fisher(problem["eta"], None, None, xp=jnp) * problem["weights"][:, None, None]
    dense = np.asarray(level_precision(problem["codes"][0], problem["Z"][0], fisher, problem["precisions"][0], q))
    assert np.linalg.eigvalsh(implied - dense).min() > -1e-3  # the approximation is at least the precision


def test_dense_whitening_stays_for_few_classes_slopes_and_other_families() -> None:
    assert not uses_rank_one(CATEGORICAL, ((5, 1, DENSE_OUTPUTS),))
    assert uses_rank_one(CATEGORICAL, ((5, 1, DENSE_OUTPUTS + 1), (3, 1, DENSE_OUTPUTS + 1)))
    assert not uses_rank_one(CATEGORICAL, ((5, 1, DENSE_OUTPUTS + 1), (3, 2, DENSE_OUTPUTS + 1)))
    assert not uses_rank_one(get_family("binomial"), ((5, 1, 1),))
    problem = _many_class_problem(DENSE_OUTPUTS, constant_eta=False)
    assert isinstance(_whitening_of(problem)[1], BlockWhitening)
