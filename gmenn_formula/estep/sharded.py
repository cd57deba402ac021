"""The E-step's functions for a data-parallel fit: rows sharded over processes, effects replicated.

Every process holds its own rows (the same count in each: shards are padded with weight-0 rows,
:func:`padded`)
and runs the same compiled functions on a mesh of one device per process (:func:`row_mesh`). The
log density is the effects' prior, which every process computes alike from the replicated
effects, plus the sum over processes (``psum``) of each shard's weighted log-likelihood; its
value and gradient, and so every NUTS decision, are the same in all processes, which draw one
chain from the same key. The whitening's per-level information (sums over rows) is summed over
processes the same way before the prior is added and the blocks factorised. Per leapfrog step a
process sends and receives one scalar and the gradient, the size of the effects.

:class:`ShardedKernels` has the interface of :class:`~gmenn_formula.estep.kernels.ModelKernels`.
Its functions are traced from the PyMC model in each process (the persistent compilation cache
still serves XLA's compilations); they take global arrays (:meth:`ShardedKernels.rows` for the
rows' arrays, :meth:`ShardedKernels.replicated` for everything else).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import numpy as np
from jax import Array
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gmenn_formula.estep import sampler
from gmenn_formula.estep.arrays import DrawInfo, SamplerConfig
from gmenn_formula.estep.inputs import ModelData, ModelParams, Structure
from gmenn_formula.estep.precondition import Position, Whitening, term_information, whitening_from_information
from gmenn_formula.estep.runtime import configure_jax

ROWS = "rows"
"""The mesh axis the rows are sharded along."""
_PARAMS = ModelParams(F=PartitionSpec(ROWS), chol_inverses=PartitionSpec(), dispersion=PartitionSpec())
_DATA = ModelData(*(PartitionSpec(ROWS),) * len(ModelData._fields))


def padded(array: np.ndarray, size: int, fill: float = 0) -> np.ndarray:
    """``array`` (n, ...) with rows of ``fill`` appended up to ``size`` rows: shards of unequal
    size become equal ones, the added rows given weight 0 (they then add nothing to the likelihood
    nor to the whitening's information)."""
    array = np.asarray(array)
    extra = np.full((size - len(array), *array.shape[1:]), fill, dtype=array.dtype)
    return np.concatenate([array, extra])


def row_mesh() -> Mesh:
    """A mesh of one device per process (its first local one), along :data:`ROWS`."""
    configure_jax()
    devices = [next(d for d in jax.devices() if d.process_index == p) for p in range(jax.process_count())]
    return Mesh(np.array(devices), (ROWS,))


class ShardedKernels:
    """The whitening and the sampler of one :class:`~gmenn_formula.estep.inputs.Structure` (the
    shapes of one process's shard) with the rows sharded over ``mesh``."""

    def __init__(self, structure: Structure, mesh: Mesh) -> None:
        from gmenn_formula.estep.model import compile_structure  # PyMC: traced in every process

        self.structure, self.mesh = structure, mesh
        model = compile_structure(structure)

        def shard_logdensity(position: Position, params: ModelParams, data: ModelData) -> Array:
            return jax.lax.psum(model.likelihood(position, params, data), ROWS) + model.prior(position, params, data)

        def shard_information(center: Position, params: ModelParams, data: ModelData) -> tuple[Array, ...]:
            eta = model.eta(center, params, data)
            local = term_information(structure.family, eta, data.trials, params.dispersion, data.weights, data.codes, data.Z, structure.shapes)
            return jax.tree.map(lambda x: jax.lax.psum(x, ROWS), local)

        replicated = PartitionSpec()
        self.logdensity = jax.shard_map(shard_logdensity, mesh=mesh, in_specs=(replicated, _PARAMS, _DATA), out_specs=replicated)
        self._information = jax.shard_map(shard_information, mesh=mesh, in_specs=(replicated, _PARAMS, _DATA), out_specs=replicated)

    def rows(self, local: np.ndarray | Array) -> Array:
        """The global array whose shard in this process is ``local`` (n_p, ...), sharded along the rows."""
        return jax.make_array_from_process_local_data(NamedSharding(self.mesh, PartitionSpec(ROWS)), np.asarray(local))

    def replicated(self, value: Any) -> Any:
        """``value`` (a pytree of arrays, the same in every process) as global replicated arrays."""
        sharding = NamedSharding(self.mesh, PartitionSpec())
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), value)

    @partial(jax.jit, static_argnums=0)
    def whitening(self, center: Position, params: ModelParams, data: ModelData, precisions: tuple[Array, ...]) -> Whitening:
        """The whitening at ``center`` (per term (q_l, d_l)): every process's rows' Fisher
        information, summed over processes, plus the prior ``precisions`` (c, p_l, p_l)."""
        return whitening_from_information(center, self._information(center, params, data), precisions)

    def sample(
        self, key: Array, state: sampler.SamplerState, config: SamplerConfig, whitening: Whitening | None, params: ModelParams, data: ModelData
    ) -> tuple[sampler.SamplerState, Position, DrawInfo]:
        """One chunk of ``config.num_draws`` draws (:func:`~gmenn_formula.estep.sampler.sample_chunk`), the same in every process."""
        return sampler.sample_chunk(key, state, self.logdensity, config, whitening, (params, data))
