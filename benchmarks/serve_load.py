"""Load test of `python -m jaxgpt.serve`: tokens/s and p50/p99 latency at several concurrencies,
and the same 32 requests sent concurrently vs one at a time.

Starts a server subprocess on a loopback port (one CPU device), waits until /health is ready,
then for each concurrency C runs closed-loop clients: C workers, each sending its next request
as soon as the last one returned, until --requests are done. Every level is repeated --repeats
times; the printed figures are medians over repeats. Throughput counts generated tokens
(usage.completion_tokens) over the wall time of the level.

Without --workdir it first trains the configs/tiny.py model shape (4 layers, width 128,
context 128) for a few steps on tinyshakespeare (char tokenizer): the weights barely matter for
speed, the shapes do.

    python benchmarks/serve_load.py [--workdir DIR] [--concurrency 1,8,32] [--requests 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def train_tiny(out: Path) -> Path:
    """The tiny config's model shape, trained briefly on tinyshakespeare."""
    from jaxgpt.config import load_config_file, override
    from jaxgpt.run.loop import train

    if not SHAKESPEARE.is_file():
        sys.exit(f"error: {SHAKESPEARE} is missing; pass --workdir of a trained run instead")
    c = override(
        load_config_file(REPO / "configs" / "tiny.py"),
        **{
            "data.sources": f"text:{SHAKESPEARE}",
            "data.tokenizer.model_type": "char",
            "data.tokenizer.vocab_size": 0,
            "train.steps": 20,
            "train.eval_every": 0,
            "ckpt.every": 20,
            "train.log_every": 10,
        },
    )
    train(c, out)
    return out


def start_server(workdir: Path, port: int, max_batch: int) -> subprocess.Popen:
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    cmd = [
        sys.executable,
        "-m",
        "jaxgpt.serve",
        "--workdir",
        str(workdir),
        "--port",
        str(port),
        "--max_batch",
        str(max_batch),
        "--model_name",
        "bench",
    ]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited:\n{proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return time.perf_counter() - start
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    sys.exit(f"error: the server was not ready after {timeout}s")


def bodies(n: int, max_tokens: int) -> list[dict]:
    """Different prompts and seeds; temperature 1 so rows do not all end alike."""
    lines = SHAKESPEARE.read_text().splitlines() if SHAKESPEARE.is_file() else ["Hello"]
    lines = [x for x in lines if x.strip()]
    return [
        {
            "model": "bench",
            "prompt": lines[(37 * i) % len(lines)][:40],
            "max_tokens": max_tokens,
            "seed": i,
            "temperature": 1.0,
        }
        for i in range(n)
    ]


async def run_level(url: str, reqs: list[dict], concurrency: int) -> dict:
    """Closed loop: `concurrency` workers share the request list."""
    latencies: list[float] = []
    tokens = 0
    todo = iter(reqs)

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for body in todo:
            t0 = time.perf_counter()
            reply = await http.post("/v1/completions", json=body)
            latencies.append(time.perf_counter() - t0)
            reply.raise_for_status()
            tokens += reply.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    return {
        "tokens_per_s": tokens / wall,
        "p50_s": pick(0.5),
        "p99_s": pick(0.99),
        "wall_s": wall,
        "tokens": tokens,
    }


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", help="a trained run (default: train the tiny shape briefly)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", type=int, default=64, help="requests per level and repeat")
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max_batch", type=int, default=32)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else train_tiny(Path(tmp) / "run")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        proc = start_server(workdir, port, args.max_batch)
        try:
            ready_s = wait_ready(url, proc)
            print(f"server ready in {ready_s:.1f}s (load + compile)")
            results = measure(url, args)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def measure(url: str, args: argparse.Namespace) -> dict:
    reqs = bodies(args.requests, args.max_tokens)
    asyncio.run(run_level(url, reqs[:8], 8))  # warm-up: connections, first requests
    levels = {}
    print(
        f"{args.requests} requests per level, max_tokens {args.max_tokens}, "
        f"median of {args.repeats} repeats"
    )
    print(f"{'concurrency':>11} {'tokens/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for c in map(int, args.concurrency.split(",")):
        m = median_of([asyncio.run(run_level(url, reqs, c)) for _ in range(args.repeats)])
        levels[c] = m
        print(
            f"{c:>11} {m['tokens_per_s']:>9.0f} {m['p50_s'] * 1e3:>8.0f} {m['p99_s'] * 1e3:>8.0f}"
        )
    same32 = reqs[:32]
    ratios, serial_s, batched_s = [], [], []
    for _ in range(args.repeats):
        serial_s.append(asyncio.run(run_level(url, same32, 1))["wall_s"])
        batched_s.append(asyncio.run(run_level(url, same32, 32))["wall_s"])
        ratios.append(serial_s[-1] / batched_s[-1])
    ratio = statistics.median(ratios)
    print(
        f"same 32 requests: one at a time {statistics.median(serial_s):.2f}s, all at once "
        f"{statistics.median(batched_s):.2f}s: batching is {ratio:.1f}x faster (median)"
    )
    return {"levels": levels, "batching_ratio": ratio, "serial_s": serial_s, "batched_s": batched_s}


if __name__ == "__main__":
    main()
