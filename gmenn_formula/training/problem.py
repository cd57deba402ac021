"""The EM problem: everything the engine needs from a Design, read once.

:class:`EMProblem` is the only code of the engine that reads a
:class:`~gmenn_formula.design.Design`: torch arrays of the fitting rows on the
device, the E-step's numpy arrays, the family, the shapes of the random effects
and which covariances are full. Everything downstream takes the problem.

Shapes: n fitting rows, c outputs, per term l: q_l levels, p_l coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gmenn_formula.design import Design
from gmenn_formula.distributed.group import single_shard, sum_tensors
from gmenn_formula.errors import ModelSpecificationError
from gmenn_formula.estep.arrays import TermArrays
from gmenn_formula.families import Family
from gmenn_formula.mstep.networks import NetworkOptions
from gmenn_formula.mstep.step import Rows


@dataclass(frozen=True)
class EMProblem:
    """A fit's data and structure.

    ``rows`` all n fitting rows (torch, on ``device``); ``terms`` the E-step's per-term
    codes and slopes (numpy); ``y`` (n,) and ``trials`` (n,) float32 for the E-step
    (class codes int32 for categorical); ``shapes[l]`` (q_l, p_l, c); ``correlated[l]``
    whether term l's covariance is full; ``slope_second_moments[l]`` (p_l,) mean Z^2 of
    the term's columns; ``networks`` the options of each ``nn()`` term and
    ``network_inputs`` its number of inputs; ``fixed_names`` the k linear fixed effects.
    ``data_parallel``: these are one process's shard of the rows of a data-parallel fit
    (:mod:`gmenn_formula.distributed`): ``rows`` sum over every shard, the E-step shards its
    rows over the processes, and :attr:`total_rows` counts every shard's rows.
    """

    family: Family
    num_outputs: int
    rows: Rows
    terms: tuple[TermArrays, ...]
    y: np.ndarray
    trials: np.ndarray
    shapes: tuple[tuple[int, int, int], ...]
    correlated: tuple[bool, ...]
    slope_second_moments: tuple[np.ndarray, ...]
    networks: tuple[NetworkOptions, ...]
    network_inputs: tuple[int, ...]
    fixed_names: tuple[str, ...]
    device: torch.device
    data_parallel: bool = False

    @classmethod
    def from_design(cls, design: Design, device: torch.device, data_parallel: bool = False) -> EMProblem:
        """Read ``design`` (response required, at least one random-effect term); ``data_parallel``:
        it holds this process's shard of a data-parallel fit (every process must call this)."""
        if not design.random:
            raise ModelSpecificationError(
                f"The formula {design.spec.formula} has no random-effect term; add one such as (1 | group). "
                "(A model without random effects is a plain network or GLM: fit it with torch or statsmodels.)"
            )
        if design.response is None:
            raise ModelSpecificationError("The data has no response column; a fit needs the response of the formula.")
        family, c = design.family, design.spec.num_outputs
        response = design.response

        def tensor(array: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.tensor(array, dtype=dtype, device=device)

        rows = Rows(
            X_networks=tuple(tensor(X) for X in design.X_networks),
            X_fixed=tensor(design.X_fixed),
            offset=tensor(design.offset),
            y=tensor(response.y, torch.long if family.y_dtype == np.int64 else torch.float32),
            trials=tensor(response.trials),
            codes=tuple(tensor(r.codes, torch.long) for r in design.random),
            Z=tuple(tensor(r.Z) for r in design.random),
            over_shards=sum_tensors if data_parallel else single_shard,
        )
        return cls(
            family=family,
            num_outputs=c,
            rows=rows,
            terms=tuple(TermArrays(r.codes.astype(np.int32), r.Z.astype(np.float32), r.num_levels) for r in design.random),
            y=response.y.astype(np.int32 if family.y_dtype == np.int64 else np.float32),
            trials=response.trials.astype(np.float32),
            shapes=tuple((r.num_levels, len(r.term_names), c) for r in design.random),
            correlated=tuple(r.correlated for r in design.random),
            slope_second_moments=tuple(np.maximum((r.Z**2).mean(axis=0), 1e-8) for r in design.random),
            networks=tuple(NetworkOptions.from_term(net.term) for net in design.spec.networks),
            network_inputs=tuple(X.shape[1] for X in design.X_networks),
            fixed_names=design.fixed_names,
            device=device,
            data_parallel=data_parallel,
        )

    @property
    def num_rows(self) -> int:
        """This process's rows (all rows unless ``data_parallel``)."""
        return len(self.rows)

    @property
    def total_rows(self) -> int:
        """Every shard's rows (:attr:`num_rows` unless ``data_parallel``)."""
        return self.rows.num_total

    @property
    def has_networks(self) -> bool:
        return bool(self.networks)

    @property
    def num_levels(self) -> list[int]:
        return [q for q, _, _ in self.shapes]

    def initial_covariances(self, scale: float) -> list[np.ndarray]:
        """Per term (c, p, p): diagonal, ``scale / (L + 1)`` for an intercept, divided by mean Z^2 for slopes."""
        share = scale / (len(self.shapes) + 1)
        return [np.tile(np.diag(share / second), (self.num_outputs, 1, 1)) for second in self.slope_second_moments]
