"""The E-step's two functions that take the model's log density, for one model structure.

:class:`ModelKernels` gives the whitening at a center (:meth:`~ModelKernels.whitening`) and a
chunk of NUTS draws (:meth:`~ModelKernels.sample`, per sampler setting). Each is traced from the
PyMC model of the structure (:func:`~gmenn_formula.estep.model.compile_structure`) the first
time a process needs it, exported with ``jax.export`` and written to the store
(:mod:`~gmenn_formula.estep.store`); a process that finds it there loads it instead, so a fit of
a structure seen before imports neither PyMC nor blackjax and traces nothing (a cold fit of
cbpp: 8-9 s before, 4.6 s with its structure stored; see docs/engine.md). Either way the function runs as the
exported StableHLO, compiled by XLA once per process (or loaded from JAX's persistent cache), so a
stored and a freshly traced function give the same draws. Its inputs and outputs are pinned to the
default device: JAX lowers a call whose inputs mix placed (another call's outputs) and unplaced
arrays to a module with other sharding annotations, and the epochs after the first compiled the
sampler a second time (a first-ever cbpp process 9.4-10.7 s, 8.0-8.7 s pinned; a cold one with
the structure cached 3.1-3.3 s, 2.9 s pinned).

A process keeps the functions of its last :data:`COMPILED_STRUCTURES` structures
(:func:`model_kernels`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial

import jax
from jax import Array, export

from gmenn_formula.estep import sampler, store
from gmenn_formula.estep.arrays import DrawInfo, SamplerConfig
from gmenn_formula.estep.inputs import ModelData, ModelParams, Structure
from gmenn_formula.estep.precondition import Position, Whitening, term_information, whitening_from_information
from gmenn_formula.estep.runtime import SETUP_CLOCK, configure_jax, default_device
from gmenn_formula.families import Family

COMPILED_STRUCTURES = 8
"""Structures whose functions a process keeps (the most recently used)."""


@partial(jax.jit, static_argnames=("family", "eta_fn"))
def whitening_at(center, params: ModelParams, data: ModelData, precisions, family: Family, eta_fn) -> Whitening:
    """The whitening at ``center`` (per term (q_l, d_l)): the weighted rows' information at the linear
    predictor ``eta_fn`` gives there (:func:`~gmenn_formula.estep.precondition.term_information`),
    plus the prior ``precisions``."""
    shapes = tuple((B.shape[0], Z.shape[1], B.shape[1] // Z.shape[1]) for B, Z in zip(center, data.Z, strict=True))
    eta = eta_fn(center, params, data)
    information = term_information(family, eta, data.trials, params.dispersion, data.weights, data.codes, data.Z, shapes)
    return whitening_from_information(center, information, precisions)


class ModelKernels:
    """The whitening and the sampler of one :class:`~gmenn_formula.estep.inputs.Structure`."""

    def __init__(self, structure: Structure) -> None:
        configure_jax()
        self.structure = structure
        self._functions: dict[str, Callable] = {}

    def whitening(self, center: Position, params: ModelParams, data: ModelData, precisions: tuple[Array, ...]) -> Whitening:
        """The whitening at ``center`` (per term (q_l, d_l)) given the epoch's ``params``, the
        ``data`` and per term the prior ``precisions`` (c, p_l, p_l)."""

        def trace(model) -> export.Exported:
            return export.export(whitening_at)(center, params, data, precisions, self.structure.family, model.eta)

        return self._function("whitening", "", trace)(center, params, data, precisions)

    def sample(
        self, key: Array, state: sampler.SamplerState, config: SamplerConfig, whitening: Whitening | None, params: ModelParams, data: ModelData
    ) -> tuple[sampler.SamplerState, Position, DrawInfo]:
        """One chunk of ``config.num_draws`` draws (:func:`~gmenn_formula.estep.sampler.sample_chunk`)."""

        def trace(model) -> export.Exported:
            return export.export(sampler.sample_chunk)(key, state, model.logdensity, config, whitening, (params, data))

        return self._function("sample_chunk", repr(config), trace)(key, state, whitening, (params, data))

    def _function(self, name: str, setting: str, trace: Callable) -> Callable:
        """The jitted exported function ``name`` for ``setting``: kept, stored, or traced from the
        model (the loading or tracing counts as setup: :data:`~gmenn_formula.estep.runtime.SETUP_CLOCK`)."""
        label = f"{name}|{setting}"
        if label not in self._functions:
            with SETUP_CLOCK.timing():
                path = store.entry_path(name, f"{self.structure.describe()}|{setting}")
                exported = store.load(path)
                if exported is None:
                    from gmenn_formula.estep.model import compile_structure  # PyMC: only to trace

                    exported = trace(compile_structure(self.structure))
                    store.save(path, exported)
                device = jax.sharding.SingleDeviceSharding(default_device())
                self._functions[label] = jax.jit(exported.call, in_shardings=device, out_shardings=device)
        return self._functions[label]

@lru_cache(maxsize=COMPILED_STRUCTURES)
def model_kernels(structure: Structure) -> ModelKernels:
    """The process's :class:`ModelKernels` of ``structure`` (one per structure)."""
    return ModelKernels(structure)
