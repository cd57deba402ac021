"""Freed heap memory goes back to the system once the heap has piled it up (glibc only)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from gmenn_formula.training.heap import MIN_FREE_BYTES, heap_bytes, release_free_heap

pytestmark = pytest.mark.skipif(heap_bytes() is None, reason="glibc's malloc only")


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_heap_holding_far_more_free_than_used_memory_is_trimmed():
    """Freeing a 16 MB array raises glibc's mmap threshold, so 100 arrays of 8 MB come from the heap;
    with all but the last freed, ~800 MB stay resident until the release."""
    del_me = np.ones(16 * 2**20 // 8)
    del del_me
    arrays = [np.ones(2**20) for _ in range(100)]
    last = arrays.pop()
    del arrays
    used, free = heap_bytes()
    assert free > max(2 * used, MIN_FREE_BYTES)
    before = _resident_bytes()
    assert release_free_heap()
    assert before - _resident_bytes() > 400 * 2**20
    assert last.sum() == 2**20


def test_a_heap_with_little_free_memory_is_left_alone():
    release_free_heap()
    used, free = heap_bytes()
    if free > max(2 * used, MIN_FREE_BYTES):
        pytest.skip("the heap already holds much free memory")
    assert not release_free_heap()
