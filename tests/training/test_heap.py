"""Freed heap memory goes back to the system once the heap has piled it up (glibc only)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from gmenn_formula.training.heap import MIN_FREE_BYTES, heap_bytes, piled_up, trim_heap

glibc_only = pytest.mark.skipif(heap_bytes() is None, reason="glibc's malloc only")


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize(
    ("used", "free", "expected"),
    [
        (560 * 2**20, 4200 * 2**20, True),  # the 10^6-row gaussian GLMM's heap: trimmed
        (350 * 2**20, 350 * 2**20, False),  # the 300,000-row binomial GLMM's: reused every epoch, left alone
        (10 * 2**20, MIN_FREE_BYTES // 2, False),  # little free memory, whatever the share
    ],
)
def test_only_a_heap_with_far_more_free_than_used_memory_is_trimmed(used, free, expected):
    assert piled_up(used, free) is expected


@glibc_only
def test_trimming_returns_freed_heap_memory_to_the_system():
    """Freeing a 16 MB array raises glibc's mmap threshold, so 100 arrays of 8 MB come from the heap;
    with all but the last freed, ~800 MB stay resident until the trim."""
    raise_threshold = np.ones(16 * 2**20 // 8)
    del raise_threshold
    arrays = [np.ones(2**20) for _ in range(100)]
    last = arrays.pop()
    del arrays
    before = _resident_bytes()
    trim_heap()
    assert before - _resident_bytes() > 400 * 2**20
    assert last.sum() == 2**20
