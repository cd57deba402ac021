"""The E-step's types, shared by both E-steps and the engine; no PyMC, no JAX.

Shapes: n rows, per random-effect term l: q_l levels, p_l coefficients; c outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np

from gmenn_formula.errors import ControlError

Array = Any
"""A numpy array, or a JAX array inside the jitted sampler."""
SamplerKind = Literal["whitened", "paper"]


def is_plain_intercept(Z: Any) -> bool:
    """Whether a term's Z (n, p), numpy or torch, is one column of 1 on every row: a plain
    intercept, whose effects enter eta as they are, without a product with Z (the E-step's model and
    the M-step's statistics both take that path)."""
    return Z.shape[1] == 1 and bool((Z == 1).all())


@dataclass(frozen=True)
class TermArrays:
    """One random-effect term: ``codes`` (n,) int32 in [0, q), ``Z`` (n, p) float32."""

    codes: np.ndarray
    Z: np.ndarray
    num_levels: int

    @property
    def num_coefs(self) -> int:
        return self.Z.shape[1]

    @property
    def is_intercept(self) -> bool:
        """:func:`is_plain_intercept` of Z (one pass over the rows fewer each way per gradient)."""
        return is_plain_intercept(self.Z)


class DrawInfo(NamedTuple):
    """Diagnostics of a run of K draws (a chunk, or an epoch's chunks joined); arrays of length
    K hold one value per draw (burn-in included).

    ``step_size``: () the step size used for every draw (the chunks' mean for an epoch);
    ``acceptance_rate``: (K,) mean Metropolis acceptance probability over
    each NUTS trajectory; ``num_leapfrog_steps``: (K,) leapfrog steps (one
    gradient each) spent on the draw; ``tree_depth``: (K,) trajectory
    doublings; ``is_divergent``: (K,) whether the trajectory diverged;
    ``logdensity``: (K,) ``logdensity_fn`` at each draw (original
    coordinates).
    """

    step_size: Array
    acceptance_rate: Array
    num_leapfrog_steps: Array
    tree_depth: Array
    is_divergent: Array
    logdensity: Array

    # Array methods, not jnp functions: inside the jitted sampler these are JAX operations, on the
    # numpy arrays an epoch hands back they are numpy operations (no JAX work on the main thread
    # while the worker's E-step runs, and none at all for the gaussian E-step).
    @property
    def mean_acceptance(self) -> Array:
        """() mean acceptance over the K draws."""
        return self.acceptance_rate.mean()

    @property
    def mean_leapfrog_steps(self) -> Array:
        """() mean leapfrog steps per draw."""
        return self.num_leapfrog_steps.mean()

    @property
    def max_leapfrog_steps(self) -> Array:
        """() most leapfrog steps of one draw."""
        return self.num_leapfrog_steps.max()

    @property
    def num_divergences(self) -> Array:
        """() number of divergent draws."""
        return self.is_divergent.sum()


@dataclass(frozen=True)
class EpochDraws:
    """Kept draws of one epoch, per term (m, q_l, p_l, c) numpy float32, the sampler's diagnostics,
    and the wall seconds of the draw call spent making compiled code (``setup_seconds``: tracing
    the model and compiling, or loading what an earlier process stored)."""

    effects: tuple[np.ndarray, ...]
    info: DrawInfo
    setup_seconds: float = 0.0


@dataclass(frozen=True)
class SamplerConfig:
    """Static settings of the E-step sampler (hashable: a static jit argument).

    ``kind``: ``"whitened"`` or ``"paper"`` (see the module docstring);
    ``num_draws``: K draws per epoch, of which the first ``burn_in`` (R) are
    dropped; ``initial_step_size``: None for the kind's default (0.1 for
    "paper", ``min(1, 2 * D**-0.25)`` for "whitened", D the number of random
    effects); ``target_acceptance`` and ``step_size_gain``: the between-epoch
    step-size rule of "whitened" (unused by "paper"); ``max_tree_depth``: most trajectory doublings (2**depth - 1 leapfrog
    steps); ``divergence_threshold``: energy error that marks a divergence.
    """

    kind: SamplerKind = "whitened"
    num_draws: int = 2
    burn_in: int = 1
    initial_step_size: float | None = None
    target_acceptance: float = 0.8
    step_size_gain: float = 0.7
    max_tree_depth: int = 10
    divergence_threshold: float = 1000.0

    def __post_init__(self) -> None:
        if self.kind not in ("whitened", "paper"):
            raise ControlError(f"SamplerConfig.kind must be 'whitened' or 'paper', not {self.kind!r}.")
        if not 0 <= self.burn_in < self.num_draws:
            raise ControlError(
                f"SamplerConfig needs 0 <= burn_in < num_draws to keep a draw; got burn_in={self.burn_in}, "
                f"num_draws={self.num_draws}."
            )
        if self.initial_step_size is not None and not self.initial_step_size > 0:
            raise ControlError(f"SamplerConfig.initial_step_size must be positive, not {self.initial_step_size}.")
        if not 0 < self.target_acceptance < 1:
            raise ControlError(f"SamplerConfig.target_acceptance must lie in (0, 1), not {self.target_acceptance}.")
        if not self.step_size_gain > 0:
            raise ControlError(f"SamplerConfig.step_size_gain must be positive, not {self.step_size_gain}.")
        if self.max_tree_depth < 1:
            raise ControlError(f"SamplerConfig.max_tree_depth must be at least 1, not {self.max_tree_depth}.")



class EffectSampler(Protocol):
    """What the engine asks of an E-step (:class:`~gmenn_formula.estep.driver.EStep`,
    :class:`~gmenn_formula.estep.gaussian.GaussianEStep`)."""

    def draw(self, F: np.ndarray, covariances: list[np.ndarray], dispersion: float, num_draws: int, burn_in: int, chains: int = 1) -> EpochDraws:
        """K = ``num_draws`` draws (the first R = ``burn_in`` dropped) given F (n, c) and per term
        covariances (c, p, p), dealt to at most ``chains`` Markov chains each dropping R, where the
        sampler runs several (:class:`~gmenn_formula.estep.gaussian.GaussianEStep` runs one)."""

    @property
    def chunk(self) -> int:
        """K of an epoch must be a multiple of this."""

    def set_weights(self, weights: np.ndarray) -> None:
        """Row weights (n,) of the following draws (0: held out)."""

    def use_sampler(self, config: SamplerConfig) -> None:
        """Draw with ``config`` from now on."""
