"""E-step sampler: exact gaussian posteriors, a softmax model, step-size rules, one compilation."""

from __future__ import annotations

from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmenn_formula.estep.precondition import DENSE_OUTPUTS, RankOneWhitening, term_information, whitening_from_information
from gmenn_formula.estep.sampler import SamplerConfig, SamplerState, init, sample_chunk
from gmenn_formula.families import get_family
from targets import linear_predictor

Position = tuple[jax.Array, ...]


def ess(draws: np.ndarray) -> np.ndarray:
    """arviz mean-ESS of each column of one chain ``draws`` (N, D)."""
    return np.asarray(az.ess(az.convert_to_dataset(np.asarray(draws, np.float64)[None]), method="mean")["x"])


def run_epochs(
    kind: str, problem: dict[str, Any], config: SamplerConfig, num_epochs: int, seed: int = 0
) -> tuple[SamplerState, list[Position], list[Any]]:
    """EM-like loop with F and Sigma fixed: "whitened" rebuilds its whitening at the last kept draws' mean.

    ``problem``: "shapes" of the terms, "logdensity(position, data)", "family" and "data", the
    arrays that go to the jitted sampler (F, codes, Z, y, params = the dispersion, precisions).
    """
    state = init(tuple(jnp.zeros(shape, jnp.float32) for shape in problem["shapes"]), config)
    center = state.position
    key = jax.random.key(seed)
    all_draws, infos = [], []
    for _ in range(num_epochs):
        key, sub = jax.random.split(key)
        whitening = None
        if kind == "whitened":
            whitening = whitening_at(center, problem["data"], problem["family"])
        state, draws, info = sample_chunk(sub, state, problem["logdensity"], config, whitening, (problem["data"],))
        center = tuple(d.mean(0) for d in draws)
        all_draws.append(draws)
        infos.append(info)
    return state, all_draws, infos


def whitening_at(center: Position, data: dict[str, Any], family: Any) -> Any:
    """Whitening at ``center`` from the family's information there (trials unused: no binomial here):
    per-level Cholesky factors, or the rank-one form for many classes."""
    eta = linear_predictor(data["F"], data["codes"], data["Z"], center)
    shapes = [(B.shape[0], 1, B.shape[1]) for B in center]
    weights = jnp.ones(eta.shape[0], jnp.float32)
    information = term_information(family, eta, None, data["params"], weights, data["codes"], data["Z"], shapes)
    return whitening_from_information(center, information, data["precisions"])


def flat(draws: Position) -> np.ndarray:
    """(N, D) matrix of draws from a tuple of (N, q_l, d_l)."""
    return np.concatenate([np.asarray(d).reshape(d.shape[0], -1) for d in draws], axis=1)


# --- conjugate gaussian: two crossed random intercepts, known F and residual variance ---------------

RESIDUAL_VARIANCE = 0.5
GAUSSIAN_VARIANCES = (0.6, 0.3)
GAUSSIAN_LEVELS = (20, 5)


def gaussian_logdensity(position: Position, data: dict[str, Any]) -> jax.Array:
    eta = linear_predictor(data["F"], data["codes"], data["Z"], position)
    loglik = -0.5 * jnp.sum((data["y"] - eta[:, 0]) ** 2) / data["params"]
    return loglik - 0.5 * sum(jnp.sum(B**2) * P[0, 0, 0] for B, P in zip(position, data["precisions"], strict=True))


@pytest.fixture(scope="module")
def gaussian() -> dict[str, Any]:
    """200 rows, crossed factors of 20 and 5 levels, and the exact posterior mean and variance of B."""
    rng = np.random.default_rng(0)
    n = 200
    codes = [rng.integers(0, q, n) for q in GAUSSIAN_LEVELS]
    truth = [rng.normal(scale=np.sqrt(v), size=q) for q, v in zip(GAUSSIAN_LEVELS, GAUSSIAN_VARIANCES, strict=True)]
    F = rng.normal(size=n)
    y = F + truth[0][codes[0]] + truth[1][codes[1]] + rng.normal(scale=np.sqrt(RESIDUAL_VARIANCE), size=n)
    X = np.concatenate([np.eye(q)[c] for q, c in zip(GAUSSIAN_LEVELS, codes, strict=True)], axis=1)
    prior = np.concatenate([np.full(q, 1 / v) for q, v in zip(GAUSSIAN_LEVELS, GAUSSIAN_VARIANCES, strict=True)])
    precision = X.T @ X / RESIDUAL_VARIANCE + np.diag(prior)
    covariance = np.linalg.inv(precision)
    data = {
        "codes": tuple(jnp.asarray(c, jnp.int32) for c in codes),
        "Z": tuple(jnp.ones((n, 1), jnp.float32) for _ in GAUSSIAN_LEVELS),
        "F": jnp.asarray(F[:, None], jnp.float32),
        "y": jnp.asarray(y, jnp.float32),
        "params": jnp.asarray(RESIDUAL_VARIANCE, jnp.float32),
        "precisions": tuple(jnp.full((1, 1, 1), 1 / v, jnp.float32) for v in GAUSSIAN_VARIANCES),
    }
    return {
        "shapes": [(q, 1) for q in GAUSSIAN_LEVELS],
        "data": data,
        "family": get_family("gaussian"),
        "logdensity": gaussian_logdensity,
        "exact_mean": covariance @ X.T @ (y - F) / RESIDUAL_VARIANCE,
        "exact_variance": np.diag(covariance),
    }


@pytest.mark.parametrize("kind", ["whitened", "paper"])
def test_gaussian_posterior_moments_match_closed_form(kind: str, gaussian: dict[str, Any]) -> None:
    config = SamplerConfig(kind=kind, num_draws=2100, burn_in=100)
    _, draws, infos = run_epochs(kind, gaussian, config, num_epochs=2)
    chain = flat(draws[-1]).astype(np.float64)
    mean, variance = gaussian["exact_mean"], gaussian["exact_variance"]
    z_mean = (chain.mean(0) - mean) / np.sqrt(variance / ess(chain))
    second = chain**2
    z_second = (second.mean(0) - (mean**2 + variance)) / (second.std(0) / np.sqrt(ess(second)))
    assert np.max(np.abs(z_mean)) < 4.5, z_mean
    assert np.max(np.abs(z_second)) < 4.5, z_second
    assert abs(np.mean(chain.var(0) / variance) - 1) < 0.1
    assert int(infos[-1].num_divergences) == 0


# --- softmax (C=3) random intercept with 50 levels --------------------------------------------------

NUM_CLASSES = 3
SOFTMAX_LEVELS = 50


def softmax_logdensity(position: Position, data: dict[str, Any]) -> jax.Array:
    eta = linear_predictor(data["F"], data["codes"], data["Z"], position)
    loglik = jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(eta), data["y"][:, None], axis=1))
    return loglik - 0.5 * jnp.sum(position[0] ** 2) * data["precisions"][0][0, 0, 0]


@pytest.fixture(scope="module")
def softmax() -> dict[str, Any]:
    return softmax_problem(NUM_CLASSES)


@pytest.fixture(scope="module")
def softmax_many_classes() -> dict[str, Any]:
    """As ``softmax`` with more classes than the dense whitening takes: the rank-one whitening."""
    return softmax_problem(DENSE_OUTPUTS + 4)


def softmax_problem(num_classes: int) -> dict[str, Any]:
    """1000 rows, one factor of 50 levels, unit variance; the MAP and the Laplace variances of B."""
    rng = np.random.default_rng(3)
    n = 1000
    codes = rng.integers(0, SOFTMAX_LEVELS, n)
    F = rng.normal(size=(n, num_classes))
    eta = F + rng.normal(size=(SOFTMAX_LEVELS, num_classes))[codes]
    probabilities = np.exp(eta) / np.exp(eta).sum(1, keepdims=True)
    y = (rng.random((n, 1)) > np.cumsum(probabilities, 1)).sum(1).clip(max=num_classes - 1)
    data = {
        "codes": (jnp.asarray(codes, jnp.int32),),
        "Z": (jnp.ones((n, 1), jnp.float32),),
        "F": jnp.asarray(F, jnp.float32),
        "y": jnp.asarray(y, jnp.int32),
        "params": None,
        "precisions": (jnp.ones((num_classes, 1, 1), jnp.float32),),
    }
    problem = {
        "shapes": [(SOFTMAX_LEVELS, num_classes)],
        "data": data,
        "family": get_family("categorical"),
        "logdensity": softmax_logdensity,
    }

    def negative_logdensity(b: jax.Array) -> jax.Array:
        return -softmax_logdensity((b.reshape(SOFTMAX_LEVELS, num_classes),), data)

    gradient, hessian = jax.jit(jax.grad(negative_logdensity)), jax.jit(jax.hessian(negative_logdensity))
    b = jnp.zeros(SOFTMAX_LEVELS * num_classes, jnp.float32)
    for _ in range(20):  # Newton on a strictly concave posterior
        b = b - jnp.linalg.solve(hessian(b), gradient(b))
    problem["map"] = np.asarray(b, np.float64)
    problem["laplace_variance"] = np.diag(np.linalg.inv(np.asarray(hessian(b), np.float64)))
    return problem


@pytest.mark.parametrize("problem", ["softmax", "softmax_many_classes"])
def test_whitened_softmax_mixes_and_matches_map(problem: str, request: pytest.FixtureRequest) -> None:
    softmax = request.getfixturevalue(problem)
    config = SamplerConfig(num_draws=200, burn_in=20)
    _, draws, infos = run_epochs("whitened", softmax, config, num_epochs=4)
    many = softmax["shapes"][0][1] > DENSE_OUTPUTS
    assert isinstance(whitening_at((jnp.zeros(softmax["shapes"][0]),), softmax["data"], softmax["family"]), RankOneWhitening) == many
    chain = flat(draws[-1]).astype(np.float64)
    acceptance = float(np.mean([info.mean_acceptance for info in infos[1:]]))
    assert 0.5 < acceptance < 0.99
    assert sum(int(info.num_divergences) for info in infos) == 0
    assert np.corrcoef(chain.mean(0), softmax["map"])[0, 1] > 0.95
    # E[B^2] against the Laplace approximation (MAP^2 + inverse-Hessian diagonal). At ~20 rows per level
    # Laplace is ~5% low here: 4000-draw runs of both samplers agree with each other to 0.1% and give 1.055.
    laplace_second = softmax["map"] ** 2 + softmax["laplace_variance"]
    second = (chain**2).mean(0)
    assert 0.95 < second.sum() / laplace_second.sum() < 1.15
    assert np.corrcoef(second, laplace_second)[0, 1] > 0.9
    # Anti-correlated draws would serve E[B] but starve E[B^2]: ask for a useful ESS of both.
    num_kept = chain.shape[0]
    assert np.median(ess(chain)) > 0.5 * num_kept
    assert np.median(ess(chain**2)) > 0.3 * num_kept


# --- state, step-size rules, compilation ------------------------------------------------------------


def test_state_carries_last_draw_and_whitened_step_rule(softmax: dict[str, Any]) -> None:
    config = SamplerConfig(num_draws=5, burn_in=2, initial_step_size=0.3, step_size_gain=0.5, target_acceptance=0.7)
    state, draws, infos = run_epochs("whitened", softmax, config, num_epochs=2)
    assert draws[-1][0].shape == (3, SOFTMAX_LEVELS, NUM_CLASSES)
    assert infos[-1].acceptance_rate.shape == (5,)
    np.testing.assert_array_equal(state.position[0], draws[-1][0][-1])
    expected = infos[-1].step_size * np.exp(0.5 * (infos[-1].mean_acceptance - 0.7))
    np.testing.assert_allclose(state.step_size, expected, rtol=1e-5)
    assert state.step_size.dtype == jnp.float32


def test_paper_rule_halves_step_after_rejections() -> None:
    def narrow(position: Position, scale: jax.Array) -> jax.Array:  # sd 1e-3: step 0.1 is rejected
        return -0.5 * jnp.sum((position[0] / scale) ** 2)

    config = SamplerConfig(kind="paper", num_draws=3, burn_in=1, max_tree_depth=4)
    state = init((jnp.full((4, 2), 1e-3),), config)
    np.testing.assert_allclose(state.step_size, 0.1)
    state, _, info = sample_chunk(jax.random.key(0), state, narrow, config, None, (jnp.float32(1e-3),))
    assert float(info.mean_acceptance) < 1e-3
    np.testing.assert_allclose(state.step_size, 0.05)
    state, _, _ = sample_chunk(jax.random.key(1), state, narrow, config, None, (jnp.float32(1.0),))
    np.testing.assert_allclose(state.step_size, 0.05)  # accepted: unchanged


def test_one_compilation_serves_every_epoch(softmax: dict[str, Any]) -> None:
    traces = []

    def counting_logdensity(position: Position, data: dict[str, Any]) -> jax.Array:
        traces.append(1)  # runs only while JAX traces
        return softmax_logdensity(position, data)

    config = SamplerConfig(num_draws=3, burn_in=1)
    state, _, _ = run_epochs("whitened", dict(softmax, logdensity=counting_logdensity), config, num_epochs=1)
    traced_once = len(traces)
    assert traced_once > 0
    rng = np.random.default_rng(5)
    data = dict(softmax["data"])
    for epoch in range(3):  # new F, Sigma, whitening and state every epoch
        data["F"] = jnp.asarray(rng.normal(size=data["F"].shape), jnp.float32)
        data["precisions"] = (jnp.full((NUM_CLASSES, 1, 1), 1.0 + epoch, jnp.float32),)
        whitening = whitening_at(state.position, data, softmax["family"])
        state, _, _ = sample_chunk(jax.random.key(epoch), state, counting_logdensity, config, whitening, (data,))
    assert len(traces) == traced_once


def test_kind_and_whitening_must_agree(softmax: dict[str, Any]) -> None:
    data = softmax["data"]
    state = init((jnp.zeros((SOFTMAX_LEVELS, NUM_CLASSES)),), SamplerConfig())
    with pytest.raises(ValueError, match="needs a whitening"):
        sample_chunk(jax.random.key(0), state, softmax_logdensity, SamplerConfig(), None, (data,))
    whitening = whitening_at(state.position, data, softmax["family"])
    with pytest.raises(ValueError, match="pass whitening=None"):
        sample_chunk(jax.random.key(0), state, softmax_logdensity, SamplerConfig(kind="paper"), whitening, (data,))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "nuts"}, "kind"),
        ({"num_draws": 2, "burn_in": 2}, "burn_in < num_draws"),
        ({"initial_step_size": 0.0}, "initial_step_size"),
        ({"target_acceptance": 1.0}, "target_acceptance"),
        ({"step_size_gain": -1.0}, "step_size_gain"),
        ({"max_tree_depth": 0}, "max_tree_depth"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**kwargs)
