"""launch/: syntax and shellcheck, and what the scripts do with stub gcloud, python and srun.

Nothing here touches the network or a real cluster: every external command the scripts call is a
stub in tmp_path that records its arguments (and is first on PATH, so a real gcloud is never hit).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
SCRIPTS = [LAUNCH / "local.sh", LAUNCH / "tpu_pod.sh", LAUNCH / "slurm_gpu.sbatch"]
pytestmark = pytest.mark.e2e  # starts processes (the scripts, under stub commands)

# Settings the scripts read from the environment; cleared so the caller's shell can't leak in.
SETTINGS = (
    "NAME ZONE ACCELERATOR VERSION PROJECT SPOT QUEUED BEST_EFFORT CONFIG WORKDIR DATA_DIR "
    "REPO_URL GIT_REF REMOTE_DIR VENV PYTHON_VERSION DETACH DELETE POLL_S PYTHON LOG_DIR "
    "COORDINATOR_PORT GPUS_PER_PROCESS DEVICES_PER_PROCESS KILL_AFTER_S CUDA_VISIBLE_DEVICES "
    "JAX_PLATFORMS XLA_FLAGS REPO_DIR"
).split()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SETTINGS and not k.startswith(("JAXGPT_", "SLURM_", "OMPI_"))
    }
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env


def _stub(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


# --- syntax and lint ------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_shellcheck():
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail(
            "shellcheck is not on PATH, so launch/*.sh cannot be linted: install it "
            "(apt-get install -y shellcheck, or brew install shellcheck)"
        )
    r = subprocess.run([exe, *map(str, SCRIPTS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# --- launch/tpu_pod.sh with a stub gcloud ---------------------------------------------------------

FAKE_GCLOUD = """#!{python}
# Records its arguments as one JSON line; answers describe like gcloud would.
import json, os, shutil, sys
args = sys.argv[1:]
log = os.environ["FAKE_GCLOUD_LOG"]
calls = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
with open(log, "a") as f:
    f.write(json.dumps(args) + "\\n")
if "scp" in args:
    shutil.copy(args[args.index("scp") + 1], os.environ["FAKE_GCLOUD_LOG"] + ".tgz")
if "describe" in args:
    kind = "queued-resources" if "queued-resources" in args else "tpu-vm"
    if not any(kind in c and "create" in c for c in calls):
        print("ERROR: NOT_FOUND", file=sys.stderr)
        sys.exit(1)
    print("ACTIVE" if kind == "queued-resources" else "READY")
"""

TPU_SETTINGS = {
    "NAME": "jx",
    "ZONE": "us-east5-a",
    "PROJECT": "proj",
    "CONFIG": "configs/small.py",
    "WORKDIR": "/mnt/shared/run",
    "POLL_S": "0",
}
GC = ["--zone=us-east5-a", "--project=proj"]


def _tpu(tmp_path, *args, script=LAUNCH / "tpu_pod.sh", **settings):
    _stub(tmp_path, "gcloud", FAKE_GCLOUD.format(python=sys.executable))
    log = tmp_path / "gcloud.jsonl"
    env = _env(tmp_path, FAKE_GCLOUD_LOG=str(log), TMPDIR=str(tmp_path), **settings)
    r = subprocess.run(
        ["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return r, calls


def test_tpu_dry_run_prints_commands_and_calls_nothing(tmp_path):
    r, calls = _tpu(
        tmp_path,
        "--dry-run",
        "--config.train.steps=7",
        "--config.train.sample_prompt=it's",
        DELETE="1",
        **TPU_SETTINGS,
    )
    assert r.returncode == 0, r.stderr
    assert calls == []  # gcloud never ran
    lines = r.stdout.splitlines()
    assert (
        "gcloud compute tpus tpu-vm create jx --accelerator-type=v5p-32 "
        "--version=v2-alpha-tpuv5 --zone=us-east5-a --project=proj"
    ) in lines
    assert any(
        line.startswith("gcloud compute tpus tpu-vm scp ")
        and "jx:jaxgpt-src.tgz --worker=all" in line
        for line in lines
    )
    out = r.stdout
    # unpack, install, prepare, train
    assert out.count("gcloud compute tpus tpu-vm ssh jx --worker=all '--command=") == 4
    assert 'pip install --quiet -e ".[tpu,cloud]"' in out
    assert (
        '-m jaxgpt.prepare --config configs/small.py --config.data.path="$HOME"/jaxgpt-data' in out
    )
    assert (
        "-m jaxgpt.train --config configs/small.py --workdir /mnt/shared/run "
        '--config.data.path="$HOME"/jaxgpt-data '
        "--config.train.steps=7 --config.train.sample_prompt=it\\'\\''s"
    ) in out
    assert (
        lines[-1] == "gcloud compute tpus tpu-vm delete jx --quiet --zone=us-east5-a --project=proj"
    )


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"SPOT": "1"},
            "gcloud compute tpus tpu-vm create jx --accelerator-type=v5litepod-32 "
            "--version=v2-alpha-tpuv5-lite --spot",
        ),
        (
            {"QUEUED": "1", "SPOT": "1"},
            "gcloud compute tpus queued-resources create jx --node-id=jx "
            "--accelerator-type=v5litepod-32 --runtime-version=v2-alpha-tpuv5-lite --spot",
        ),
        (
            {"QUEUED": "1", "BEST_EFFORT": "1"},
            "gcloud alpha compute tpus queued-resources create jx "
            "--node-id=jx --accelerator-type=v5litepod-32 --runtime-version=v2-alpha-tpuv5-lite "
            "--best-effort",
        ),
    ],
    ids=["spot", "queued-spot", "queued-best-effort"],
)
def test_tpu_dry_run_capacity_modes(tmp_path, settings, expected):
    r, calls = _tpu(
        tmp_path, "--dry-run", ACCELERATOR="v5litepod-32", DELETE="1", **settings, **TPU_SETTINGS
    )
    assert r.returncode == 0, r.stderr
    assert calls == []
    assert f"{expected} {' '.join(GC)}" in r.stdout.splitlines()
    if settings.get("QUEUED"):
        assert r.stdout.splitlines()[-1] == (
            f"gcloud compute tpus queued-resources delete jx --force --quiet {' '.join(GC)}"
        )


def test_tpu_dry_run_clone_and_data_dir(tmp_path):
    r, _ = _tpu(
        tmp_path,
        "--dry-run",
        "--config.data.sources=stdlib",
        "--config.train.steps=3",
        REPO_URL="https://example.com/jaxgpt.git",
        GIT_REF="v1",
        DATA_DIR="data/owt",
        **TPU_SETTINGS,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert 'git clone --depth 1 --branch v1 https://example.com/jaxgpt.git "$HOME"/jaxgpt' in out
    assert "tpu-vm scp" not in out
    # every worker prepares the data (config overrides only), then trains on it
    assert (
        '-m jaxgpt.prepare --config configs/small.py --config.data.path="$HOME"/data/owt '
        "--config.data.sources=stdlib --config.train.steps=3'"
    ) in out
    assert '--workdir /mnt/shared/run --config.data.path="$HOME"/data/owt' in out
    # DATA_DIR set empty: no prepare step, the trainer's default (WORKDIR/data)
    r, _ = _tpu(tmp_path, "--dry-run", DATA_DIR="", **TPU_SETTINGS)
    assert r.returncode == 0, r.stderr
    assert "jaxgpt.prepare" not in r.stdout and "config.data.path" not in r.stdout


def test_tpu_settings_are_checked(tmp_path):
    settings = {k: v for k, v in TPU_SETTINGS.items() if k != "WORKDIR"}
    r, _ = _tpu(tmp_path, "--dry-run", **settings)
    assert r.returncode == 2 and "WORKDIR" in r.stderr
    r, _ = _tpu(tmp_path, "--dry-run", ACCELERATOR="v5e-32", **TPU_SETTINGS)
    assert r.returncode == 2 and "v5litepod-32" in r.stderr
    r, _ = _tpu(tmp_path, "--dry-run", DETACH="1", DELETE="1", **TPU_SETTINGS)
    assert r.returncode == 2
    # A URL with a lost slash would be a local folder on every worker: refused.
    r, _ = _tpu(tmp_path, "--dry-run", **{**TPU_SETTINGS, "WORKDIR": "gs:/bucket/run"})
    assert r.returncode == 2 and "gs://BUCKET/PATH" in r.stderr


def test_tpu_bucket_workdir_and_data_are_prepared_once_and_trained_from(tmp_path):
    """The standard setup: data prepared once (worker 0) into a bucket, every worker trains
    from it with its checkpoints in the bucket."""
    settings = {**TPU_SETTINGS, "WORKDIR": "gs://b/runs/x", "DATA_DIR": "gs://b/data/x"}
    r, _ = _tpu(tmp_path, "--dry-run", **settings)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    prepare = [line for line in lines if "jaxgpt.prepare" in line]
    train = [line for line in lines if "jaxgpt.train" in line]
    assert len(prepare) == 1 and "--worker=0" in prepare[0], prepare
    assert "--config.data.path=gs://b/data/x" in prepare[0]
    assert len(train) == 1 and "--worker=all" in train[0]
    assert "--workdir gs://b/runs/x" in train[0] and "--config.data.path=gs://b/data/x" in train[0]
    assert any("[tpu,cloud]" in line for line in lines)


def test_tpu_stop_dry_run(tmp_path):
    r, calls = _tpu(tmp_path, "--dry-run", "--stop", NAME="jx", ZONE="us-east5-a")
    assert r.returncode == 0, r.stderr
    assert calls == []
    assert "pkill -TERM -f" in r.stdout and "[j]axgpt[.]train" in r.stdout


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A tiny git checkout holding a copy of tpu_pod.sh: tracked, untracked and ignored files."""
    root = tmp_path / "checkout"
    (root / "launch").mkdir(parents=True)
    shutil.copy(LAUNCH / "tpu_pod.sh", root / "launch" / "tpu_pod.sh")
    (root / "tracked.py").write_text("x = 1\n")
    (root / "untracked.py").write_text("y = 2\n")
    (root / "runs").mkdir()
    (root / "runs" / "big.bin").write_text("ignored\n")
    (root / ".gitignore").write_text("runs/\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "tracked.py", "launch", ".gitignore"], cwd=root, check=True)
    return root


def test_tpu_run_with_stub_gcloud(tmp_path, checkout):
    r, calls = _tpu(
        tmp_path,
        "--config.train.steps=7",
        script=checkout / "launch" / "tpu_pod.sh",
        DELETE="1",
        **TPU_SETTINGS,
    )
    assert r.returncode == 0, r.stderr
    verbs = [c[:4] for c in calls]
    assert verbs == [
        ["compute", "tpus", "tpu-vm", "describe"],
        ["compute", "tpus", "tpu-vm", "create"],
        ["compute", "tpus", "tpu-vm", "scp"],
        ["compute", "tpus", "tpu-vm", "ssh"],  # unpack
        ["compute", "tpus", "tpu-vm", "ssh"],  # install
        ["compute", "tpus", "tpu-vm", "ssh"],  # prepare
        ["compute", "tpus", "tpu-vm", "ssh"],  # train
        ["compute", "tpus", "tpu-vm", "delete"],
    ]
    assert calls[1][4:] == ["jx", "--accelerator-type=v5p-32", "--version=v2-alpha-tpuv5", *GC]
    for ssh in calls[3:7]:
        assert ssh[4:6] == ["jx", "--worker=all"] and ssh[-2:] == GC
    train = calls[6][6]
    assert train.startswith("--command=cd ")
    assert "-m jaxgpt.train --config configs/small.py --workdir /mnt/shared/run" in train
    assert train.endswith("--config.train.steps=7")
    # the code shipped is what git sees: tracked and untracked files, not ignored ones
    with tarfile.open(tmp_path / "gcloud.jsonl.tgz") as tar:
        names = set(tar.getnames())
    assert {"tracked.py", "untracked.py", "launch/tpu_pod.sh", ".gitignore"} <= names
    assert not any(n.startswith("runs") for n in names)
    assert not list(tmp_path.glob("jaxgpt-src-*.tgz"))  # the local tarball is cleaned up


def test_tpu_queued_run_waits_for_active(tmp_path):
    r, calls = _tpu(
        tmp_path,
        QUEUED="1",
        SPOT="1",
        DELETE="1",
        REPO_URL="https://example.com/j.git",
        **TPU_SETTINGS,
    )
    assert r.returncode == 0, r.stderr
    verbs = [c[2:4] for c in calls]
    assert verbs == [
        ["queued-resources", "describe"],
        ["queued-resources", "create"],
        ["queued-resources", "describe"],  # ACTIVE now
        ["tpu-vm", "ssh"],  # clone
        ["tpu-vm", "ssh"],  # install
        ["tpu-vm", "ssh"],  # prepare
        ["tpu-vm", "ssh"],  # train
        ["queued-resources", "delete"],
    ]
    assert "--spot" in calls[1]
    assert calls[-1][4:] == ["jx", "--force", "--quiet", *GC]


# --- launch/local.sh with a stub python -----------------------------------------------------------

FAKE_PYTHON = """#!/usr/bin/env bash
# `python -c ...` (picking the port) goes to the real interpreter; `python -m jaxgpt.train ...`
# records its environment and arguments, then behaves as FAIL_ID / HANG_ID / TRAP_TERM say.
if [ "${{1:-}}" = "-c" ]; then exec {python} "$@"; fi
id=$JAXGPT_PROCESS_ID
printf '%s\\n' "$id" "$JAXGPT_NUM_PROCESSES" "$JAXGPT_COORDINATOR" "${{JAX_PLATFORMS-unset}}" \\
  "${{XLA_FLAGS-unset}}" "${{CUDA_VISIBLE_DEVICES-unset}}" "$*" > "$RECORD_DIR/proc-$id"
echo "process $id says hello"
if [ "$id" = "${{FAIL_ID:-}}" ]; then exit 3; fi
if [ "$id" = "${{HANG_ID:-}}" ]; then exec sleep 60; fi
if [ -n "${{TRAP_TERM:-}}" ]; then
  trap 'echo term > "$RECORD_DIR/term-$id"; exit 143' TERM
  touch "$RECORD_DIR/ready-$id"
  sleep 60 >/dev/null 2>&1 &
  wait $!
fi
exit 0
"""

RECORD_FIELDS = ("id", "n", "coordinator", "platforms", "xla_flags", "cuda", "args")


def _local_env(tmp_path, **extra):
    stub = _stub(tmp_path, "fake-python", FAKE_PYTHON.format(python=sys.executable))
    (tmp_path / "rec").mkdir(exist_ok=True)
    (tmp_path / "logs").mkdir(exist_ok=True)
    return _env(
        tmp_path,
        PYTHON=str(stub),
        RECORD_DIR=str(tmp_path / "rec"),
        LOG_DIR=str(tmp_path / "logs"),
        KILL_AFTER_S="10",
        **extra,
    )


def _records(tmp_path) -> dict[int, dict[str, str]]:
    out = {}
    for path in (tmp_path / "rec").glob("proc-*"):
        rec = dict(zip(RECORD_FIELDS, path.read_text().splitlines(), strict=True))
        out[int(rec["id"])] = rec
    return out


def _local(tmp_path, *args, **extra):
    return subprocess.run(
        ["bash", str(LAUNCH / "local.sh"), *args],
        env=_local_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_local_runs_n_processes(tmp_path):
    r = _local(
        tmp_path,
        "2",
        "--config",
        "configs/tiny.py",
        "--workdir",
        "runs/a b",
        DEVICES_PER_PROCESS="2",
    )
    assert r.returncode == 0, r.stderr
    recs = _records(tmp_path)
    assert sorted(recs) == [0, 1]
    assert {rec["n"] for rec in recs.values()} == {"2"}
    coordinators = {rec["coordinator"] for rec in recs.values()}
    assert len(coordinators) == 1 and re.fullmatch(r"127\.0\.0\.1:\d+", coordinators.pop())
    for rec in recs.values():
        assert rec["args"] == "-m jaxgpt.train --config configs/tiny.py --workdir runs/a b"
        assert rec["platforms"] == "cpu"
        assert rec["xla_flags"] == "--xla_force_host_platform_device_count=2"
        assert rec["cuda"] == "unset"
    # process 0 talks to the terminal, the others to their log files
    assert "process 0 says hello" in r.stdout and "process 1" not in r.stdout
    assert (tmp_path / "logs" / "jaxgpt-proc-1.log").read_text() == "process 1 says hello\n"


def test_local_gpus_per_process(tmp_path):
    r = _local(tmp_path, "2", GPUS_PER_PROCESS="2", CUDA_VISIBLE_DEVICES="4,5,6,7")
    assert r.returncode == 0, r.stderr
    recs = _records(tmp_path)
    assert (recs[0]["cuda"], recs[1]["cuda"]) == ("4,5", "6,7")
    assert recs[0]["platforms"] == "unset" and recs[0]["xla_flags"] == "unset"
    r = _local(tmp_path, "2", GPUS_PER_PROCESS="3", CUDA_VISIBLE_DEVICES="4,5,6,7")
    assert r.returncode == 2 and "need 6 GPUs" in r.stderr


def test_local_failure_stops_the_others_and_propagates(tmp_path):
    start = time.monotonic()
    r = _local(tmp_path, "2", FAIL_ID="1", HANG_ID="0")
    assert r.returncode == 3, r.stderr
    assert time.monotonic() - start < 30  # process 0 (sleeping 60 s) was stopped, not waited for
    assert "process 1 exited with status 3" in r.stderr
    assert "process 1 says hello" in r.stderr  # the tail of its log is shown


def test_local_forwards_sigterm(tmp_path):
    proc = subprocess.Popen(
        ["bash", str(LAUNCH / "local.sh"), "2"],
        env=_local_env(tmp_path, TRAP_TERM="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not all((tmp_path / "rec" / f"ready-{i}").exists() for i in (0, 1)):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert all((tmp_path / "rec" / f"term-{i}").exists() for i in (0, 1))


def test_local_usage(tmp_path):
    r = _local(tmp_path)
    assert r.returncode == 2 and "Usage: launch/local.sh N" in r.stderr
    r = _local(tmp_path, "two")
    assert r.returncode == 2 and "positive integer" in r.stderr


# --- launch/slurm_gpu.sbatch with a stub srun -----------------------------------------------------


def test_slurm_script(tmp_path):
    text = (LAUNCH / "slurm_gpu.sbatch").read_text().splitlines()
    # sbatch reads #SBATCH lines only up to the first command
    first_command = next(
        i for i, line in enumerate(text[1:], 1) if line and not line.startswith("#")
    )
    directives = [line.split("#", 2)[1].split()[1] for line in text if line.startswith("#SBATCH")]
    assert all(i < first_command for i, line in enumerate(text) if line.startswith("#SBATCH"))
    assert {"--ntasks-per-node=8", "--gpus-per-node=8"} <= set(directives)

    _stub(tmp_path, "srun", '#!/bin/sh\nprintf "%s\\n" "$@" > "$SRUN_LOG"\n')
    env = _env(
        tmp_path,
        SRUN_LOG=str(tmp_path / "srun"),
        SLURM_SUBMIT_DIR=str(tmp_path),
        WORKDIR="/shared/runs/m",
    )
    cmd = ["bash", str(LAUNCH / "slurm_gpu.sbatch"), "--config.train.steps=5", "a b"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "srun").read_text().splitlines() == [
        "--kill-on-bad-exit=1",
        "python",
        "-m",
        "jaxgpt.train",
        "--config",
        "configs/medium.py",
        "--workdir",
        "/shared/runs/m",
        "--config.train.steps=5",
        "a b",
    ]
    env["SLURM_CPUS_PER_TASK"] = "12"  # handed on to srun explicitly
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "srun").read_text().splitlines()[:2] == [
        "--kill-on-bad-exit=1",
        "--cpus-per-task=12",
    ]
    del env["WORKDIR"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "WORKDIR" in r.stderr
