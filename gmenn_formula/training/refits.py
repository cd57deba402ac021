"""Many refits of one frozen problem with different responses, in this process or in workers.

:func:`refit_responses` refits a frozen problem (see :mod:`gmenn_formula.training.frozen`)
once per response and yields each refit as it finishes. The responses are taken from an
iterable as they are needed (one in memory per refit running or queued, not all of them). With
``workers > 1`` the refits run in that many spawned processes (spawned, not forked: JAX and
torch hold threads that a fork would copy in a broken state), each given the problem once when
it starts and its share of the cores as torch threads; with one core per worker XLA runs
single-threaded too (XLA's CPU thread pool has no other size setting), otherwise each worker's
XLA pool spans the machine.
Workers ignore SIGINT: Ctrl-C reaches the caller, which stops them (:func:`_stop`) and
re-raises. A worker's cost at start: importing the engine (~2 s) and compiling the E-step
(or loading it from JAX's persistent cache).
"""

from __future__ import annotations

import concurrent.futures
import copy
import itertools
import multiprocessing
import os
import pickle
import signal
import warnings
from collections.abc import Iterable, Iterator

import numpy as np

from gmenn_formula.errors import ConvergenceWarning, GmennError
from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.training.config import FitConfig
from gmenn_formula.training.frozen import Refit, refit, with_response
from gmenn_formula.training.problem import EMProblem

Outcome = tuple[int, Refit | None]
"""(position of the response, its refit; None when the refit raised a GmennError)."""

_WORKER: tuple[EMProblem, FixedPart] | None = None
"""The frozen problem and fixed part a worker process refits (set by :func:`_start_worker`)."""


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


QUEUED_PER_WORKER = 2
"""Refits submitted per worker ahead of the results (so a worker never waits for the next one)."""


def refit_responses(problem: EMProblem, model: FixedPart, jobs: Iterable[tuple[np.ndarray, FitConfig]], workers: int = 1) -> Iterator[Outcome]:
    """Refit ``problem`` with each of ``jobs``' responses (n,) under its config, yielding
    (position, refit or None) in the order they finish; ``workers`` processes (1: this one)."""
    numbered = enumerate(jobs)
    if workers <= 1:
        for index, (y, config) in numbered:
            yield index, _refit_quietly(with_response(problem, y), model, config)
        return
    context = multiprocessing.get_context("spawn")
    threads = max(1, available_cores() // workers)
    payload = pickle.dumps((problem, model))
    executor = concurrent.futures.ProcessPoolExecutor(workers, context, _start_worker, (payload, threads))

    def submit(count: int) -> set[concurrent.futures.Future]:
        return {executor.submit(_refit_in_worker, index, y, config) for index, (y, config) in itertools.islice(numbered, count)}

    try:
        pending = submit(QUEUED_PER_WORKER * workers)
        while pending:
            done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                pending |= submit(1)
                yield future.result()
    except BaseException:
        _stop(executor)
        raise
    executor.shutdown()


def _refit_quietly(problem: EMProblem, model: FixedPart, config: FitConfig):
    """``refit`` of a copy of ``model``, without convergence warnings; None when it raises a GmennError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return refit(problem, copy.deepcopy(model), config)
    except GmennError:
        return None


def _start_worker(payload: bytes, threads: int) -> None:
    """A worker's start: ignore SIGINT, take ``threads`` torch threads (and single-threaded XLA,
    set before JAX starts, when ``threads`` is 1), then unpickle the problem."""
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    import torch

    torch.set_num_threads(threads)
    _WORKER = pickle.loads(payload)


def _refit_in_worker(index: int, y: np.ndarray, config: FitConfig) -> Outcome:
    problem, model = _WORKER
    return index, _refit_quietly(with_response(problem, y), model, config)


def _stop(executor: concurrent.futures.ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (a running refit is not waited for)."""
    terminate = getattr(executor, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.terminate()
    executor.shutdown(wait=True, cancel_futures=True)  # its thread sees the pool broken and reaps the workers
