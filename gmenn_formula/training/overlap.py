"""The next epoch's E-step on a daemon thread, beside this epoch's M-step (``overlap_estep``).

While the network trains on epoch t's draws, the worker computes F_t from a copy of
the network as it was at the start of epoch t, draws epoch t + 1's effects given F_t
and the covariances set from epoch t's draws, sets the covariances from them (the
parameter-expanded M-step) and computes their loss offsets; the draws are thus one
epoch old in F when a minibatch uses them. JAX and torch release the GIL while they
compute, so the worker and the minibatch steps share the machine. In the Newton blocks
(:mod:`~gmenn_formula.training.phases`) the parameters are fixed, so the worker draws the
next epoch exactly as the main thread would. One E-step is in flight at a time, so the
sampler's calls keep their order. Measurements: docs/engine.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

from gmenn_formula.estep.arrays import EffectSampler, EpochDraws
from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.mstep.step import DrawOffsets, Rows
from gmenn_formula.training.problem import EMProblem
from gmenn_formula.training.variance import predict_fixed, timed_draw, variance_update
from gmenn_formula.training.watchdog import CANCEL_GRACE_SECONDS, DaemonCall

T = TypeVar("T")


@dataclass(frozen=True)
class EpochInputs:
    """What a training epoch needs from its E-step: the ``draws``, their loss ``offsets``, the
    (expanded) ``effects`` and the ``covariances`` and ``dispersion`` set from them, and the
    sampler's wall ``seconds``."""

    draws: EpochDraws
    offsets: DrawOffsets
    effects: tuple[torch.Tensor, ...]
    covariances: list[np.ndarray]
    dispersion: float
    seconds: float


@dataclass(frozen=True)
class TrainingEStep:
    """The E-step of a training epoch and the variance M-step that follows it: F on all
    rows (the E-step is compiled for all of them and weights the held-out ones 0), K
    draws, the covariance and dispersion M-step on the training rows ``train_rows``
    (positions ``training``, (n_t,) long) and the draws' loss offsets with the paper's
    ``penalty``.
    All of it can run on the worker thread beside the network's M-step."""

    problem: EMProblem
    estep: EffectSampler
    training: torch.Tensor
    train_rows: Rows
    num_draws: int
    burn_in: int
    penalty: float
    expand: bool

    def __call__(self, model: FixedPart, covariances: list[np.ndarray], dispersion: float) -> EpochInputs:
        F = predict_fixed(model, self.problem.rows)
        draws, seconds = timed_draw(self.estep, F, covariances, dispersion, self.num_draws, self.burn_in)
        effects = tuple(torch.as_tensor(B, device=F.device) for B in draws.effects)
        offsets = DrawOffsets.from_draws(effects, self.train_rows, self.penalty)
        expanded, new_covariances, new_dispersion = variance_update(
            self.problem, draws, F[self.training], self.train_rows, covariances, dispersion, self.expand, score_form=False
        )
        return EpochInputs(draws, offsets, expanded, new_covariances, new_dispersion, seconds)


class DrawAhead(Generic[T]):
    """A daemon thread that computes the next epoch's E-step (its :class:`EpochInputs` while a
    network trains, its draws in a Newton block) while this epoch's M-step runs."""

    def __init__(self) -> None:
        self.call: DaemonCall | None = None

    @property
    def pending(self) -> bool:
        return self.call is not None

    def submit(self, work: Callable[[], T]) -> None:
        """Start ``work()`` (one E-step at a time: the sampler's chain stays one sequence of calls)."""
        self.call = DaemonCall(work, "gmenn-estep-ahead")

    def take(self) -> tuple[T, float]:
        """The pending result and the seconds waited for it."""
        started = time.perf_counter()
        inputs = self.call.result()
        self.call = None
        return inputs, time.perf_counter() - started

    def close(self) -> None:
        """Wait for a pending E-step: it advances the chain the final phase continues."""
        if self.call is not None:
            self.call.result()
            self.call = None

    def cancel(self) -> None:
        """Drop a pending E-step after an error or Ctrl-C, giving it the watchdog's grace to finish
        (a stuck one would never return)."""
        if self.call is not None:
            self.call.settle(CANCEL_GRACE_SECONDS)
            self.call = None


@contextmanager
def torch_threads_beside(ahead: DrawAhead | None, device: torch.device):
    """While the E-step runs beside a CPU M-step, torch uses one thread fewer: its OpenMP
    threads slow 10-50x when they find their core taken."""
    threads = torch.get_num_threads()
    reduce = ahead is not None and device.type == "cpu" and threads > 1
    if reduce:
        torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        if reduce:
            torch.set_num_threads(threads)
