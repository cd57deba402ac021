"""The E-step's PyMC model: its log density and gradient against the same model written in JAX, its
linear predictor against the sampler tests' reference (a plain intercept entering without its
product with Z), and no custom calls in what it compiles."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import gammaln
from jax.scipy.stats import multivariate_normal, norm
from targets import linear_predictor

from gmenn_formula.estep.sampler import SamplerConfig, init, sample_chunk
from gmenn_formula.estep.arrays import TermArrays
from gmenn_formula.estep.driver import EStep
from gmenn_formula.estep.inputs import ModelParams, Structure, model_data
from gmenn_formula.estep.kernels import whitening_at
from gmenn_formula.estep.model import compile_model
from gmenn_formula.families import get_family

N, C = 60, 3


def row_loglik(name: str, eta: jax.Array, y: jax.Array, trials: jax.Array, dispersion: float) -> jax.Array:
    """(n,) full log-likelihood, constants included."""
    if name == "categorical":
        return jnp.take_along_axis(jax.nn.log_softmax(eta), y[:, None].astype(jnp.int32), axis=1)[:, 0]
    e = eta[:, 0]
    if name == "binomial":
        log_choose = gammaln(trials + 1) - gammaln(y + 1) - gammaln(trials - y + 1)
        return log_choose + y * jax.nn.log_sigmoid(e) + (trials - y) * jax.nn.log_sigmoid(-e)
    if name == "poisson":
        return y * e - jnp.exp(e) - gammaln(y + 1)
    return norm.logpdf(y, e, jnp.sqrt(dispersion))


def problem(name: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = C if name == "categorical" else 1
    terms = (
        TermArrays(codes=rng.integers(0, 7, N).astype(np.int32), Z=np.ones((N, 1), np.float32), num_levels=7),
        TermArrays(codes=rng.integers(0, 4, N).astype(np.int32), Z=rng.normal(size=(N, 2)).astype(np.float32), num_levels=4),
    )
    trials = rng.integers(1, 5, N).astype(np.float32) if name == "binomial" else np.ones(N, np.float32)
    y = {
        "categorical": rng.integers(0, C, N).astype(np.int32),
        "binomial": rng.binomial(trials.astype(int), 0.4).astype(np.float32),
        "poisson": rng.poisson(2.0, N).astype(np.float32),
        "gaussian": rng.normal(size=N).astype(np.float32),
    }[name]
    weights = (rng.random(N) < 0.8).astype(np.float32)
    chols = []
    for t in terms:
        A = rng.normal(size=(c, t.num_coefs, t.num_coefs))
        chols.append(np.linalg.cholesky(A @ A.transpose(0, 2, 1) + np.eye(t.num_coefs)).astype(np.float32))
    params = ModelParams(
        F=jnp.asarray(rng.normal(size=(N, c)), jnp.float32),
        chol_inverses=tuple(jnp.asarray(np.linalg.inv(L), jnp.float32) for L in chols),
        dispersion=jnp.asarray(0.7, jnp.float32),
    )
    return get_family(name), terms, y, trials, weights, c, params


def reference(name, terms, y, trials, weights, params, shapes):
    """The model in JAX: MvNormal priors and the family's full log-likelihood, on (q_l, p_l * c) blocks."""

    def logdensity(position):
        eta = params.F
        prior = 0.0
        for block, term, L_inv, (q, p, c) in zip(position, terms, params.chol_inverses, shapes):
            B = block.reshape(q, p, c)
            eta = eta + jnp.einsum("np,npc->nc", term.Z, B[term.codes])
            covariances = jnp.linalg.inv(jnp.swapaxes(L_inv, 1, 2) @ L_inv)
            for k in range(c):
                prior += multivariate_normal.logpdf(B[:, :, k], jnp.zeros(p), covariances[k]).sum()
        return prior + jnp.sum(weights * row_loglik(name, eta, jnp.asarray(y), jnp.asarray(trials), params.dispersion))

    return logdensity


@pytest.mark.parametrize("name", ["categorical", "binomial", "poisson", "gaussian"])
def test_logdensity_matches_the_model_in_jax_up_to_a_constant(name):
    family, terms, y, trials, weights, c, params = problem(name)
    compiled = compile_model(family, terms, y, trials, c)
    data = model_data(terms, y, trials, weights)
    ref = reference(name, terms, y, trials, weights, params, compiled.shapes)
    rng = np.random.default_rng(1)
    positions = [tuple(jnp.asarray(rng.normal(size=(q, p * c)), jnp.float32) for q, p, c in compiled.shapes) for _ in range(3)]
    ours = [float(compiled.logdensity(x, params, data)) for x in positions]
    theirs = [float(ref(x)) for x in positions]
    np.testing.assert_allclose(np.diff(ours), np.diff(theirs), rtol=1e-4, atol=1e-3)
    for x in positions:
        grad = jax.grad(compiled.logdensity)(x, params, data)
        expected = jax.grad(ref)(x)
        for g, e in zip(grad, expected):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["categorical", "binomial"])
def test_eta_matches_the_sampler_tests_reference(name):
    """The sampler tests use ``targets.linear_predictor``; the model the engine runs computes the same."""
    family, terms, y, trials, weights, c, params = problem(name)
    compiled = compile_model(family, terms, y, trials, c)
    data = model_data(terms, y, trials, weights)
    rng = np.random.default_rng(2)
    position = tuple(jnp.asarray(rng.normal(size=(q, p * c)), jnp.float32) for q, p, c in compiled.shapes)
    expected = linear_predictor(params.F, data.codes, data.Z, position)
    np.testing.assert_allclose(compiled.eta(position, params, data), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["categorical", "gaussian"])
def test_compiled_e_step_holds_no_custom_call(name):
    """LAPACK custom calls split batches over XLA's intra-op pool and, two at a time, deadlocked it
    (docs/engine.md): the whitening and the sampler must compile to plain XLA."""
    family, terms, y, trials, weights, c, params = problem(name)
    compiled, data = compile_model(family, terms, y, trials, c), model_data(terms, y, trials, weights)
    config = SamplerConfig(num_draws=2, burn_in=0, max_tree_depth=3)
    center = tuple(jnp.zeros((q, p * c), jnp.float32) for q, p, c in compiled.shapes)
    precisions = tuple(jnp.asarray(np.eye(p)[None].repeat(c, 0), jnp.float32) for q, p, _ in compiled.shapes)
    arguments = (center, params, data, precisions, family, compiled.eta)
    whitening_text = whitening_at.lower(*arguments).compile().as_text()
    whitening = whitening_at(*arguments)
    state = init(center, config)
    sampler_text = sample_chunk.lower(
        jax.random.PRNGKey(0), state, compiled.logdensity, config, whitening, (params, data)
    ).compile().as_text()
    for text in (whitening_text, sampler_text):
        assert re.findall(r'custom_call_target="([^"]+)"', text) == []


def test_a_model_of_the_same_structure_is_compiled_once_and_serves_other_data():
    family, terms, y, trials, weights, c, params = problem("binomial")
    first = compile_model(family, terms, y, trials, c)
    shuffled = tuple(TermArrays(t.codes[::-1].copy(), t.Z[::-1].copy(), t.num_levels) for t in terms)
    again = compile_model(family, shuffled, y[::-1].copy(), trials, c)
    assert again is first  # same shapes and dtypes: the cached model, and the sampler's jit cache with it
    position = tuple(jnp.full((q, p * c), 0.3, jnp.float32) for q, p, c in first.shapes)
    data = model_data(shuffled, y[::-1].copy(), trials, weights[::-1].copy())
    expected = linear_predictor(params.F, data.codes, data.Z, position)
    np.testing.assert_allclose(again.eta(position, params, data), expected, rtol=1e-5, atol=1e-5)
    more_levels = tuple(TermArrays(t.codes, t.Z, t.num_levels + 1) for t in terms)
    assert compile_model(family, more_levels, y, trials, c) is not first


def test_only_one_coefficient_of_ones_on_every_row_is_a_plain_intercept():
    """The first term (Z = 1) enters eta as a plain intercept; a one-coefficient term whose column is
    not all ones (here 1 but 2 on one row) keeps the product with Z, and eta is the reference's
    either way. Padding rows up to the bucket keeps an intercept one."""
    family, terms, y, trials, weights, c, params = problem("binomial")
    column = terms[0].Z.copy()
    column[5] = 2.0
    almost = TermArrays(terms[0].codes, column, terms[0].num_levels)
    structure = Structure.of(family, (terms[0], almost, terms[1]), y, trials, c)
    assert [term[-1] for term in structure.terms] == [True, False, False]
    compiled = compile_model(family, (terms[0], almost), y, trials, c)
    data = model_data((terms[0], almost), y, trials, weights)
    params = params._replace(chol_inverses=(params.chol_inverses[0],) * 2)
    position = tuple(jnp.asarray(np.random.default_rng(3).normal(size=(q, p * c)), jnp.float32) for q, p, c in compiled.shapes)
    expected = linear_predictor(params.F, data.codes, data.Z, position)
    np.testing.assert_allclose(compiled.eta(position, params, data), expected, rtol=1e-5, atol=1e-5)
    rows = 1010  # padded to a bucket of 1,016
    intercept = TermArrays(np.zeros(rows, np.int32), np.ones((rows, 1), np.float32), 1)
    estep = EStep(family, (intercept,), np.ones(rows, np.float32), np.ones(rows, np.float32), np.ones(rows, np.float32), 1,
                  SamplerConfig(num_draws=2, burn_in=0, max_tree_depth=3), seed=0)
    assert estep.padded_rows == 1016 and estep.kernels.structure.terms[0][-1]
