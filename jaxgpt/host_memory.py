"""Keep freed host memory in the process, so XLA:CPU steps stop paying page faults.

Every execution of a compiled XLA:CPU program allocates its temporary buffer (tens of MB for a
train step) with malloc. glibc serves blocks that large with a fresh mmap and unmaps them on
free, so each step touches all of that memory anew: the tiny CPU train step took 12,500 minor
page faults (about 50 MB) per step, and 22% of its time went to them (docs/performance.md).
Telling glibc never to mmap and to keep up to 1 GiB of freed memory at the heap's top makes
those blocks reused from step to step.

XLA allocates from its own threads, and glibc gives those arenas of their own, made of heaps of
at most 64 MiB. A block that does not fit beside what such a heap holds gets a new heap, and
glibc unmaps a heap as soon as it is empty, whatever the trim threshold, unless the arena's
other heap lacks `M_TOP_PAD` bytes of room: a top pad of one whole heap keeps every heap. Without
it, 1 run in 6 of the tiny train step faulted in every step here (a CI run failed on it).
Blocks over 64 MiB in those arenas are mmapped whatever the settings: a larger model's steps
still fault (docs/performance.md has the figures and the jemalloc way round it; one arena for
every thread would stop that too, but costs the tiny step 25-30% in malloc contention).

Only glibc on Linux is touched. The change is process-wide, so only the commands that run
compiled steps call it (train, bench, evaluate, generate, serve); JAXGPT_KEEP_HOST_MEMORY=0
turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 1 << 30
THREAD_HEAP_BYTES = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit hosts

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from the heap and keep freed ones; True when it took
    effect. Safe to call more than once; a no-op off Linux/glibc or with
    JAXGPT_KEEP_HOST_MEMORY=0."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("JAXGPT_KEEP_HOST_MEMORY", "1") == "0" or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # The trim threshold first: setting either one turns off glibc's adaptive thresholds, and
    # with M_MMAP_MAX=0 alone the heap would still be trimmed back after every step.
    _applied = all(
        mallopt(param, value)
        for param, value in (
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
            (_M_MMAP_MAX, 0),
            (_M_TOP_PAD, THREAD_HEAP_BYTES),
        )
    )
    return _applied
