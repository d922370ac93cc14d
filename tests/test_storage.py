"""Runs whose workdir is a bucket (gs:// and s3://, on loopback emulators): checkpoints, metrics
and every workdir file go to the bucket, a SIGKILLed run resumes from it bit for bit, and
generate, evaluate, export and serve read from it. Bucket problems are one clear error before any
compile. Nothing here talks to a real cloud (tests/storage_servers.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import jax
import pytest

from jaxgpt import orbax_s3, storage
from jaxgpt.checkpoint import COMMIT_FILE, Checkpointer, committed_steps
from jaxgpt.config import location
from jaxgpt.metrics import read_metrics
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import chaos
from serve_abuse import ServerProcess


def test_the_orbax_functions_s3_support_hooks_into_exist():
    """Fails on an Orbax upgrade that renames them: s3 checkpoints must not break silently."""
    orbax_s3.check_hooks()


def test_s3_kvstore_spec_takes_endpoint_and_region_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    spec = orbax_s3.kvstore_spec("s3://bkt/run/checkpoints/5/")
    assert spec == {
        "driver": "s3",
        "bucket": "bkt",
        "path": "run/checkpoints/5",
        "endpoint": "http://127.0.0.1:9",
        "aws_region": "eu-west-3",
    }


def _state():
    params = {"w": jax.numpy.arange(12.0).reshape(3, 4), "b": jax.numpy.ones(3)}
    return {"step": jax.numpy.asarray(0), "params": params}


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


@pytest.mark.e2e
def test_bucket_checkpoints_never_restore_an_unfinished_upload(bucket):
    """A step whose upload did not finish (no commit file) is not listed, not restored, and a
    later save of that step replaces it; keep-N deletes old steps in the bucket too."""
    url, _ = bucket
    state = _state()
    ckpt = Checkpointer(url + "/run", every=1, keep=2, async_save=True)
    for step in (1, 2, 3):
        ckpt.save(step, jax.tree.map(lambda x, k=step: x + k, state))
    ckpt.close()
    directory = location(url + "/run/checkpoints", "test")
    assert committed_steps(directory) == [2, 3]
    # An upload killed mid-way: the step's objects are there, its commit file is not.
    (directory / "4" / "default" / "partial").write_bytes(b"half an array")
    assert committed_steps(directory) == [2, 3]
    ckpt = Checkpointer(url + "/run", every=1, keep=2, async_save=False)
    restored, step = ckpt.restore_latest(_abstract(state), print)
    assert step == 3 and float(restored["params"]["w"][0, 1]) == 4.0
    ckpt.save(4, jax.tree.map(lambda x: x + 4, state))
    ckpt.close()
    assert committed_steps(directory) == [3, 4]
    assert (directory / "4" / COMMIT_FILE).exists()


def _train_command(corpus, workdir, data_dir) -> list[str]:
    return [*chaos.train_command(corpus, workdir), f"--config.data.path={data_dir}"]


def _run(command, env, log, timeout=600) -> int:
    with log.open("a") as out:
        return subprocess.run(
            command, cwd=REPO, env=env, stdout=out, stderr=out, timeout=timeout
        ).returncode


def _losses(records) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_run_in_a_bucket_killed_and_resumed_matches_an_uninterrupted_run(
    bucket, small_corpus, tmp_path
):
    url, bucket_env = bucket
    env = {**chaos._env(), **bucket_env}
    data = tmp_path / "data"
    clean = tmp_path / "clean"
    assert _run(_train_command(small_corpus, clean, data), env, tmp_path / "clean.log") == 0
    workdir = url + "/run"
    log = tmp_path / "bucket.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            _train_command(small_corpus, workdir, data), cwd=REPO, env=env, stdout=out, stderr=out
        )
    checkpoints = location(workdir + "/checkpoints", "test")
    deadline = time.monotonic() + 300
    while not committed_steps(checkpoints) and proc.poll() is None:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # as a preempted VM: no cleanup at all
    proc.wait()
    killed_at = committed_steps(checkpoints)
    assert killed_at and killed_at[-1] < chaos.STEPS, log.read_text()[-3000:]
    assert _run(_train_command(small_corpus, workdir, data), env, log) == 0, log.read_text()[-3000:]
    assert "resumed from " + workdir in log.read_text()
    # Every step logged once, with the uninterrupted run's loss bit for bit.
    assert _losses(read_metrics(workdir)) == _losses(read_metrics(clean))
    root = location(workdir, "test")
    for name in ("config.json", "summary.json", "loss.png", "tokenizer.model", "metrics.jsonl"):
        assert (root / name).is_file(), name
    assert json.loads((root / "summary.json").read_text())["steps"] == chaos.STEPS
    assert list((root / "tensorboard").iterdir())  # both sessions' event files
    _use_the_run(workdir, env, tmp_path)


def _use_the_run(workdir: str, env: dict[str, str], tmp_path) -> None:
    """generate and evaluate read the bucket; export writes to it; serve loads the export."""
    python = [sys.executable, "-m"]
    flags = ["--workdir", workdir, "--prompt", "ROMEO:", "--max_tokens", "8", "--seed", "0"]
    generated = subprocess.run(
        [*python, "jaxgpt.generate", *flags], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert generated.stdout.startswith("ROMEO:")
    evaluated = subprocess.run(
        [*python, "jaxgpt.evaluate", "--workdir", workdir],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert evaluated.returncode == 0 and "perplexity" in evaluated.stdout, evaluated.stderr[-2000:]
    exported = workdir.rsplit("/", 1)[0] + "/export"
    result = subprocess.run(
        [*python, "jaxgpt.export", "--workdir", workdir, "--out", exported],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {exported} " in result.stdout
    out = location(exported, "test")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    server = ServerProcess(exported, tmp_path / "serve.log", env=env)
    try:
        server.wait_ready(timeout=300)
        reply = httpx.post(
            server.url + "/v1/completions",
            json={"model": "export", "prompt": "ROMEO:", "max_tokens": 4, "temperature": 0},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 4
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)


@pytest.mark.e2e
def test_a_missing_bucket_stops_the_run_before_any_compile(bucket, small_corpus, tmp_path):
    url, bucket_env = bucket
    missing = url.split("://")[0] + "://no-such-bucket-jaxgpt/run"
    env = {**chaos._env(), **bucket_env}
    started = time.monotonic()
    result = subprocess.run(
        _train_command(small_corpus, missing, tmp_path / "data"),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.stderr[-3000:]
    assert missing in error[0] and "create the bucket" in error[0]
    assert "model:" not in result.stdout  # nothing was built
    assert not (tmp_path / "data").exists()
    assert time.monotonic() - started < 120


@pytest.mark.e2e
def test_missing_credentials_name_what_to_set(storage_servers, monkeypatch):
    for key, value in storage_servers("s3").env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    s3fs = pytest.importorskip("s3fs")
    # Instances keep the credentials they found: hide the cached ones for this test, then put
    # them back (etils.epath holds on to the same instance for the rest of the session).
    cached = dict(s3fs.S3FileSystem._cache)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(storage.StorageError) as e:
            storage.check_writable(location("s3://some-bucket/run", "test"))
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem._cache.update(cached)
    assert "AWS_ACCESS_KEY_ID" in str(e.value) and "s3://some-bucket/run" in str(e.value)


@pytest.mark.e2e
def test_an_unreadable_bucket_checkpoint_is_moved_aside_and_the_previous_one_restored(bucket):
    url, _ = bucket
    state = _state()
    ckpt = Checkpointer(url + "/run", every=1, keep=3, async_save=False)
    for step in (1, 2):
        ckpt.save(step, jax.tree.map(lambda x, k=step: x + k, state))
    ckpt.close()
    fs, key = storage.filesystem(url + "/run/checkpoints/2/default")
    for name in fs.find(key):  # every array chunk of step 2 overwritten with garbage
        if "/d/" in name:
            fs.pipe_file(name, b"\x00garbage" * 8)
    ckpt = Checkpointer(url + "/run", every=1, keep=3, async_save=False)
    said = []
    restored, step = ckpt.restore_latest(_abstract(state), said.append)
    ckpt.close()
    assert step == 1 and float(restored["params"]["b"][0]) == 2.0
    assert any("checkpoints/2 cannot be read" in line for line in said), said
    aside = location(url + "/run/checkpoints.unreadable/2", "test")
    assert (aside / COMMIT_FILE).exists()  # kept, never deleted
    left = fs.find(url.split("://")[1] + "/run/checkpoints/2")
    assert committed_steps(location(url + "/run/checkpoints", "test")) == [1], (said, left)


@pytest.mark.e2e
@pytest.mark.slow
def test_fine_tuning_starts_from_a_run_and_an_export_in_a_bucket(bucket, small_corpus, tmp_path):
    """init_from=workdir:URL and init_from=hf:URL: the first step starts from the same weights
    as from the local copies (same loss at step 1)."""
    from jaxgpt.export import main as export_main
    from jaxgpt.run.loop import train
    from tests.helpers import losses, tiny_config

    url, _ = bucket
    data = tmp_path / "data"
    train(tiny_config(small_corpus, **{"train.steps": 5, "data.path": str(data)}), url + "/base")
    export_main(["--workdir", url + "/base", "--out", url + "/base-hf"])
    local_base = storage.local_folder(location(url + "/base", "test"), "test-copy")
    firsts = {}
    for name, spec in [
        ("workdir", f"workdir:{url}/base"),
        ("local", f"workdir:{local_base}"),
        ("hf", f"hf:{url}/base-hf"),
    ]:
        cfg = tiny_config(
            small_corpus, **{"train.steps": 2, "init_from": spec, "data.path": str(tmp_path / name)}
        )
        train(cfg, tmp_path / f"tune-{name}")
        firsts[name] = losses(tmp_path / f"tune-{name}")[1]
    assert firsts["workdir"] == firsts["local"] == firsts["hf"], firsts


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        (FileNotFoundError("The specified bucket does not exist"), "create the bucket"),
        (FileNotFoundError("http://h/storage/v1/b/nobucket/o"), "create the bucket"),
        (PermissionError("Forbidden"), "may write there"),
        (RuntimeError("Unable to locate credentials"), "may write there"),
        (TimeoutError("connect timeout"), "check the URL, the network"),
    ],
)
@pytest.mark.parametrize("url", ["gs://b1/run", "s3://b1/run"])
def test_bucket_errors_say_what_to_do(error, advice, url):
    message = str(storage.explain(url, error, "writing"))
    assert message.startswith(f"writing {url} failed ({type(error).__name__}: ")
    assert advice in message
    wanted = "GOOGLE_APPLICATION_CREDENTIALS" if url.startswith("gs") else "AWS_ACCESS_KEY_ID"
    assert advice == "create the bucket" or wanted in message
