"""Ask glibc's malloc to give large freed blocks back to the system (no effect elsewhere).

A cycle allocates a few large, short-lived blocks: the text of a package's
file list and the JSON of its ``files`` column run to megabytes for the
largest Debian packages. glibc serves blocks of 128 KiB or more with mmap and
unmaps them when freed, but raises that threshold to the size of each mapped
block it frees (up to 32 MiB): from then on blocks of that size come from the
heap, and freeing them leaves the heap as large as it was. Fixing the
threshold keeps them mapped, so they leave with the cycle that needed them;
fewer arenas (one per thread by default, up to eight per core) keep the
worker threads' leftovers in fewer places. Measured on a whole ``run --once``
(bench/host.py): about 10 MiB less peak RSS.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept fixed
ARENA_MAX = 2


def tune_allocator() -> bool:
    """Set the fixed mmap threshold and the arena limit; False when this is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # not glibc: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENA_MAX))
