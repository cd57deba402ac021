"""E-step sampler: a chunk of K NUTS draws of the random effects, one compiled call.

A position is a tuple with one (q_l, d_l) array per random-effect term
(d_l = p_l * C, layout ``p * C + c``). Pure functions over NamedTuples, as in
blackjax: :func:`init` makes a :class:`SamplerState`, :func:`sample_chunk`
runs one chunk of draws (an epoch runs one or more, see
:class:`~gmenn_formula.estep.driver.EStep`) and returns the new state, the kept
draws and a :class:`DrawInfo`.

Two kinds (``SamplerConfig.kind``):

- ``"whitened"`` (default): NUTS with identity mass on z, where
  B = center + L^{-T} z per level (:mod:`~gmenn_formula.estep.precondition`: per-level Cholesky, or diagonal-plus-rank-one for many classes),
  so the target is close to N(0, I). Step size: to start, the leapfrog
  scaling of a standard normal in D dimensions, ``min(1, 2 * D**-0.25)``;
  after each epoch ``log step += step_size_gain * (mean acceptance -
  target_acceptance)`` (gain 0.7, target 0.8). The step size is fixed within
  an epoch, so each epoch is a proper Markov chain. Near the target the
  acceptance falls by about 0.8 per unit of log step, so a gain of 0.7
  contracts an error by about half per epoch while damping the noise of a
  K=2 epoch's acceptance; an epoch with acceptance 0 shrinks the step by
  0.57, one with acceptance 1 grows it by 1.15. Dual averaging (Hoffman & Gelman 2014) with one update per
  epoch was tried first: its effective gain of 2-3 per update made the step
  size swing 4x between epochs on the benchmark below.
- ``"paper"``: the paper's sampler (section 2.2): NUTS with identity mass in
  the original coordinates, step size 0.1 to start, halved after an epoch
  whose mean acceptance is below 0.001, no other adaptation.

Warm start: the state holds the last draw in the ORIGINAL coordinates, and
each epoch whitens it with the epoch's whitening, so the whitening may change
between epochs. Everything that changes between epochs (the network output
F, Sigma, the whitening, the state) is an argument of the jitted
:func:`sample_chunk`, never a closure constant: one compilation serves every
epoch as long as shapes, ``logdensity_fn`` and ``config`` stay the same.

Benchmark (``benchmarks/sampler_mixing.py``: softmax C=5; factors of 1000,
10 and 1000 levels, 20,000 rows, random F, variances 1e-4, .5, .5; 20
warm-up epochs of K=2, R=1, then a timed chain of 100 draws; ESS from arviz
over the 10,050 effects), measured on 2 CPU cores, 2026-11-25, jax 0.10.2,
with other jobs sharing the cores (load ~2; a quieter run gave 0.176 and
0.020 s per draw and the same ratios):

| | paper | whitened |
|---|---|---|
| seconds per draw | 0.223 | 0.024 |
| seconds per K=2 warm-up epoch (whitening build included) | 0.372 | 0.077 |
| ms per leapfrog step | 0.68 | 0.79 |
| step size | 0.0063 | 0.1562 |
| mean acceptance (warm-up epochs) | 0.03 | 0.78 |
| mean acceptance (100-draw chain) | 0.04 | 0.84 |
| mean / max leapfrog steps per draw | 329 / 511 | 31 / 31 |
| divergences | 0 | 0 |
| ESS(B) per s, median (p10) | 3.3 (2.2) | 82.1 (63.7) |
| ESS(B^2) per s, median (p10) | 0.9 (0.1) | 21.5 (10.8) |
| ESS(B^2) median of 100 draws | 19 | 52 |

Per effective draw the whitened sampler is ~24x cheaper for E[B] and for
E[B^2] (median; ~100x at the 10th percentile): 10x fewer gradients per draw,
at ~1.2-1.3x the cost per gradient (the per-level matmuls). Its draws are
anti-correlated for B (ESS above the number of draws) and positively
correlated for B^2 (ESS ~0.5 per draw); jittering the step size did not
change the latter.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from gmenn_formula.estep.arrays import DrawInfo, SamplerConfig, SamplerKind
from gmenn_formula.estep.precondition import Position, Whitening, whitened_logdensity
from gmenn_formula.errors import ControlError

PAPER_INITIAL_STEP_SIZE = 0.1
"""The paper's epsilon_0."""
PAPER_MIN_ACCEPTANCE = 1e-3
"""The paper halves the step size after an epoch with mean acceptance below this."""


class SamplerState(NamedTuple):
    """What one epoch hands to the next.

    ``position``: the last draw, tuple of (q_l, d_l) arrays in the ORIGINAL
    coordinates (re-whitened by the next epoch's whitening); ``step_size``:
    () float32, the step size of the next epoch (in whitened coordinates for
    "whitened"), which is all the step-size rules carry between epochs.
    """

    position: Position
    step_size: Array


def default_initial_step_size(kind: SamplerKind, dimension: int) -> float:
    """The kind's starting step size for ``dimension`` random effects.

    "paper": 0.1. "whitened": ``min(1, 2 * dimension**-0.25)``, about the
    step that gives NUTS an acceptance of 0.8 on N(0, I_D) (the usable step
    shrinks like D^{-1/4}); starting near it avoids a stuck first epoch (0.2
    on the benchmark, where the rule settles near 0.15; 0.89 on a 25-effect
    gaussian model, where it settles near 0.8).
    """
    if kind == "paper":
        return PAPER_INITIAL_STEP_SIZE
    return min(1.0, 2.0 * dimension**-0.25)


def init(position: Position, config: SamplerConfig) -> SamplerState:
    """First state: ``position`` tuple of (q_l, d_l) float32 arrays (e.g. zeros), kept as given;
    the step size a float32 numpy scalar (the caller places it; no compiled conversion)."""
    dimension = sum(B.size for B in position)
    step_size = config.initial_step_size or default_initial_step_size(config.kind, dimension)
    return SamplerState(position=position, step_size=np.asarray(step_size, dtype=np.float32))


def _next_step_size(config: SamplerConfig, step_size: Array, mean_acceptance: Array) -> Array:
    """Step size of the next epoch (see the module docstring)."""
    mean_acceptance = jnp.nan_to_num(mean_acceptance, nan=0.0)
    if config.kind == "paper":
        return jnp.where(mean_acceptance < PAPER_MIN_ACCEPTANCE, 0.5 * step_size, step_size)
    return step_size * jnp.exp(config.step_size_gain * (mean_acceptance - config.target_acceptance))


def _identity(position: Position) -> Position:
    return position


def _check_whitening(config: SamplerConfig, whitening: Whitening | None) -> None:
    if config.kind == "whitened" and whitening is None:
        raise ControlError(
            "The 'whitened' sampler needs a whitening (see precondition.whitening_from_information); "
            "use SamplerConfig(kind='paper') to sample in the original coordinates."
        )
    if config.kind == "paper" and whitening is not None:
        raise ControlError("The 'paper' sampler runs in the original coordinates: pass whitening=None.")


@partial(jax.jit, static_argnames=("logdensity_fn", "config"))
def sample_chunk(
    rng_key: Array,
    state: SamplerState,
    logdensity_fn: Callable[..., Array],
    config: SamplerConfig,
    whitening: Whitening | None = None,
    logdensity_args: tuple[Any, ...] = (),
) -> tuple[SamplerState, Position, DrawInfo]:
    """One chunk: K NUTS draws warm-started from ``state``, the first R dropped.

    ``logdensity_fn(position, *logdensity_args) -> ()``: log density of B up
    to a constant; put everything that changes between epochs (F, Sigma, ...)
    in ``logdensity_args`` (a tuple of arrays or pytrees) and pass the same
    function object every epoch, or each epoch compiles anew. ``whitening``:
    required for "whitened", None for "paper".

    Returns the new state, the kept draws as a tuple of (K - R, q_l, d_l)
    arrays in the original coordinates, and the chunk's :class:`DrawInfo`.
    """
    _check_whitening(config, whitening)
    if whitening is None:
        sampler_logdensity = logdensity_fn
        to_sampler = from_sampler = _identity
    else:
        sampler_logdensity = whitened_logdensity(logdensity_fn, whitening)
        to_sampler, from_sampler = whitening.whiten, whitening.unwhiten

    def target(x: Position) -> Array:
        return sampler_logdensity(x, *logdensity_args)

    import blackjax  # here, not at the top: importing blackjax starts JAX's backend, which must follow configure_jax

    x0 = to_sampler(state.position)
    identity_inverse_mass = jnp.ones(sum(x.size for x in x0), dtype=jnp.float32)
    kernel = blackjax.nuts.build_kernel(divergence_threshold=config.divergence_threshold)

    def one_draw(hmc_state: Any, key: Array) -> tuple[Any, tuple[Any, ...]]:
        hmc_state, info = kernel(
            key,
            hmc_state,
            target,
            state.step_size,
            identity_inverse_mass,
            max_num_doublings=config.max_tree_depth,
        )
        trace = (
            hmc_state.position,
            hmc_state.logdensity,
            info.acceptance_rate,
            info.num_integration_steps,
            info.num_trajectory_expansions,
            info.is_divergent,
        )
        return hmc_state, trace

    keys = jax.random.split(rng_key, config.num_draws)
    final, (xs, logdensity, acceptance, steps, depth, divergent) = jax.lax.scan(
        one_draw, blackjax.nuts.init(x0, target), keys
    )
    draws = jax.vmap(from_sampler)(tuple(x[config.burn_in :] for x in xs))
    info = DrawInfo(
        step_size=state.step_size,
        acceptance_rate=acceptance,
        num_leapfrog_steps=steps,
        tree_depth=depth,
        is_divergent=divergent,
        logdensity=logdensity,
    )
    new_state = SamplerState(
        position=from_sampler(final.position),
        step_size=_next_step_size(config, state.step_size, info.mean_acceptance),
    )
    return new_state, draws, info
