"""Keeping the daemon's resident memory flat over months of cycles (glibc only; no-ops elsewhere).

Python objects do not leak across cycles (bench/soak.py), but the C allocator
held on to what a cycle freed: glibc gives every thread that allocates its own
arena (up to 8 per core), and each keeps its freed pages. The worker threads of
a cycle (file reads, SQLite, the neighbour-table dump) made the resident size
climb by 15–30 MB over the first cycles. Two arenas, and handing freed pages
back after each cycle, keep it at the level of the first cycle.
"""

from __future__ import annotations

import ctypes
from functools import cache

M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h
ARENAS = 2


@cache
def _glibc():
    libc = ctypes.CDLL(None)  # the symbols the interpreter is linked with: its C library's among them
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # musl and others: neither call exists
    return libc


def limit_arenas() -> None:
    """At most ``ARENAS`` malloc arenas for the process; call before starting threads."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, ARENAS)


def release_free_memory() -> None:
    """Give the pages the allocator holds free back to the system (a few ms; call off the event loop)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
