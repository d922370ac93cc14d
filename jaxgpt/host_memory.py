"""Keep freed host memory in the process, so XLA:CPU steps stop paying page faults.

Every execution of a compiled XLA:CPU program allocates its temporary buffer (tens of MB for a
train step) with malloc. glibc serves blocks that large with a fresh mmap and unmaps them on
free, so each step touches all of that memory anew: the tiny CPU train step took 12,500 minor
page faults (about 50 MB) per step, and 22% of its time went to them (docs/performance.md).
Telling glibc never to mmap and to keep up to 1 GiB of freed memory at the heap's top makes
those blocks reused from step to step.

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
_M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 1 << 30

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
    _applied = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and bool(
        mallopt(_M_MMAP_MAX, 0)
    )
    return _applied
