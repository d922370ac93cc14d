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

Those blocks are mapped in 2 MiB transparent huge pages instead when glibc is told so
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, glibc 2.35 and later): 512 times fewer faults. A
tunable is read only when a process starts, so `python -m jaxgpt.<command>` for the commands
that run compiled steps restarts itself with it (`restart_with_huge_pages`, called from
jaxgpt/__init__.py before anything else is imported; same process id, arguments and
environment). Measured here: a 4-layer, width-384, T=256 step 1,058-1,096 → 868-963 ms on one
device and 998 → 920 ms on two, faults 198,000 → 600 per step; the tiny step ±0 to -6%.

Only glibc on Linux is touched. The change is process-wide, so only the commands that run
compiled steps call it (train, bench, evaluate, generate, serve, lm_eval_model and its
jaxgpt-lm-eval script); JAXGPT_KEEP_HOST_MEMORY=0 turns both off.
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

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
# The commands that run compiled steps, as `python -m` names them.
STEP_COMMANDS = (
    "jaxgpt.train",
    "jaxgpt.bench",
    "jaxgpt.evaluate",
    "jaxgpt.generate",
    "jaxgpt.serve",
    "jaxgpt.lm_eval_model",
)
# The same, as console scripts (pyproject.toml's [project.scripts]).
STEP_SCRIPTS = ("jaxgpt-lm-eval",)

_applied: bool | None = None


def huge_pages_restart(
    orig_argv: list[str], environ: dict[str, str], glibc: str
) -> tuple[list[str], dict[str, str]] | None:
    """The (argv, environment) to restart this process with so that glibc maps large blocks in
    huge pages, or None when it needs no restart: not a step command (`python -m` or its
    console script), the tunable already set (the restarted process), turned off, or glibc
    older than 2.35 (`glibc` is what confstr CS_GNU_LIBC_VERSION says, "" off glibc)."""
    if environ.get("JAXGPT_KEEP_HOST_MEMORY", "1") == "0":
        return None
    if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
        return None
    version = glibc.removeprefix("glibc ").split(".")
    if not glibc.startswith("glibc ") or tuple(int(v) for v in version[:2]) < (2, 35):
        return None
    if _step_command(orig_argv) is None:
        return None
    tunables = ":".join(t for t in (environ.get("GLIBC_TUNABLES", ""), HUGE_PAGES_TUNABLE) if t)
    return orig_argv, {**environ, "GLIBC_TUNABLES": tunables}


def _step_command(orig_argv: list[str]) -> str | None:
    """The step command `orig_argv` runs (`python -m jaxgpt.train ...` or a console script,
    which runs as `python /path/to/bin/jaxgpt-lm-eval ...`), else None. The interpreter's own
    options come first; the module or script ends them."""
    args = iter(orig_argv[1:])
    for arg in args:
        if arg == "-m":
            module = next(args, None)
            return module if module in STEP_COMMANDS else None
        if arg == "-c":
            return None
        if arg in ("-X", "-W"):  # the options that take a separate value
            next(args, None)
        elif not arg.startswith("-"):
            name = os.path.basename(arg)
            return name if name in STEP_SCRIPTS else None
    return None


def restart_with_huge_pages() -> None:
    """Replace this process by the same command with glibc's huge-page tunable set, when
    `huge_pages_restart` says so; returns (doing nothing) otherwise."""
    if not sys.platform.startswith("linux"):
        return
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return
    restart = huge_pages_restart(list(getattr(sys, "orig_argv", [])), dict(os.environ), glibc)
    if restart is not None:
        argv, environ = restart
        os.execve(sys.executable, [sys.executable, *argv[1:]], environ)


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
