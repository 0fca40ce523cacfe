"""Keeping the agent's resident memory low and flat (glibc only; no-ops elsewhere).

Python objects do not leak across cycles (bench/soak.py); the C allocator is
what held on to memory:

- glibc serves blocks of 128 KiB or more with mmap and unmaps them when freed,
  but raises that threshold to the size of each mapped block it frees (up to
  32 MiB). The few large, short-lived blocks of a cycle (a big package's file
  list and the JSON of its ``files`` column) would then come from the heap and
  leave it as large as it was. A fixed threshold keeps them mapped, so they
  leave with the cycle that needed them (about 10 MiB less peak RSS on a whole
  ``run --once``, bench/host.py).
- Every thread that allocates gets its own arena (up to 8 per core), each
  keeping its freed pages: the worker threads of a cycle (file reads, SQLite,
  the neighbour-table dump) made the daemon climb by 15–30 MB over its first
  cycles. Two arenas, and handing freed pages back after each cycle, keep it at
  the level of the first cycle.
"""

from __future__ import annotations

import ctypes
from functools import cache

M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept fixed
ARENAS = 2


@cache
def _glibc():
    libc = ctypes.CDLL(None)  # the symbols the interpreter is linked with: its C library's among them
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # musl and others: neither call exists
    return libc


def tune_allocator() -> None:
    """A fixed mmap threshold and at most ``ARENAS`` arenas; call before starting threads."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_ARENA_MAX, ARENAS)


def release_free_memory() -> None:
    """Give the pages the allocator holds free back to the system (a few ms; call off the event loop)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
