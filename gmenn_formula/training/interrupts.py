"""Ctrl-C during a fit, taken at safe points.

Python raises KeyboardInterrupt in whatever code the main thread runs when SIGINT
arrives; inside a callback of JAX's garbage collector hook it was printed as
"Exception ignored" and lost (the fit ran on to its end), and raised inside XLA's
compiler it crashed the process. While :func:`deferred_interrupts` is active, the first
Ctrl-C only sets a flag; :func:`raise_if_interrupted` raises KeyboardInterrupt at the
fit's safe points (after each epoch, and every :data:`POLL_SECONDS` while the main
thread waits for an E-step). A second Ctrl-C raises at once, wherever the main thread is.
Outside the main thread (signals cannot be handled there), or where SIGINT is ignored (a
background job of a shell, ``nohup``), nothing changes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

POLL_SECONDS = 0.1
"""How often a thread waiting for an E-step looks at the flag."""

_requested = threading.Event()


def _request(signum, frame) -> None:
    if _requested.is_set():
        raise KeyboardInterrupt
    _requested.set()


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Within the block, Ctrl-C is taken at the fit's safe points (see the module docstring)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGINT, _request)
    _requested.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if a Ctrl-C was deferred (in the main thread only; the flag stays set,
    so that a second Ctrl-C while the fit so far is assembled aborts)."""
    if _requested.is_set() and threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt
