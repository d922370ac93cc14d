"""Host setup for CPU runs: glibc keeps freed memory (no page-faulting steps), and the CPU host
is split into one JAX device per core."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jaxgpt import cpu_devices, host_memory
from jaxgpt.sharding import MeshConfig
from tests.conftest import REPO


def _glibc() -> str:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):
        return ""


def _run(code: str, env_extra: dict[str, str] | None = None) -> dict:
    """Run code in a fresh interpreter (JAX not yet started, no test XLA_FLAGS); its last
    stdout line is JSON."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update({"JAX_PLATFORMS": "cpu", **(env_extra or {})})
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# The tiny char-level train step of benchmarks/step_time.py: its XLA temporary buffer (~50 MB)
# is far above glibc's mmap threshold, so with glibc's defaults every step maps it anew and
# faults about 12,500 pages in.
PAGE_FAULTS = """
import argparse, json, resource, sys
sys.path.insert(0, "benchmarks")
from jaxgpt import host_memory
applied = host_memory.keep_freed_memory()
import step_time
args = argparse.Namespace(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128,
    dtype="float32", remat="none", scan_layers=False, attention="auto", loss_chunk=0,
    devices=1, fsdp=False, batch_size=12)
step = step_time.jax_stepper(args)[0]
for _ in range(20):
    step()
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# The median step: a shared CI machine occasionally adds a step with unrelated faults (a new
# thread's stack, a collector pass) that would dominate a mean.
print(json.dumps({"applied": applied, "faults_per_step": sorted(faults)[len(faults) // 2],
                  "all": faults}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
@pytest.mark.e2e
def test_keep_freed_memory_stops_page_faults_per_step():
    kept = _run(PAGE_FAULTS)
    default = _run(PAGE_FAULTS, {"JAXGPT_KEEP_HOST_MEMORY": "0"})
    assert kept["applied"] is True and default["applied"] is False
    # glibc's defaults: ~12,500 4 KiB pages faulted in per step; kept: a few hundred at most.
    assert default["faults_per_step"] > 5000, default
    assert kept["faults_per_step"] < default["faults_per_step"] / 8, (kept, default)


# glibc's per-thread arenas, as XLA's threads use them: with 40 MB live in the thread's heap, a
# 50 MB block needs a heap of its own, which glibc unmaps when the block is freed unless the top
# pad says to keep it. Counted per thread, so other threads' faults do not blur it.
THREAD_HEAPS = """
import ctypes, json, resource, threading
from jaxgpt import host_memory
applied = host_memory.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
faults = []
def steps():
    live = libc.malloc(40 << 20)
    ctypes.memset(live, 1, 40 << 20)
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        block = libc.malloc(50 << 20)
        ctypes.memset(block, 1, 50 << 20)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    libc.free(live)
thread = threading.Thread(target=steps)
thread.start()
thread.join()
print(json.dumps({"applied": applied, "faults": faults}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_a_threads_large_block_is_kept_between_uses():
    kept = _run(THREAD_HEAPS)
    default = _run(THREAD_HEAPS, {"JAXGPT_KEEP_HOST_MEMORY": "0"})
    assert kept["applied"] is True and default["applied"] is False
    pages = (50 << 20) // 4096
    assert min(default["faults"]) > pages * 0.9, default  # mapped anew at every use
    assert max(kept["faults"][1:]) < pages // 100, kept  # faulted in once, then reused


@pytest.mark.parametrize(
    "mesh, batches, cores, expected",
    [
        (MeshConfig(), (12, 12), 2, 2),  # one device per core
        (MeshConfig(), (12, 12), 64, 6),  # capped at 8, and 8 does not divide 12
        (MeshConfig(), (12, 8), 8, 4),  # must divide the eval batch too
        (MeshConfig(), (7,), 2, 1),  # a prime batch stays on one device
        (MeshConfig(1, -1, 1), (16,), 4, 4),  # fsdp=-1 splits the same way
        (MeshConfig(-1, 1, 2), (12,), 8, 8),  # tensor=2: the batch splits 4 ways on 8
        (MeshConfig(1, 2, 1), (12,), 8, 2),  # every axis fixed: their product
        (MeshConfig(1, 1, -1), (12,), 8, 1),  # tensor=-1 is not split automatically
    ],
)
def test_auto_count(mesh, batches, cores, expected):
    assert cpu_devices.auto_count(mesh, batches, cores) == expected


@pytest.mark.e2e
def test_configure_splits_a_fresh_cpu_backend():
    code = """
    import json
    from jaxgpt import cpu_devices
    from jaxgpt.sharding import MeshConfig
    note = cpu_devices.configure(0, MeshConfig(), (12, 12))
    import jax
    print(json.dumps({"note": note, "devices": jax.device_count(),
                      "cores": cpu_devices.usable_cores()}))
    """
    r = _run(code)
    expected = cpu_devices.auto_count(MeshConfig(), (12, 12), r["cores"])
    assert r["devices"] == expected
    assert r["note"].startswith(f"CPU backend: {expected} device")
    explicit = _run(code.replace("configure(0,", "configure(3,"))
    assert explicit["devices"] == 3 and "mesh.cpu_devices" in explicit["note"]
    # An explicit XLA device count wins and configure says it did nothing.
    flags = _run(code, {"XLA_FLAGS": "--xla_force_host_platform_device_count=5"})
    assert flags["devices"] == 5 and flags["note"] is None


def test_configure_after_jax_started_does_nothing(monkeypatch):
    import jax

    jax.devices()  # the test process's backend exists already
    monkeypatch.delenv("XLA_FLAGS")  # so only the started backend stops configure
    assert cpu_devices.configure(0, MeshConfig(), (12,)) is None
    with pytest.raises(ValueError, match=r"mesh\.cpu_devices"):
        cpu_devices.configure(-1, MeshConfig(), (12,))


@pytest.mark.parametrize(
    "argv, environ, glibc, restarts",
    [
        (["python", "-m", "jaxgpt.train", "--workdir", "w"], {}, "glibc 2.36", True),
        (["python", "-X", "importtime", "-m", "jaxgpt.serve"], {}, "glibc 2.35", True),
        (["python", "-m", "jaxgpt.lm_eval_model", "--tasks", "t"], {}, "glibc 2.36", True),
        (["/v/bin/python", "/v/bin/jaxgpt-lm-eval", "--model", "jaxgpt"], {}, "glibc 2.36", True),
        (["python", "-X", "importtime", "/v/bin/jaxgpt-lm-eval"], {}, "glibc 2.36", True),
        (["python", "-c", "print()", "/v/bin/jaxgpt-lm-eval"], {}, "glibc 2.36", False),
        (["python", "/v/bin/jaxgpt-lm-eval", "-m", "x"], {}, "glibc 2.36", True),  # its own -m
        (["python", "-m", "jaxgpt.prepare"], {}, "glibc 2.36", False),  # runs no steps
        (["python", "/v/bin/jaxgpt-prepare"], {}, "glibc 2.36", False),
        (["python", "-m", "pytest", "tests"], {}, "glibc 2.36", False),  # a library import
        (["python", "-c", "import jaxgpt"], {}, "glibc 2.36", False),
        (["python", "-m", "jaxgpt.train"], {}, "glibc 2.34", False),  # no such tunable yet
        (["python", "-m", "jaxgpt.train"], {}, "", False),  # not glibc
        (["python", "-m", "jaxgpt.train"], {"JAXGPT_KEEP_HOST_MEMORY": "0"}, "glibc 2.36", False),
        (
            ["python", "-m", "jaxgpt.train"],
            {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
            "glibc 2.36",
            False,
        ),
    ],
)
def test_which_runs_restart_with_huge_pages(argv, environ, glibc, restarts):
    restart = host_memory.huge_pages_restart(argv, environ, glibc)
    assert (restart is not None) == restarts
    if restart:
        assert restart[0] == argv and restart[1]["GLIBC_TUNABLES"] == host_memory.HUGE_PAGES_TUNABLE


def test_other_tunables_are_kept_on_restart():
    environ = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0", "HOME": "/h"}
    _, env = host_memory.huge_pages_restart(["python", "-m", "jaxgpt.bench"], environ, "glibc 2.36")
    assert env == {
        "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1",
        "HOME": "/h",
    }


@pytest.mark.skipif(
    host_memory.huge_pages_restart(["python", "-m", "jaxgpt.train"], {}, _glibc()) is None,
    reason="glibc older than 2.35 (or not glibc): no huge-page tunable to restart with",
)
@pytest.mark.e2e
def test_train_command_runs_with_the_huge_page_tunable(tmp_path):
    """The environment of the running `python -m jaxgpt.train` (what /proc shows of the
    process image after the restart) carries the tunable; same process id."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GLIBC_TUNABLES")}
    command = [sys.executable, "-m", "jaxgpt.train", "--config", "tiny", "--workdir"]
    process = subprocess.Popen(
        [*command, str(tmp_path / "run")],
        cwd=tmp_path,
        env={**env, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    environ = Path(f"/proc/{process.pid}/environ")
    try:
        deadline = time.monotonic() + 60
        seen = b""
        while time.monotonic() < deadline and process.poll() is None:
            seen = environ.read_bytes()
            if host_memory.HUGE_PAGES_TUNABLE.encode() in seen:
                break
            time.sleep(0.05)
        assert b"GLIBC_TUNABLES=" + host_memory.HUGE_PAGES_TUNABLE.encode() in seen.split(b"\0")
    finally:
        process.kill()
        process.wait()
