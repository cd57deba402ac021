"""Work on daemon threads whose outcome, value or exception, reaches the thread that waits for it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class DaemonThread(Generic[T]):
    """``work()`` running on a new daemon thread called ``name`` (started at once): a stuck one
    does not keep the process alive. :meth:`outcome` hands its value or exception on."""

    def __init__(self, work: Callable[[], T], name: str) -> None:
        self._outcome: tuple[bool, Any] | None = None

        def run() -> None:
            try:
                self._outcome = (True, work())
            except BaseException as error:  # handed to the waiting thread, which re-raises it
                self._outcome = (False, error)

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def outcome(self) -> T:
        """``work()``'s value, or its exception raised here; call once the thread has ended."""
        done, value = self._outcome
        if not done:
            raise value
        return value


def side_by_side(calls: list[Callable[[], Any]], name: str) -> list[Any]:
    """The results of ``calls``, the first on this thread and every other on a daemon thread of its
    own (``name``-1, ``name``-2, ...), all at once; the first error any raised is raised here once
    all have ended."""
    others = [DaemonThread(call, f"{name}-{i}") for i, call in enumerate(calls[1:], start=1)]
    try:
        first = calls[0]()
    finally:
        for other in others:
            other.thread.join()
    return [first, *(other.outcome() for other in others)]
