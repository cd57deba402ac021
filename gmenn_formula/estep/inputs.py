"""What the E-step's compiled functions take besides the effects: the data of the rows
(:class:`ModelData`, fixed for a fit) and the parameters of an epoch (:class:`ModelParams`).
JAX pytrees, without PyMC: a fit whose compiled functions come from the store
(:mod:`~gmenn_formula.estep.kernels`) never imports it."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from gmenn_formula.estep.arrays import TermArrays
from gmenn_formula.families import Family

class ModelData(NamedTuple):
    """Data arrays of the E-step (JAX): ``y`` (n,), ``trials`` (n,), row ``weights`` (n,), per term codes and Z."""

    y: jax.Array
    trials: jax.Array
    weights: jax.Array
    codes: tuple[jax.Array, ...]
    Z: tuple[jax.Array, ...]


class ModelParams(NamedTuple):
    """What changes between epochs: ``F`` (n, c) fixed-part predictor, per term the
    inverses ``chol_inverses[l]`` (c, p_l, p_l) of the lower Cholesky factors of the prior
    covariances, and the gaussian residual variance ``dispersion`` (scalar; ignored by
    other families)."""

    F: jax.Array
    chol_inverses: tuple[jax.Array, ...]
    dispersion: jax.Array


def model_data(terms: tuple[TermArrays, ...], y: np.ndarray, trials: np.ndarray, weights: np.ndarray) -> ModelData:
    """The data as numpy arrays in the dtypes the compiled functions take (y's canonical dtype,
    float32, int32), for the caller to place on the device; ``weights`` (n,) row weights of the likelihood."""
    y = np.asarray(y)
    return ModelData(
        y=y.astype(jax.dtypes.canonicalize_dtype(y.dtype), copy=False),
        trials=np.asarray(trials, dtype=np.float32),
        weights=np.asarray(weights, dtype=np.float32),
        codes=tuple(np.asarray(t.codes, dtype=np.int32) for t in terms),
        Z=tuple(np.asarray(t.Z, dtype=np.float32) for t in terms),
    )


class Structure(NamedTuple):
    """What the E-step's compiled functions depend on besides the values: the ``family``, the rows
    ``n``, the dtypes of y and trials, the outputs c and per term (levels, coefficients, codes'
    dtype, Z's dtype, whether it is a plain intercept: :attr:`TermArrays.is_intercept`). Hashable:
    the key of the compiled models and functions a process keeps."""

    family: Family
    n: int
    y_dtype: str
    trials_dtype: str
    num_outputs: int
    terms: tuple[tuple[int, int, str, str, bool], ...]

    @classmethod
    def of(cls, family: Family, terms: tuple[TermArrays, ...], y: np.ndarray, trials: np.ndarray, num_outputs: int) -> Structure:
        layout = tuple((t.num_levels, t.num_coefs, t.codes.dtype.str, t.Z.dtype.str, t.is_intercept) for t in terms)
        return cls(family, len(y), np.asarray(y).dtype.str, np.asarray(trials).dtype.str, num_outputs, layout)

    @property
    def shapes(self) -> tuple[tuple[int, int, int], ...]:
        """(q_l, p_l, c) of each term."""
        return tuple((q, p, self.num_outputs) for q, p, *_ in self.terms)

    def describe(self) -> str:
        """A text that names the structure (for the store's keys)."""
        return f"{self.family!r}|{self.n}|{self.y_dtype}|{self.trials_dtype}|{self.num_outputs}|{self.terms}"
