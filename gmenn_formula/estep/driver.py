"""The E-step of one fit: the compiled model, the sampler state, and the whitening.

:class:`EStep` is the only stateful piece of the E-step: it keeps the model's compiled
functions (:mod:`~gmenn_formula.estep.kernels`), the data on the device, the sampler state (warm start) and the
center of the whitening (the mean of the previous epoch's draws), and turns
(F, covariances, dispersion) into draws. Everything it calls is a pure function.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gmenn_formula.distributed.group import largest_over_processes
from gmenn_formula.errors import ControlError
from gmenn_formula.estep import sampler
from gmenn_formula.estep.arrays import DrawInfo, EpochDraws, TermArrays
from gmenn_formula.estep.inputs import ModelParams, Structure, model_data
from gmenn_formula.estep.kernels import model_kernels
from gmenn_formula.estep.precondition import DENSE_OUTPUTS, Whitening, dense_whitening_bytes
from gmenn_formula.estep.runtime import SETUP_CLOCK
from gmenn_formula.estep.sharded import ShardedKernels, padded
from gmenn_formula.families import Family
from gmenn_formula.threads import side_by_side

VARIANCE_FLOOR = 1e-8
"""Smallest prior variance passed to the sampler (relative to 1): keeps Cholesky factors finite at a boundary fit."""


def _approximate_posterior_draw(rng: np.random.Generator, whitening: Whitening, place: Callable) -> tuple[jax.Array, ...]:
    """center + L^{-T} z with z ~ N(0, I): one draw of the whitening's Gaussian, per term (q_l, d_l),
    made on the host and placed by ``place`` (in JAX, its normal sampler and the map would each
    compile for this one draw per fit)."""
    host = jax.device_get(whitening)
    z = tuple(rng.standard_normal(c.shape).astype(c.dtype) for c in host.center)
    return place(host.unwhiten(z))


def _to_device(array: Any) -> jax.Array:
    """One numpy or JAX array on the default device, its dtype JAX's canonical one (float32 / int32
    without x64), with no compiled conversion (``jnp.asarray`` compiles one per shape and dtype)."""
    if isinstance(array, jax.Array):
        return array
    array = np.asarray(array)
    return jax.device_put(array.astype(jax.dtypes.canonicalize_dtype(array.dtype), copy=False))


def _on_device(value: Any) -> Any:
    """``value`` (a pytree of arrays) as JAX arrays on the default device."""
    return jax.tree.map(_to_device, value)


def available_memory() -> int:
    """Bytes of physical memory free now (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        return 0


def check_whitening_fits(structure: Structure) -> None:
    """ControlError where the dense whitening of ``structure`` would hold more than the free memory
    (many classes with several coefficients per term: n x (p c)^2 floats), naming the sizes and what to do."""
    needed, free = dense_whitening_bytes(structure.family, structure.n, structure.shapes), available_memory()
    if free and needed > free:
        q, p, c = max(structure.shapes, key=lambda shape: shape[1])
        raise ControlError(
            f"The whitened E-step would hold {needed / 2**20:,.0f} MiB at once ({structure.n:,} rows x per-level blocks of "
            f"{p} coefficients x {c} classes = {p * c} dimensions, squared) and {free / 2**20:,.0f} MiB are free. "
            f"Use sampler='paper' (no whitening), fewer rows, or one coefficient per term: with more than "
            f"{DENSE_OUTPUTS} classes those are whitened by a diagonal plus rank one."
        )


def _floored(covariances: np.ndarray) -> np.ndarray:
    """(c, p, p) covariances plus VARIANCE_FLOOR on the diagonal."""
    return covariances + VARIANCE_FLOOR * np.eye(covariances.shape[-1])


class EStep:
    """Draws of the random effects given the fixed part, for one set of rows.

    ``terms``: per random-effect term codes (n,), Z (n, p), q; ``y``, ``trials`` (n,);
    ``weights`` (n,): 1 for the rows the draws condition on, 0 for held-out rows (see
    :meth:`set_weights`); ``num_outputs`` c. The sampler is compiled once for
    ``config.num_draws`` draws (a *chunk*; ``config.burn_in`` must be
    0): :meth:`draw` runs as many chunks as an epoch's K needs and drops the R burn-in
    draws of each chain itself, so the K = 2 epochs of training and the K = 4 epochs of the final
    phase share one compilation (~2-3 s of XLA on 2 CPU cores for the base scenario).
    The rows are padded inside with weight-0 rows up to :func:`row_bucket` of their number, so
    that fits whose row counts differ slightly share the compiled functions.
    ``mesh``: the rows are sharded over the processes of a data-parallel fit
    (:mod:`~gmenn_formula.estep.sharded`): the row arrays given and ``F`` are this process's
    shard (padded inside to the bucket of the largest shard), and every process draws the
    same chain; None: one process holds every row.
    :meth:`draw`'s ``chains``: how many chains at most an epoch's chunks are dealt to
    (:func:`chains_for`), each with its own state and step size, a chain beyond the first starting
    as a copy of the first's state when first used; with every row in this process they run side
    by side, one thread each (XLA runs one call of these sizes on about one core: an epoch of the
    base scenario took 0.115 s on one chain and 0.059 s on two, 2 cores), in a data-parallel fit
    one after the other (the sampler's all-reduces keep one order), so the draws depend on
    ``chains``, not on the machine.
    """

    def __init__(
        self,
        family: Family,
        terms: tuple[TermArrays, ...],
        y: np.ndarray,
        trials: np.ndarray,
        weights: np.ndarray,
        num_outputs: int,
        config: sampler.SamplerConfig,
        seed: int,
        mesh: Mesh | None = None,
    ) -> None:
        if config.burn_in:
            raise ControlError("EStep drops the burn-in draws itself: pass a SamplerConfig with burn_in=0.")
        self.family = family
        self.config = config
        self.num_rows = len(y)
        # weight-0 rows up to the bucket (of the largest shard, so that every shard has the same size)
        self.padded_rows = size = row_bucket(largest_over_processes(len(y), data_parallel=mesh is not None))
        if size != self.num_rows:
            # an intercept's Z is padded with 1 so that it stays one (the rows weigh 0 either way)
            terms = tuple(TermArrays(padded(t.codes, size), padded(t.Z, size, float(t.is_intercept)), t.num_levels) for t in terms)
            y, trials, weights = padded(y, size, y[0]), padded(trials, size, 1), padded(weights, size)
        structure = Structure.of(family, terms, y, trials, num_outputs)
        if config.kind == "whitened":
            check_whitening_fits(structure)
        if mesh is None:
            self.kernels = model_kernels(structure)
            self.rows = self.replicated = _on_device
        else:
            self.kernels = ShardedKernels(structure, mesh)
            self.rows, self.replicated = self.kernels.rows, self.kernels.replicated
        self.data = jax.tree.map(self.rows, model_data(terms, y, trials, weights))
        self.shapes = structure.shapes
        start = self.replicated(tuple(np.zeros((q, p * c), np.float32) for q, p, c in self.shapes))
        self.side_by_side = mesh is None
        self.states = [self.replicated(sampler.init(start, config))]
        self.center = start
        # Until the first draw. The first chain then starts from a draw of the whitening's Gaussian
        # (the Laplace approximation at the center), not from 0: started at 0, the draws of a 10^6-row,
        # 3 x 10^5-level binomial GLMM barely moved (usable step 0.085) and their second moments
        # collapsed the variances.
        self.cold = True
        self.key = jax.random.PRNGKey(seed)
        self.rng = np.random.default_rng(seed)

    def _padded(self, array: np.ndarray) -> np.ndarray:
        """A per-row ``array`` (n, ...) of this process's rows with zero rows up to the padded shard size."""
        return array if self.padded_rows == self.num_rows else padded(array, self.padded_rows)

    @property
    def chunk(self) -> int:
        """The compiled number of draws: an epoch's K must be a multiple of it."""
        return self.config.num_draws

    def use_sampler(self, config: sampler.SamplerConfig) -> None:
        """Draw with ``config`` from now on (same chunk, burn_in 0; e.g. another tree depth), the
        chain and its step size carrying on. A new configuration compiles the sampler once more."""
        if config.num_draws != self.config.num_draws or config.burn_in:
            raise ControlError(f"A new sampler must keep chunks of {self.config.num_draws} draws and burn_in=0.")
        self.config = config

    def set_weights(self, weights: np.ndarray) -> None:
        """Row weights (n,) of the following draws, e.g. all ones for a network fit's final phase;
        the chain, its step size and the compiled functions carry on."""
        self.data = self.data._replace(weights=self.rows(self._padded(np.asarray(weights, np.float32))))

    def draw(self, F: np.ndarray, covariances: list[np.ndarray], dispersion: float, num_draws: int, burn_in: int, chains: int = 1) -> EpochDraws:
        """One epoch of ``num_draws`` (K) draws given F (n, c) and per term covariances (c, p, p),
        dealt to m <= ``chains`` chains (:func:`chains_for`), the first ``burn_in`` (R) of each
        dropped: K - m R kept. K must be a multiple of the compiled chunk."""
        started = time.perf_counter()
        chunk = self.config.num_draws
        if num_draws % chunk or not 0 <= burn_in < num_draws:
            raise ControlError(f"An E-step compiled for chunks of {chunk} draws cannot make K={num_draws}, R={burn_in}.")
        floored = [_floored(S) for S in covariances]
        params = ModelParams(
            F=self.rows(self._padded(np.asarray(F, np.float32))),
            chol_inverses=self.replicated(tuple(np.linalg.inv(np.linalg.cholesky(S)).astype(np.float32) for S in floored)),
            dispersion=self.replicated(np.float32(dispersion)),
        )
        whitening = None
        if self.config.kind == "whitened":
            precisions = self.replicated(tuple(np.linalg.inv(S).astype(np.float32) for S in floored))
            whitening = self.kernels.whitening(self.center, params, self.data, precisions)
        if self.cold and whitening is not None:
            self.states[0] = self.states[0]._replace(position=_approximate_posterior_draw(self.rng, whitening, self.replicated))
        self.cold = False
        chains = chains_for(num_draws // chunk, chunk, burn_in, chains)
        self.states += [self.states[0]] * (chains - len(self.states))  # a new chain starts where the first is
        self.key, *keys = jax.random.split(self.key, num_draws // chunk + 1)
        per_chain = len(keys) // chains

        def run_chain(c: int) -> tuple[tuple, tuple]:
            state, chunks, infos = self.states[c], [], []
            for key in keys[c * per_chain : (c + 1) * per_chain]:
                state, draws, info = self.kernels.sample(self.replicated(key), state, self.config, whitening, params, self.data)
                chunks.append(draws)
                infos.append(info)
            self.states[c] = state
            return tuple(chunks), tuple(infos)

        runs = side_by_side([partial(run_chain, c) for c in range(chains)], "gmenn-chain") if self.side_by_side else [run_chain(c) for c in range(chains)]
        kept, self.center, info = _join_chains(tuple(runs), burn_in)
        effects = tuple(np.array(d).reshape(d.shape[0], q, p, c) for d, (q, p, c) in zip(kept, self.shapes))
        return EpochDraws(effects=effects, info=jax.device_get(info), setup_seconds=SETUP_CLOCK.seconds(started, time.perf_counter()))


ROW_BUCKET_BITS = 6
"""Row buckets per doubling of the rows: 2^6, so padding adds at most 1/64 of the rows (1.6%) to every
gradient, and two fits whose rows differ by a few (cross-validation folds) share one compiled
sampler with probability ~1 - difference / bucket width (width 128 at 10,000-16,000 rows), where a
new row count costs a compilation (~1.3 s for cbpp, ~3 s for the base scenario's sampler)."""


def row_bucket(rows: int) -> int:
    """``rows`` rounded up to a multiple of 2^(floor(log2 rows) - ROW_BUCKET_BITS); up to 2^ROW_BUCKET_BITS rows, ``rows``."""
    if rows <= 2**ROW_BUCKET_BITS:
        return rows
    width = 1 << (rows.bit_length() - 1 - ROW_BUCKET_BITS)
    return -(-rows // width) * width


def chains_for(num_chunks: int, chunk: int, burn_in: int, most: int) -> int:
    """How many chains an epoch of ``num_chunks`` chunks of ``chunk`` draws is dealt to: the most,
    up to ``most``, that share the chunks evenly and each keep a draw after dropping ``burn_in``."""
    return max(c for c in range(1, max(most, 1) + 1) if num_chunks % c == 0 and num_chunks // c * chunk > burn_in)


@partial(jax.jit, static_argnames="burn_in")
def _join_chains(runs: tuple, burn_in: int) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...], DrawInfo]:
    """An epoch's chains as one, in one compiled call. ``runs``: per chain its chunks (per term
    (k, q_l, d_l)) and their DrawInfos. Per term the kept draws (each chain's after its first
    ``burn_in``, chain after chain) and their mean (the next center); one DrawInfo (per-draw
    arrays joined chain after chain, the chunks' mean step size)."""
    by_term = zip(*(tuple(zip(*chunks)) for chunks, _ in runs))  # per term: per chain its chunks
    kept = tuple(jnp.concatenate([jnp.concatenate(chunks)[burn_in:] for chunks in term]) for term in by_term)
    infos = [info for _, chain_infos in runs for info in chain_infos]
    step_size = jnp.mean(jnp.stack([info.step_size for info in infos]))
    joined = [jnp.concatenate(arrays) for arrays in zip(*(info[1:] for info in infos))]
    return kept, tuple(d.mean(axis=0) for d in kept), DrawInfo(step_size, *joined)
