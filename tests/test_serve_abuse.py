"""The server under abuse: a real `python -m jaxgpt.serve` on loopback, many clients mixing valid
requests with malformed and oversized bodies, hang-ups and slow or stalled clients
(benchmarks/serve_abuse.py, whose clients these are, at a smaller scale)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from jaxgpt.run.loop import train
from jaxgpt.serve.app import parse_request, tokenize_prompts
from jaxgpt.serve.errors import ApiError
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import serve_abuse  # noqa: E402  (a script folder, not a package)

CLIENT_TIMEOUT = 2.0
MAX_BODY = 65_536
CAP = 256
STEP_DELAY_MS = 10  # a row of CAP tokens then takes 2.5 s or more: a slot left busy shows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("abuse")
    corpus = tmp / "corpus.txt"
    corpus.write_text("".join(f"line {i % 13}: the cat sat on the mat.\n" for i in range(2000)))
    settings = {"train.steps": 10, "train.eval_every": 0, "model.dropout": 0.0,
                "model.block_size": 64}  # fmt: skip
    train(tiny_config(corpus, **settings), tmp / "run")
    return tmp / "run"


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    flags = [f"--client_timeout={CLIENT_TIMEOUT}", f"--max_body_bytes={MAX_BODY}",
             f"--max_tokens_cap={CAP}", f"--step_delay_ms={STEP_DELAY_MS}"]  # fmt: skip
    log = tmp_path_factory.mktemp("logs") / "server.log"
    srv = serve_abuse.ServerProcess(run_dir, log, "--model_name", "abuse", *flags)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def target(server) -> serve_abuse.Target:
    return serve_abuse.Target(server.url, "abuse", CAP, MAX_BODY, CLIENT_TIMEOUT)


def busy_after_hang_ups(server, target) -> list[float]:
    """Busy slots every 0.25 s after two clients asked for CAP tokens and hung up."""
    rng = random.Random(0)

    async def hang_up() -> list[str]:
        async with httpx.AsyncClient(base_url=target.url, timeout=60) as http:
            return [
                await serve_abuse.disconnect(http, target, rng),  # a stream, after one chunk
                await serve_abuse.abandon(http, target, rng),  # a whole completion, unread
            ]

    assert asyncio.run(hang_up()) == ["ok", "ok"]
    seen = []
    for _ in range(8):
        seen.append(server.metrics()["jaxgpt_busy_slots"])
        time.sleep(0.25)
    return seen


@pytest.mark.parametrize(
    "body, message",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"model": "x", "max_tokens": ' + b"9" * 5000 + b"}", "digits"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bodies_that_broke_the_json_parser_are_400s(body, message):
    with pytest.raises(ApiError, match=message) as error:
        parse_request(body)
    assert error.value.status == 400


def test_a_lone_surrogate_in_a_prompt_is_a_400():
    request = parse_request(b'{"model": "x", "prompt": "ab\\ud800c"}')

    class Tokenizer:
        def encode(self, text):
            raise AssertionError("the check comes before the tokenizer (SentencePiece raised)")

    class Served:
        tokenizer, context = Tokenizer(), 64

    with pytest.raises(ApiError, match="not valid Unicode: surrogates not allowed at character 2"):
        tokenize_prompts(request, Served(), cap=16)


@pytest.mark.e2e
@pytest.mark.slow
def test_hung_up_requests_free_their_slots_at_once(server, target):
    # Each row would decode for 2.5 s or more; a slot is free within 0.5 s of its client leaving.
    seen = busy_after_hang_ups(server, target)
    assert seen[2:] == [0] * 6, seen
    codes = {k: v for k, v in server.metrics().items() if "/v1/completions" in k}
    assert codes.get('jaxgpt_requests_total{endpoint="/v1/completions",code="499"}') == 1, codes


@pytest.mark.e2e
@pytest.mark.slow
def test_abuse_leaves_the_server_serving(server, target):
    report = serve_abuse.measure(server, target, clients=32, seconds=10, seed=1)
    serve_abuse.print_report(report)
    by_kind = report["by_kind"]
    assert set(by_kind) == set(serve_abuse.KINDS) and all(by_kind.values()), by_kind
    # Every client got what its kind should: 200 for valid ones (slow uploads too), a 4xx in
    # OpenAI's shape for malformed bodies, 413 for oversized ones, a hang-up for stalled ones.
    assert report["unexpected"] == 0, json.dumps(by_kind)
    assert report["server_5xx"] == 0
    assert report["alive"] and report["after_ok"] == report["after_n"]
    assert report["busy_slots"] == 0 and report["queue_waiting_choices"] == 0
    assert report["idle_after_s"] < 1.0, report["idle_after_s"]
    rss = report["rss_mb"]
    assert rss["end"] - rss["start"] < 64, rss


@pytest.mark.e2e
@pytest.mark.slow
def test_sigterm_is_not_held_up_by_a_stalled_client(server):
    """A client stopped halfway through its body gets 408 after the client timeout, so a
    graceful stop does not wait for it (uvicorn's would wait --graceful_timeout, 60 s)."""
    body = b'{"model": "abuse", "prompt": "line 1:", "max_tokens": 4}'
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(head.encode() + body[:10])
        time.sleep(0.2)
        code, seconds = server.stop()
        reply = s.recv(4096)
    assert code == 0 and seconds < CLIENT_TIMEOUT + 5, (code, seconds, server.log_tail())
    assert reply.startswith(b"HTTP/1.1 408 "), reply
