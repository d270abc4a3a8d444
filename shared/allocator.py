"""Keep multi-megabyte buffers on glibc's heap, so each embedding reuses memory instead of faulting in new pages.

By default glibc serves blocks over 128 KiB (adapting up to 32 MiB) with a fresh `mmap` and returns them with
`munmap`, trims freed heap memory above 128 KiB back to the OS, and gives threads their own 64 MiB heaps that it
unmaps as they empty: each 15.7 MB embedding and its 4 MiB wire frames then land in fresh pages, up to 3,840 page
faults a prompt (measured with `bench.wire`: 3,400 in a client thread, 2,800 in the server). A fixed, higher mmap
threshold, a trim threshold well above it and one heap for all threads keep those blocks for the next request.
Processes call `tune_allocator()` once at start, before they start threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys

# mallopt(3) parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MIB = 1024 * 1024
MMAP_THRESHOLD_BYTES = 64 * MIB  # blocks below it come from the heap: up to four 15.7 MB embeddings in one tensor
OLD_GLIBC_MMAP_THRESHOLD_BYTES = 32 * MIB  # the most glibc before 2.35 accepts on 64-bit
TRIM_THRESHOLD_BYTES = 256 * MIB  # free heap kept for reuse: about 16 embeddings
ARENA_MAX = 1  # threads share the main heap; small blocks still come from each thread's lock-free cache

_applied: bool | None = None  # the outcome of the first call


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds and share one heap; whether that is set (False off glibc Linux).

    Idempotent: later calls return the first call's outcome and change nothing.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. Setting either threshold also stops glibc adapting them.
    if not (mallopt(M_ARENA_MAX, ARENA_MAX) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        return False
    return any(mallopt(M_MMAP_THRESHOLD, size) for size in (MMAP_THRESHOLD_BYTES, OLD_GLIBC_MMAP_THRESHOLD_BYTES))
