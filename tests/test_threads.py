"""side_by_side: every call's result in order, all calls ended before a call's error is raised."""

from __future__ import annotations

import threading
import time

import pytest

from gmenn_formula.threads import side_by_side


def test_side_by_side_returns_in_order_on_threads_of_their_own():
    names = side_by_side([lambda: threading.current_thread().name] * 3, "gmenn-test")
    assert names == [threading.current_thread().name, "gmenn-test-1", "gmenn-test-2"]
    assert side_by_side([lambda: 1, lambda: 2, lambda: 3], "gmenn-test") == [1, 2, 3]


@pytest.mark.parametrize("failing", [0, 1])
def test_a_call_s_error_is_raised_once_every_call_has_ended(failing):
    ended = []

    def slow() -> int:
        time.sleep(0.2)
        ended.append(True)
        return 1

    def fails() -> None:
        raise ValueError("chain failed")

    calls = [slow, slow]
    calls[failing] = fails
    with pytest.raises(ValueError, match="chain failed"):
        side_by_side(calls, "gmenn-test")
    assert ended == [True]
