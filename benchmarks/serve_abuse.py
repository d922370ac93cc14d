"""Abuse test of `python -m jaxgpt.serve`: many clients mixing valid requests with bad ones.

Starts a server subprocess on a free loopback port (one CPU device), then for --seconds runs
--clients concurrent clients; each picks its next request's kind at random (seeded):

    valid        a whole completion (POST, stream=false), 8-32 tokens
    stream       a streamed completion read to `data: [DONE]`
    malformed    broken JSON, wrong types, 100,000-deep nesting, a 5,000-digit number, lone
                 surrogates, an unknown model: wants a 4xx in OpenAI's error shape
    oversized    a body past --max_body_bytes, declared or chunked: wants 413
    disconnect   a stream of max_tokens_cap tokens, closed after its first chunk
    abandon      a whole completion of max_tokens_cap tokens, closed before the answer
    slow_upload  a valid request sent in 30 pieces over 20-50% of the client timeout: wants 200
    stalled      headers or body stopped halfway: wants the server to hang up (408 or close)
                 within the client timeout
    slow_reader  a long stream read 1 KB at a time, 20 times a second, for 1-3 client timeouts
    bad_http     bytes that are not HTTP/1.1 (garbage, a TLS hello, a 100 KB header)

Reported: requests and outcomes by kind, p50/p99 latency of the valid requests (valid and
stream), the server's RSS (VmRSS of /proc/PID/status) before, halfway and after, the busy-slot
and queue gauges of /metrics once the clients stopped (and how long they took to reach 0), the
5xx answers /metrics counted, whether valid requests still succeed afterwards, whether the
server is alive, and its exit code after SIGTERM. A table, then one JSON line.

Without --workdir it first trains the tiny config shape briefly (benchmarks/serve_load.py).

    python benchmarks/serve_abuse.py [--workdir DIR] [--seconds 60] [--clients 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
VALID = ("valid", "stream")
PROMPTS = ("line 3: the", "The cat sat", "ROMEO:\n", "First Citizen:\n", "Hello", "the mat.")


class ServerProcess:
    """`python -m jaxgpt.serve` on a free loopback port (one CPU device), logging to a file."""

    def __init__(self, workdir: Path, log: Path, *flags: str, env: dict[str, str] | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "jaxgpt.serve", "--workdir", str(workdir),
               "--port", str(self.port), *flags]  # fmt: skip
        env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", **(env or {})}
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self, headers: dict[str, str] | None = None, timeout: float = 600) -> float:
        """Seconds until /health said ready (sent with `headers`, e.g. an API key);
        RuntimeError (with the log) if it never did."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", headers=headers, timeout=5).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def rss_mb(self) -> float:
        """Resident memory of the server process (VmRSS), in MiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, keyed by name with labels: `jaxgpt_busy_slots`, ..."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        samples = (x.rsplit(" ", 1) for x in text.splitlines() if x and not x.startswith("#"))
        return {name: float(value) for name, value in samples}

    def stop(self, timeout: float = 120) -> tuple[int, float]:
        """SIGTERM, then wait: (exit code, seconds it took); killed if it takes too long."""
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, time.monotonic() - start


@dataclasses.dataclass(frozen=True)
class Target:
    """What the clients know about the server they abuse (the flags it was started with)."""

    url: str
    model: str
    max_tokens_cap: int
    max_body_bytes: int
    client_timeout: float

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)


@dataclasses.dataclass(frozen=True)
class Result:
    kind: str
    outcome: str  # "ok", or what went wrong
    seconds: float


def valid_body(t: Target, rng: random.Random, **extra) -> dict:
    return {
        "model": t.model,
        "prompt": rng.choice(PROMPTS),
        "max_tokens": rng.randint(8, 32),
        "temperature": 1.0,
        "seed": rng.randrange(2**31),
        **extra,
    }


def http_request(t: Target, body: bytes, path: str = "/v1/completions") -> bytes:
    """A whole HTTP/1.1 POST, closing the connection after the answer."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {t.url.removeprefix('http://')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def status_of(reply: bytes) -> int | None:
    """The status code of a raw HTTP reply, or None if nothing (or no status line) came."""
    parts = reply.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def expect(status: int | None, want: Callable[[int], bool]) -> str:
    if status is None:
        return "no answer"
    return "ok" if want(status) else f"status {status}"


async def read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything until the server closes the connection (or `timeout` passes)."""
    chunks = []
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def raw(t: Target, talk: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable]):
    """Run `talk` over a fresh connection, and close it whatever happens."""
    reader, writer = await asyncio.open_connection(*t.host_port)
    try:
        return await talk(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# --- the kinds of client ---------------------------------------------------------------------


async def valid(http: httpx.AsyncClient, t: Target, rng: random.Random) -> str:
    reply = await http.post("/v1/completions", json=valid_body(t, rng))
    if reply.status_code != 200:
        return f"status {reply.status_code}"
    choice = reply.json()["choices"][0]  # 0 tokens is fine: the first draw may end the text
    return "ok" if choice["finish_reason"] in ("stop", "length") else "bad body"


async def stream(http: httpx.AsyncClient, t: Target, rng: random.Random) -> str:
    body = valid_body(t, rng, stream=True)
    async with http.stream("POST", "/v1/completions", json=body) as reply:
        if reply.status_code != 200:
            return f"status {reply.status_code}"
        lines = [x async for x in reply.aiter_lines() if x.startswith("data: ")]
    return "ok" if lines and lines[-1] == "data: [DONE]" else "no [DONE]"


def malformed_bodies(t: Target) -> list[bytes]:
    ok = {"model": t.model, "prompt": "Hello", "max_tokens": 4}
    as_json = lambda **kw: json.dumps({**ok, **kw}).encode()
    return [
        b'{"model": "' + t.model.encode() + b'", "prompt": ',  # cut short
        b"\xff\xfe\x00garbage",  # not UTF-8
        b"",
        b"null",
        b"[1, 2, 3]",
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser recurses
        b'{"model": "x", "max_tokens": ' + b"9" * 5000 + b"}",  # past int()'s digit limit
        b'{"model": "' + t.model.encode() + b'", "prompt": "\\ud800 lone surrogate"}',
        b'{"model": "' + t.model.encode() + b'", "temperature": NaN}',
        as_json(max_tokens="4"),
        as_json(prompt={"not": "a prompt"}),
        as_json(max_tokens=t.max_tokens_cap + 1),
        as_json(prompt=[[10**12]]),
        as_json(n=0),
        as_json(bogus_field=1),
        as_json(model="no-such-model"),
    ]


async def malformed(http: httpx.AsyncClient, t: Target, rng: random.Random) -> str:
    reply = await http.post("/v1/completions", content=rng.choice(malformed_bodies(t)))
    outcome = expect(reply.status_code, lambda s: 400 <= s < 500)
    if outcome == "ok" and "error" not in reply.json():
        return "not OpenAI's error shape"
    return outcome


async def oversized(http: httpx.AsyncClient, t: Target, rng: random.Random) -> str:
    size = t.max_body_bytes + rng.randint(1, t.max_body_bytes)
    body = json.dumps({"model": t.model, "prompt": "x" * size}).encode()

    async def chunks():  # no Content-Length: the server only learns the size as it reads
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    content = body if rng.random() < 0.5 else chunks()
    reply = await http.post("/v1/completions", content=content)
    return expect(reply.status_code, lambda s: s == 413)


async def disconnect(http: httpx.AsyncClient, t: Target, rng: random.Random) -> str:
    body = valid_body(t, rng, stream=True, max_tokens=t.max_tokens_cap)
    async with http.stream("POST", "/v1/completions", json=body) as reply:
        if reply.status_code != 200:
            return f"status {reply.status_code}"
        async for line in reply.aiter_lines():
            if line.startswith("data: "):
                return "ok"  # leaving the block mid-stream closes the connection
    return "no chunk"


async def abandon(http: httpx.AsyncClient, t: Target, rng: random.Random) -> str:
    body = json.dumps(valid_body(t, rng, max_tokens=t.max_tokens_cap)).encode()

    async def talk(reader, writer):
        writer.write(http_request(t, body))
        await writer.drain()
        await asyncio.sleep(rng.uniform(0.05, 0.5))
        return "ok"

    return await raw(t, talk)


async def slow_upload(http: httpx.AsyncClient, t: Target, rng: random.Random) -> str:
    data = http_request(t, json.dumps(valid_body(t, rng)).encode())
    pieces = 30
    pause = rng.uniform(0.2, 0.5) * t.client_timeout / pieces

    async def talk(reader, writer):
        step = -(-len(data) // pieces)
        for i in range(0, len(data), step):
            writer.write(data[i : i + step])
            await writer.drain()
            await asyncio.sleep(pause)
        return expect(status_of(await read_all(reader, 120)), lambda s: s == 200)

    return await raw(t, talk)


async def stalled(http: httpx.AsyncClient, t: Target, rng: random.Random) -> str:
    data = http_request(t, json.dumps(valid_body(t, rng)).encode())
    cut = data.index(b"\r\n\r\n") // 2 if rng.random() < 0.5 else len(data) - 10

    async def talk(reader, writer):
        writer.write(data[:cut])
        await writer.drain()
        try:  # the server should hang up on its own within its client timeout
            reply = await read_all(reader, t.client_timeout + 10)
        except TimeoutError:
            return "not closed by the server"
        status = status_of(reply)
        return "ok" if status in (None, 408) else f"status {status}"

    return await raw(t, talk)


async def slow_reader(http: httpx.AsyncClient, t: Target, rng: random.Random) -> str:
    body = valid_body(t, rng, stream=True, max_tokens=t.max_tokens_cap, logprobs=5)

    async def talk(reader, writer):
        writer.write(http_request(t, json.dumps(body).encode()))
        await writer.drain()
        first = await asyncio.wait_for(reader.read(1024), 60)
        give_up = time.monotonic() + rng.uniform(1, 3) * t.client_timeout
        while time.monotonic() < give_up and await reader.read(1024):
            await asyncio.sleep(0.05)
        return expect(status_of(first), lambda s: s == 200)

    return await raw(t, talk)


BAD_HTTP = [
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # a TLS ClientHello
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
]


async def bad_http(http: httpx.AsyncClient, t: Target, rng: random.Random) -> str:
    data = rng.choice(BAD_HTTP)

    async def talk(reader, writer):
        writer.write(data)
        await writer.drain()
        try:
            reply = await read_all(reader, t.client_timeout + 10)
        except ConnectionResetError:
            return "ok"  # hung up on: fine
        status = status_of(reply)  # (a 100 KB header is within h11's limits: 200 then)
        return "ok" if status is None or status < 500 else f"status {status}"

    return await raw(t, talk)


KINDS: dict[str, tuple[float, Callable]] = {  # kind: (weight, client)
    "valid": (30, valid),
    "stream": (10, stream),
    "malformed": (15, malformed),
    "oversized": (8, oversized),
    "disconnect": (10, disconnect),
    "abandon": (7, abandon),
    "slow_upload": (6, slow_upload),
    "stalled": (4, stalled),
    "slow_reader": (5, slow_reader),
    "bad_http": (5, bad_http),
}


# --- the run ---------------------------------------------------------------------------------


async def client(
    http: httpx.AsyncClient, t: Target, seed: int, deadline: float, out: list[Result]
) -> None:
    """One client: requests of random kinds, one at a time, until the deadline."""
    rng = random.Random(seed)
    names, weights = list(KINDS), [w for w, _ in KINDS.values()]
    while time.monotonic() < deadline:
        kind = rng.choices(names, weights)[0]
        start = time.monotonic()
        try:
            outcome = await KINDS[kind][1](http, t, rng)
        except Exception as e:  # the client's own view: a timeout, a reset, ...
            outcome = f"{type(e).__name__}"
        out.append(Result(kind, outcome, time.monotonic() - start))


async def sample_rss(server: ServerProcess, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        out.append(server.rss_mb())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def abuse(
    server: ServerProcess, t: Target, clients: int, seconds: float, seed: int
) -> tuple[list[Result], list[float]]:
    """All the clients for `seconds` (requests under way then still finish), sampling RSS."""
    results: list[Result] = []
    rss: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(server, stop, rss))
    # Idle connections expire before the server closes them (uvicorn's keep-alive is 5 s, and
    # the client timeout also bounds it): a request sent as the server hangs up would fail.
    expiry = min(4.0, t.client_timeout / 2)
    limits = httpx.Limits(
        max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=expiry
    )
    async with httpx.AsyncClient(base_url=t.url, timeout=120, limits=limits) as http:
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *(client(http, t, seed + i, deadline, results) for i in range(clients))
        )
    stop.set()
    await sampler
    return results, rss


async def calm(t: Target, n: int, seed: int) -> list[Result]:
    """`n` valid requests, 8 at a time: the baseline before and the check after the abuse."""
    rng = random.Random(seed)
    gate = asyncio.Semaphore(8)
    limits = httpx.Limits(keepalive_expiry=min(4.0, t.client_timeout / 2))
    async with httpx.AsyncClient(base_url=t.url, timeout=120, limits=limits) as http:

        async def one(kind: str) -> Result:
            async with gate:
                start = time.monotonic()
                return Result(kind, await KINDS[kind][1](http, t, rng), time.monotonic() - start)

        return await asyncio.gather(*(one(VALID[i % 2]) for i in range(n)))


def wait_idle(server: ServerProcess, timeout: float) -> tuple[dict[str, float], float]:
    """/metrics once no slot is busy and no choice waits (or at the timeout), and how long
    that took."""
    start = time.monotonic()
    while True:
        m = server.metrics()
        idle = m["jaxgpt_busy_slots"] == 0 and m["jaxgpt_queue_waiting_choices"] == 0
        if idle or time.monotonic() - start > timeout:
            return m, time.monotonic() - start
        time.sleep(0.1)


def server_errors(metrics: dict[str, float]) -> float:
    """The 5xx answers /metrics counted so far (a /health 503 while loading is one)."""
    return sum(v for k, v in metrics.items() if k.startswith("jaxgpt_requests_total{")
               and 'code="5' in k)  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def measure(server: ServerProcess, t: Target, clients: int, seconds: float, seed: int = 0) -> dict:
    """Warm up, abuse, let the server settle, check it still serves: the report (a dict)."""
    before = asyncio.run(calm(t, 16, seed - 1))
    errors_before = server_errors(server.metrics())
    rss_start = server.rss_mb()
    results, rss = asyncio.run(abuse(server, t, clients, seconds, seed))
    gauges, idle_s = wait_idle(server, 30)
    rss_end = server.rss_mb()
    after = asyncio.run(calm(t, 16, seed - 2))
    valid_s = [r.seconds for r in results if r.kind in VALID and r.outcome == "ok"]
    by_kind = {k: dict(Counter(r.outcome for r in results if r.kind == k)) for k in KINDS}
    server_5xx = server_errors(gauges) - errors_before
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(results),
        "by_kind": by_kind,
        "unexpected": sum(r.outcome != "ok" for r in results),
        "valid_ok": len(valid_s),
        "valid_p50_ms": 1000 * percentile(valid_s, 0.5),
        "valid_p99_ms": 1000 * percentile(valid_s, 0.99),
        "calm_p50_ms": 1000 * statistics.median(r.seconds for r in before),
        "rss_mb": {
            "start": rss_start,
            "middle": rss[len(rss) // 2],
            "end": rss_end,
            "max": max(rss),
        },
        "busy_slots": gauges["jaxgpt_busy_slots"],
        "queue_waiting_choices": gauges["jaxgpt_queue_waiting_choices"],
        "idle_after_s": idle_s,
        "server_5xx": server_5xx,
        "after_ok": sum(r.outcome == "ok" for r in after),
        "after_n": len(after),
        "alive": server.proc.poll() is None,
    }


def print_report(report: dict) -> None:
    print(
        f"{report['clients']} clients for {report['seconds']:.0f}s: {report['requests']} requests"
    )
    print(f"{'kind':<12} {'requests':>8}  outcomes")
    for kind, outcomes in report["by_kind"].items():
        described = ", ".join(f"{o}: {n}" for o, n in sorted(outcomes.items()))
        print(f"{kind:<12} {sum(outcomes.values()):>8}  {described}")
    rss = report["rss_mb"]
    print(
        f"valid requests: {report['valid_ok']} ok, p50 {report['valid_p50_ms']:.0f} ms, "
        f"p99 {report['valid_p99_ms']:.0f} ms (calm p50 {report['calm_p50_ms']:.0f} ms)\n"
        f"server RSS MiB: start {rss['start']:.0f}, middle {rss['middle']:.0f}, "
        f"end {rss['end']:.0f}, max {rss['max']:.0f}\n"
        f"after: busy_slots {report['busy_slots']:g}, queue_waiting_choices "
        f"{report['queue_waiting_choices']:g} ({report['idle_after_s']:.1f}s to idle), "
        f"5xx counted meanwhile {report['server_5xx']:g}, valid requests {report['after_ok']}/"
        f"{report['after_n']} ok, alive {report['alive']}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", help="a trained run (default: train the tiny shape briefly)")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--client_timeout", type=float, default=5.0, help="the server's flag")
    p.add_argument("--max_body_bytes", type=int, default=1_000_000, help="the server's flag")
    p.add_argument("--max_tokens_cap", type=int, default=256, help="the server's flag")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--log", help="keep the server's log here")
    args = p.parse_args()

    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        if args.workdir:
            workdir = Path(args.workdir)
        else:
            from serve_load import train_tiny  # this folder is on sys.path when run as a script

            workdir = train_tiny(Path(tmp) / "run")
        report = run(workdir, Path(args.log or Path(tmp) / "server.log"), args)
    report["total_s"] = time.monotonic() - start
    print(json.dumps(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def run(workdir: Path, log: Path, args: argparse.Namespace) -> dict:
    """Start the server, measure, stop it: the report, with its exit code and stop time."""
    flags = [f"--{k}={getattr(args, k)}" for k in
             ("client_timeout", "max_body_bytes", "max_tokens_cap")]  # fmt: skip
    server = ServerProcess(workdir, log, "--model_name", "abuse", *flags)
    try:
        print(f"server ready in {server.wait_ready():.1f}s (load + compile)")
        t = Target(server.url, "abuse", args.max_tokens_cap, args.max_body_bytes,
                   args.client_timeout)  # fmt: skip
        report = measure(server, t, args.clients, args.seconds, args.seed)
    finally:
        code, stop_s = server.stop()
    report.update(exit_code=code, stop_s=stop_s)
    print_report(report)
    print(f"stopped by SIGTERM in {stop_s:.1f}s, exit code {code}")
    return report


if __name__ == "__main__":
    main()
