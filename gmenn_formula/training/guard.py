"""What a fit does when its numbers leave any sensible range.

- The network's M-step (:class:`RecoveringTrainer`): :func:`~gmenn_formula.mstep.step.train_epoch`
  checks the loss at every minibatch step and the parameters after the epoch. When either is
  not finite, the network and Adam's state go back to where the epoch started, the learning
  rate is halved and the epoch is trained again, at most MAX_HALVINGS times, each noted in the
  fit's messages; after that, or when the network's output is not finite even at the restored
  weights, ConvergenceError says which.
- The variance components (:class:`VarianceGuard`): after every epoch, each covariance and the
  residual variance must be finite and at most VARIANCE_LIMIT times the response's variance
  (gaussian; 1 on the link scale of the other families). Beyond that, the fit has diverged
  (learning_rate=10 once returned variances of 1e15 as a result): ConvergenceError.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from gmenn_formula.distributed.group import largest_over_processes
from gmenn_formula.errors import ConvergenceError
from gmenn_formula.families import Family
from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.mstep.step import DrawOffsets, Rows, train_epoch
from gmenn_formula.results.state import EpochRecord
from gmenn_formula.training.variance import predict_fixed

MAX_HALVINGS = 5
VARIANCE_LIMIT = 1e8
"""Largest variance component, relative to the response's variance, taken as a result."""
SHOWN_ROWS = 5

ADVICE = "Lower learning_rate=, standardise the nn() inputs, or check the network."


def check_output(model: FixedPart, rows: Rows, when: str) -> None:
    """ConvergenceError naming the rows (0-based positions among ``rows``) where the fixed
    part's output (n, c) is NaN or infinite; ``when`` says at which weights."""
    bad = ~torch.isfinite(predict_fixed(model, rows)).all(dim=1)
    if not bool(bad.any()):
        return
    positions = torch.nonzero(bad).flatten().tolist()
    shown = ", ".join(str(i) for i in positions[:SHOWN_ROWS]) + (", ..." if len(positions) > SHOWN_ROWS else "")
    raise ConvergenceError(
        f"The network's output is NaN/inf for rows {shown} ({len(positions)} of {len(rows)} fitting rows, 0-based) {when}. "
        "Check the network's forward pass and its nn() inputs (huge values?)."
    )


@dataclass
class RecoveringTrainer:
    """Adam on the fixed part's parameters, an epoch at a time, with the recovery of the module
    docstring. ``rows`` the training rows; ``check_rows`` those whose output must be finite at
    restored weights; ``messages`` receives a note per halving. ``data_parallel``: ``rows`` are
    this process's shard; the model trains wrapped in torch's DistributedDataParallel (gradients
    averaged over the processes at every step, which therefore all take the same number of steps:
    those of the largest shard), so its weights stay the same in every process."""

    model: FixedPart
    family: Family
    rows: Rows
    check_rows: Rows
    learning_rate: float
    batch_size: int
    generator: torch.Generator
    messages: list[str]
    data_parallel: bool = False
    halvings: int = 0
    optimizer: torch.optim.Optimizer = field(init=False)
    network: torch.nn.Module = field(init=False)
    steps: int = field(init=False)

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate)
        self.network = DistributedDataParallel(self.model) if self.data_parallel else self.model
        self.steps = largest_over_processes(math.ceil(len(self.rows) / self.batch_size), self.data_parallel)

    def epoch(self, epoch: int, offsets: DrawOffsets, dispersion: float) -> float:
        """Train epoch ``epoch`` (1-based) on the draws' ``offsets``; the mean loss per row."""
        weights, state = copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict())
        while True:
            loss = train_epoch(self.network, self.optimizer, self.family, self.rows, offsets, dispersion, self.batch_size, self.generator, self.steps)
            if math.isfinite(loss):
                return loss
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(copy.deepcopy(state))  # loading may alias the tensors it is given
            check_output(self.model, self.check_rows, f"at the weights of the start of epoch {epoch}, restored after the loss diverged")
            rate = self.optimizer.param_groups[0]["lr"]
            if self.halvings == MAX_HALVINGS:
                raise ConvergenceError(
                    f"The network's loss diverged at learning_rate={rate:g} in epoch {epoch}, after {MAX_HALVINGS} halvings "
                    f"from learning_rate={self.learning_rate:g}. {ADVICE}"
                )
            self.halvings += 1
            for group in self.optimizer.param_groups:
                group["lr"] = rate / 2
            state = copy.deepcopy(self.optimizer.state_dict())
            self.messages.append(
                f"The network's loss diverged at learning_rate={rate:g} in epoch {epoch}; the epoch was trained again from "
                f"its start with learning_rate={rate / 2:g}."
            )


@dataclass(frozen=True)
class VarianceGuard:
    """ConvergenceError when a variance component diverges (see the module docstring).
    ``terms`` name the random-effect terms; ``scale`` is the response's variance (1 off gaussian)."""

    terms: tuple[str, ...]
    scale: float

    @classmethod
    def of(cls, terms: tuple[str, ...], family: Family, y: np.ndarray) -> VarianceGuard:
        """The guard for response ``y`` (n,) of ``family``."""
        return cls(terms, max(float(np.var(y)), 1e-12) if family.has_dispersion else 1.0)

    def __call__(self, record: EpochRecord) -> None:
        self.check(list(record.covariances), record.dispersion, f"epoch {record.epoch} ({record.phase} phase)")

    def check(self, covariances: list[np.ndarray], dispersion: float, where: str) -> None:
        """Check per-term covariances (c, p, p) and the residual variance ``dispersion`` at ``where``."""
        named = [(f"the random effects of {term}", S) for term, S in zip(self.terms, covariances)]
        for what, values in [*named, ("the residual variance", np.asarray(dispersion))]:
            largest = float(np.max(np.abs(values), initial=0.0)) if np.isfinite(values).all() else math.inf
            if largest > VARIANCE_LIMIT * self.scale:
                size = "is not finite" if not np.isfinite(values).all() else f"reached {largest:.3g}"
                raise ConvergenceError(
                    f"The variance of {what} {size} at {where}, more than {VARIANCE_LIMIT:.0e} times the response's "
                    f"variance ({self.scale:.3g}): the fit diverged. {ADVICE}"
                )
