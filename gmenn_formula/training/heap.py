"""Returning freed heap memory to the operating system between epochs, when the heap has piled it up.

glibc's malloc keeps memory that torch and numpy free in its arenas (its mmap threshold rises to
the size of the largest block freed, so later large arrays come from the heap, and the heap
fragments). In some fits the free part grows epoch by epoch with no array alive: a gaussian GLMM
on 10^6 rows with three crossed factors of 10^5 levels ended with 4.2 GB of free heap beside
0.56 GB in use (resident 1.7 -> 5.3 GB over its epochs; ~1.0-1.1 GB when trimmed after each epoch,
in the same time). In others the free part is steady and reused every epoch: a binomial GLMM on
300,000 rows held ~0.35 GB free beside ~0.35 GB in use, and trimming it after every epoch cost
8-20% of the fit (the next epoch faults the pages in again) without lowering the peak. So the heap
is trimmed only when its free memory exceeds MAX_FREE_SHARE times what is in use (and
MIN_FREE_BYTES).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache

MAX_FREE_SHARE = 2.0
MIN_FREE_BYTES = 256 * 2**20


class _MallocInfo(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc 2.33 and later)."""

    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@lru_cache(maxsize=1)
def _glibc():
    """glibc's ``(mallinfo2, malloc_trim)``, or None off Linux or with another C library (musl has neither)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        info, trim = libc.mallinfo2, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    info.restype = _MallocInfo
    return info, trim


def heap_bytes() -> tuple[int, int] | None:
    """(in use, free) bytes of malloc's heap (glibc only; else None)."""
    functions = _glibc()
    if functions is None:
        return None
    info = functions[0]()
    return int(info.uordblks), int(info.fordblks)


def piled_up(used: int, free: int) -> bool:
    """Whether a heap with ``used`` and ``free`` bytes holds enough free memory to give back:
    more than MAX_FREE_SHARE times the used, and more than MIN_FREE_BYTES."""
    return free > max(MAX_FREE_SHARE * used, MIN_FREE_BYTES)


def trim_heap() -> None:
    """Give all of the heap's free memory back to the operating system (glibc only; else nothing)."""
    functions = _glibc()
    if functions is not None:
        functions[1](0)


def release_free_heap() -> bool:
    """:func:`trim_heap` when the heap has :func:`piled_up` free memory; whether it did."""
    sizes = heap_bytes()
    if sizes is None or not piled_up(*sizes):
        return False
    trim_heap()
    return True
