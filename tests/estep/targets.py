"""Reference targets of the sampler tests, written directly in JAX.

``linear_predictor`` is the E-step model's eta in the sampler's layout; the test
``test_model.py::test_compiled_model_matches_the_reference`` checks that the PyMC model
the engine compiles computes the same eta and log density, so the sampler is tested
against the predictor it runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import Array

Position = tuple[Array, ...]


def linear_predictor(F: Array, codes: Sequence[Array], Z: Sequence[Array], position: Position) -> Array:
    """Linear predictor eta (n, C) = F + sum_l Z_l[i] @ B_l[codes_l[i]].reshape(p_l, C).

    ``F`` (n, C); ``codes[l]`` (n,) int32 in [0, q_l); ``Z[l]`` (n, p_l); ``position[l]`` (q_l, p_l * C).
    """
    n, num_classes = F.shape
    eta = F
    for codes_l, Z_l, B_l in zip(codes, Z, position, strict=True):
        coefficients = B_l[codes_l].reshape(n, Z_l.shape[1], num_classes)
        eta = eta + jnp.einsum("np,npc->nc", Z_l, coefficients)
    return eta
