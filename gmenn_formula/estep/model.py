"""The E-step's PyMC model, compiled once per model structure to one JAX function.

The model (n rows, c outputs, per random-effect term l: q_l levels, p_l coefficients):

    B_l[q, c, :] ~ MvNormal(0, L_l[c] L_l[c]^T)         (p_l,) per level and class
    eta          = F + sum_l (B_l[codes_l] * Z_l[:, None, :]).sum(-1)      (n, c)
                   (B_l[codes_l][:, :, 0] for a plain intercept: Z_l is 1)
    log p(y | B) = sum_i w_i log family(y_i | eta_i)     (a pm.Potential)

Both log densities are ``pm.Potential`` terms on ``pm.Flat`` effects, up to
constants free of B: the prior as -0.5 ||L_l[c]^{-1} B_l[q, c]||^2 + q log|L_l[c]^{-1}|
with the inverse factors an input (``pm.MvNormal`` rebuilt the covariance L L^T,
factorised it again and ran a triangular solve over all q levels in every
gradient, through LAPACK custom calls), the likelihood as the family's
:meth:`~gmenn_formula.families.base.Family.pymc_loglik` (the closed form of its
canonical link). The compiled functions hold no custom call.

The row weights w (n,) are 1 for the rows the E-step conditions on and 0 for
held-out rows: a network fit compiles one model on all rows and samples given
its training rows (validation rows weighted 0) while it trains, then given all
rows in its final phase, with the same compiled function.

PyMC's own JAX path bakes ``pm.Data`` in as constants (stale after
``set_data``, and slow to compile for large n). We build the model with
``pm.Data`` placeholders, replace every one of them by a symbolic input of the
same static shape (static shapes let PyTensor fold the ``arange`` calls JAX
needs constant), and jaxify the graph: F, the Cholesky factors, the dispersion
and the data arrays are all arguments, so one compilation serves every epoch.

The compiled model depends on the data only through its shapes and dtypes
(:class:`~gmenn_formula.estep.inputs.Structure`), so one process keeps the last
:data:`COMPILED_MODELS` of them. The E-step itself calls the functions traced from it through
:mod:`~gmenn_formula.estep.kernels`, which exports and stores them: a process that finds them
in the store never builds the model (nor imports PyMC).

Everything runs in float32 (see :func:`~gmenn_formula.estep.runtime.configure_jax`).

The sampler sees each term's effects as a (q_l, p_l * c) block, index
``p * c + class`` (see :mod:`gmenn_formula.estep.precondition`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import jax
import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pymc.sampling.jax import get_jaxified_graph
from pytensor.graph.replace import graph_replace

from gmenn_formula.estep.arrays import TermArrays
from gmenn_formula.estep.inputs import ModelData, ModelParams, Structure
from gmenn_formula.estep.runtime import configure_jax
from gmenn_formula.families import Family


COMPILED_MODELS = 8
"""Compiled models a process keeps (the most recently used)."""


@dataclass(frozen=True)
class CompiledModel:
    """``logdensity(position, params, data)`` -> scalar, ``eta(position, params, data)`` -> (n, c),
    and the two parts of the log density: ``likelihood`` (the rows' weighted log-likelihood, which
    a data-parallel E-step sums over processes) and ``prior`` (the effects' prior, which depends on
    no row: every process computes the same value).

    ``position``: tuple of (q_l, p_l * c) blocks. ``model``: the PyMC model it came from.
    """

    logdensity: Callable
    eta: Callable
    likelihood: Callable
    prior: Callable
    model: pm.Model
    shapes: tuple[tuple[int, int, int], ...]
    """(q_l, p_l, c) of each term."""


def _to_pymc_layout(block: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
    q, p, c = shape
    return block.reshape(q, p, c).transpose(0, 2, 1)


def prior_logp(B, chol_inverse):
    """log MvNormal(B[q, c] | 0, L[c] L[c]^T) summed over the levels and classes, up to
    -q c p log(2 pi) / 2; ``B`` (q, c, p), ``chol_inverse`` (c, p, p) the inverses L^{-1} (pytensor)."""
    num_levels, _, p = B.type.shape
    if p == 1:
        standardized = B[:, :, 0] * chol_inverse[:, 0, 0]
    else:
        standardized = (chol_inverse[None] * B[:, :, None, :]).sum(-1)
    log_det_inverse = pt.log(pt.diagonal(chol_inverse, axis1=-2, axis2=-1)).sum()
    return -0.5 * pt.sum(standardized**2) + num_levels * log_det_inverse


def build_model(family: Family, terms: tuple[TermArrays, ...], y: np.ndarray, trials: np.ndarray, num_outputs: int) -> tuple[pm.Model, dict]:
    """The PyMC model and a name -> placeholder map of its ``pm.Data`` variables."""
    n = len(y)
    with pytensor.config.change_flags(floatX="float32"), pm.Model() as model:
        F = pm.Data("F", np.zeros((n, num_outputs), np.float32))
        dispersion = pm.Data("dispersion", np.float32(1.0))
        y_data = pm.Data("y", y)
        trials_data = pm.Data("trials", trials)
        weights = pm.Data("weights", np.ones(n, np.float32))
        eta = F
        for index, term in enumerate(terms):
            chol_inverse = pm.Data(f"chol_inverse_{index}", np.tile(np.eye(term.num_coefs, dtype=np.float32), (num_outputs, 1, 1)))
            codes = pm.Data(f"codes_{index}", term.codes)
            Z = pm.Data(f"Z_{index}", term.Z)
            B = pm.Flat(f"B_{index}", shape=(term.num_levels, num_outputs, term.num_coefs))
            pm.Potential(f"prior_{index}", prior_logp(B, chol_inverse))
            eta = eta + (B[codes][:, :, 0] if term.is_intercept else (B[codes] * Z[:, None, :]).sum(-1))
        pm.Deterministic("eta", eta)
        pm.Potential("y_obs", (weights * family.pymc_loglik(eta, y_data, trials_data, dispersion)).sum())
    return model, {name: var for name, var in model.named_vars.items() if isinstance(var, pytensor.compile.SharedVariable)}


def compile_model(family: Family, terms: tuple[TermArrays, ...], y: np.ndarray, trials: np.ndarray, num_outputs: int) -> CompiledModel:
    """The jaxified log density and linear predictor of the model of these shapes and dtypes
    (built and jaxified on the first call, then taken from the process's cache)."""
    return compile_structure(Structure.of(family, terms, y, trials, num_outputs))


@lru_cache(maxsize=COMPILED_MODELS)
def compile_structure(structure: Structure) -> CompiledModel:
    """Build the PyMC model of ``structure`` on placeholder data and jaxify it."""
    configure_jax()
    n, num_outputs = structure.n, structure.num_outputs
    terms = tuple(TermArrays(np.zeros(n, codes), np.full((n, p), intercept, Z), q) for q, p, codes, Z, intercept in structure.terms)
    model, shared = build_model(structure.family, terms, np.zeros(n, structure.y_dtype), np.ones(n, structure.trials_dtype), num_outputs)
    inputs = {name: pt.tensor(name=name, dtype=var.dtype, shape=var.get_value().shape) for name, var in shared.items()}
    priors = [model[f"prior_{index}"] for index in range(len(terms))]
    eta_values, likelihood_values, *prior_values = model.replace_rvs_by_values([model["eta"], model["y_obs"], *priors])
    logp, eta, likelihood, prior = graph_replace(
        [model.logp(), eta_values, likelihood_values, pt.add(*prior_values) if len(prior_values) > 1 else prior_values[0]],
        {shared[name]: inputs[name] for name in shared},
        strict=False,
    )
    order = ["F", "dispersion", "y", "trials", "weights"]
    for index in range(len(terms)):
        order += [f"chol_inverse_{index}", f"codes_{index}", f"Z_{index}"]
    values = [model[f"B_{index}"] for index in range(len(terms))]
    value_vars = [model.rvs_to_values[v] for v in values]
    jax_fn = get_jaxified_graph(inputs=[*value_vars, *(inputs[name] for name in order)], outputs=[logp, eta, likelihood, prior])
    shapes = structure.shapes

    def call(position, params: ModelParams, data: ModelData):
        blocks = [_to_pymc_layout(b, s) for b, s in zip(position, shapes)]
        named = {"F": params.F, "dispersion": params.dispersion, "y": data.y, "trials": data.trials, "weights": data.weights}
        for index in range(len(terms)):
            named |= {f"chol_inverse_{index}": params.chol_inverses[index], f"codes_{index}": data.codes[index], f"Z_{index}": data.Z[index]}
        return jax_fn(*blocks, *(named[name] for name in order))

    return CompiledModel(
        logdensity=lambda position, params, data: call(position, params, data)[0],
        eta=lambda position, params, data: call(position, params, data)[1],
        likelihood=lambda position, params, data: call(position, params, data)[2],
        prior=lambda position, params, data: call(position, params, data)[3],
        model=model,
        shapes=shapes,
    )
