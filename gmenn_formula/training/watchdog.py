"""No E-step call blocks forever: each runs on a daemon thread with a bound on its wall time.

:class:`WatchedSampler` wraps an :class:`~gmenn_formula.estep.arrays.EffectSampler`. Each
``draw`` runs on a fresh daemon thread while the calling thread waits at most the bound;
past it, :class:`~gmenn_formula.errors.EStepTimeoutError` goes up to the fit, which
attaches the fit so far (``error.result``). The stuck thread cannot be killed; being a
daemon, it does not keep the process alive. The calling thread waits in Python and looks
for a deferred Ctrl-C (:mod:`~gmenn_formula.training.interrupts`) as it waits, so XLA never
compiles or runs on the thread a Ctrl-C lands on (raised inside XLA's compiler, one crashed
the process in 2 of 4 tries); an interrupted call gets :data:`CANCEL_GRACE_SECONDS` to
finish, so that the chain is not advanced while the fit so far is assembled.

The automatic bound (``estep_timeout=None``): :data:`FIRST_CALL_SECONDS` for the first
call (it compiles the sampler), then the larger of :data:`LATER_FLOOR_SECONDS` and
:data:`LATER_FACTOR` times the slowest call so far. An explicit ``estep_timeout`` bounds
every call.
"""

from __future__ import annotations

import math
import time
from typing import TypeVar

import numpy as np

from gmenn_formula.errors import EStepTimeoutError
from gmenn_formula.estep.arrays import EffectSampler, EpochDraws, SamplerConfig
from gmenn_formula.threads import DaemonThread
from gmenn_formula.training.interrupts import POLL_SECONDS, raise_if_interrupted

FIRST_CALL_SECONDS = 3600.0
LATER_FLOOR_SECONDS = 600.0
LATER_FACTOR = 50.0
CANCEL_GRACE_SECONDS = 10.0
"""After a Ctrl-C, how long a running E-step call may finish before the fit goes on without it."""

T = TypeVar("T")


class DaemonCall(DaemonThread[T]):
    """``work()`` running on a new daemon thread called ``name``; :meth:`result` waits for it."""

    def result(self, timeout: float | None = None) -> T:
        """``work()``'s value (or its exception, raised here) once the thread has ended;
        TimeoutError if it runs past ``timeout`` seconds (the thread goes on). A deferred Ctrl-C
        reaches the waiting thread within POLL_SECONDS."""
        deadline = math.inf if timeout is None else time.perf_counter() + timeout
        while self.thread.is_alive() and time.perf_counter() < deadline:
            self.thread.join(min(POLL_SECONDS, max(deadline - time.perf_counter(), 0.0)))
            raise_if_interrupted()
        if self.thread.is_alive():
            raise TimeoutError(f"{self.thread.name} still runs after {timeout} s")
        return self.outcome()

    def settle(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the thread to end, ignoring its outcome."""
        self.thread.join(grace)


class WatchedSampler:
    """``estep`` with every ``draw`` bounded in wall time (the module docstring gives the bound);
    ``timeout``: seconds per call, or None for the automatic bound."""

    def __init__(self, estep: EffectSampler, timeout: float | None) -> None:
        self.estep = estep
        self.timeout = timeout
        self.calls = 0
        self.slowest = 0.0

    def bound(self) -> float:
        """The seconds the next call may take."""
        if self.timeout is not None:
            return self.timeout
        if self.calls == 0:
            return FIRST_CALL_SECONDS
        return max(LATER_FLOOR_SECONDS, LATER_FACTOR * self.slowest)

    def draw(self, F: np.ndarray, covariances: list[np.ndarray], dispersion: float, num_draws: int, burn_in: int, chains: int = 1) -> EpochDraws:
        bound = self.bound()
        started = time.perf_counter()
        call = DaemonCall(lambda: self.estep.draw(F, covariances, dispersion, num_draws, burn_in, chains), "gmenn-estep-call")
        try:
            draws = call.result(timeout=bound)
        except TimeoutError:
            before = f"; the slowest of the {self.calls} calls before took {self.slowest:.1f} s" if self.calls else " (the first call, which compiles the sampler)"
            raise EStepTimeoutError(
                f"An E-step call (K={num_draws} draws) ran past {bound:.0f} s{before}: the sampler is stuck, or the model "
                "needs far longer E-steps than the bound allows. The fit so far is in this error's .result (None before "
                "the first epoch); if such E-steps are expected, set estep_timeout= to more seconds.",
                seconds=bound,
            ) from None
        except KeyboardInterrupt:
            call.settle(CANCEL_GRACE_SECONDS)
            raise
        self.calls += 1
        self.slowest = max(self.slowest, time.perf_counter() - started)
        return draws

    @property
    def chunk(self) -> int:
        return self.estep.chunk

    def set_weights(self, weights: np.ndarray) -> None:
        self.estep.set_weights(weights)

    def use_sampler(self, config: SamplerConfig) -> None:
        self.estep.use_sampler(config)
