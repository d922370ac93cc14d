"""The HTTP app in-process (FastAPI's TestClient), with a scripted engine and no weights: auth,
body limits, clear 400s, models, health while loading, metrics, responses and streams."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from jaxgpt.model import GPT, GPTConfig
from jaxgpt.serve.app import Backend, Settings, create_app
from jaxgpt.serve.engine import Event, Job, QueueFullError, ShuttingDownError, TokenLogprob
from jaxgpt.serve.loading import ServedModel

CONTEXT = 8
KEY = "sekrit-key"
OK = {"model": "tiny", "prompt": "ab", "max_tokens": 3}


class CharTokenizer:
    """a..z and space are ids 0..26; 27 is end-of-text."""

    alphabet = "abcdefghijklmnopqrstuvwxyz "
    eot_id = 27
    eot_token = "<eot>"
    vocab_size = 28

    def encode(self, text: str) -> list[int]:
        return [self.alphabet.index(ch) for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] for i in ids if i != self.eot_id)


class ScriptedEngine:
    """Stands in for the batching engine: choice i answers "xyz"[:max_tokens] at once, one event
    per token; `fail` makes submit raise, `error_choice` makes that choice fail mid-way."""

    def __init__(self, max_queue: int = 8):
        self.max_queue, self.n_waiting, self.n_busy, self.n_scoring = max_queue, 3, 2, 1
        self.can_score = True
        self.jobs: list[Job] = []
        self.cancelled: list[Job] = []
        self.fail: Exception | None = None
        self.error_choice: int | None = None
        self.stopped = threading.Event()

    def submit(self, job: Job) -> None:
        if self.fail is not None:
            raise self.fail
        self.jobs.append(job)
        tok = CharTokenizer()
        for i in range(job.n_choices):
            if i == self.error_choice:
                job.emit(Event(i, "", 0, [], "error", error="decoding failed: boom"))
                continue
            text = "xyz"[: job.max_tokens]
            end = "length" if len(text) == 3 else "stop"
            if not text:  # echo with max_tokens 0: one event that only finishes the choice
                job.emit(Event(i, "", 0, [], "length"))
            for k, ch in enumerate(text):
                t = tok.encode(ch)[0]
                info = [TokenLogprob(t, -0.5, [(t, -0.5), (0, -1.5)])] if job.logprobs else []
                job.emit(Event(i, ch, 1, info, end if k == len(text) - 1 else None))

    def cancel(self, job: Job) -> None:
        self.cancelled.append(job)

    def stop(self, timeout: float | None = None) -> None:
        self.stopped.set()


def served() -> ServedModel:
    config = GPTConfig(vocab_size=32, block_size=CONTEXT, n_layer=1, n_head=1, n_embd=8)
    return ServedModel("tiny", GPT(config), None, CharTokenizer())


def wait_ready(client: TestClient, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 10
    while client.get("/health", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "the app never became ready"
        time.sleep(0.01)


def start(settings: Settings, engine: ScriptedEngine):
    """A client of a ready app (its lifespan runs inside the `with`)."""
    app = create_app(settings, lambda metrics: Backend(served(), engine))
    return TestClient(app)


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def client(engine):
    with start(Settings(max_body_bytes=300), engine) as c:
        wait_ready(c)
        yield c


def post(client: TestClient, body, **kw):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/completions", content=content, **kw)


def error_of(reply) -> dict:
    return reply.json()["error"]


def metric(client: TestClient, line_start: str, headers: dict[str, str] | None = None) -> float:
    text = client.get("/metrics", headers=headers).text
    [line] = [x for x in text.splitlines() if x.startswith(line_start + " ")]
    return float(line.split()[-1])


def test_completion_response_and_job(client, engine):
    reply = post(client, {**OK, "n": 2, "stop": "q", "seed": 7, "temperature": 0.5, "top_k": 3})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == "tiny"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "xyz", "length"),
        (1, "xyz", "length"),
    ]
    assert body["choices"][0]["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8}
    [job] = engine.jobs
    assert job.prompts == [[0, 1]] and job.n == 2 and job.max_tokens == 3
    assert (job.temperature, job.top_p, job.top_k, job.seed) == (0.5, 1.0, 3, 7)
    assert job.stop == ["q"] and not job.logprobs and not job.stream
    assert engine.cancelled == []  # every choice finished: nothing to cancel


def test_prompt_forms_reach_the_engine_as_token_ids(client, engine):
    assert post(client, {**OK, "prompt": ""}).status_code == 200
    assert post(client, {**OK, "prompt": [3, 4]}).status_code == 200
    assert post(client, {**OK, "prompt": ["a", "bc"], "max_tokens": 1}).status_code == 200
    assert [j.prompts for j in engine.jobs] == [[[27]], [[3, 4]], [[0], [1, 2]]]  # "" -> eot
    seeds = [j.seed for j in engine.jobs]
    assert all(0 <= s < 2**31 for s in seeds) and len(set(seeds)) == 3  # random when unset


def test_logprobs_in_the_response(client, engine):
    body = post(client, {**OK, "logprobs": 1}).json()
    assert engine.jobs[0].logprobs
    lp = body["choices"][0]["logprobs"]
    assert lp["tokens"] == ["x", "y", "z"] and lp["text_offset"] == [0, 1, 2]
    assert lp["top_logprobs"] == [{"x": -0.5}, {"y": -0.5}, {"z": -0.5}]  # trimmed to 1


def sse(reply) -> list[str]:
    lines = [line for line in reply.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines), reply.text
    return [line[6:] for line in lines]


def test_stream_of_chunks_with_usage_and_done(client, engine):
    body = {**OK, "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    reply = post(client, body)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.headers["cache-control"] == "no-cache"
    data = sse(reply)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    texts = [(c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in chunks[:-1]]
    assert texts == [("x", None), ("y", "stop")]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    assert len({c["id"] for c in chunks}) == 1 and engine.jobs[0].stream


def test_stream_without_usage_ends_with_done(client):
    data = sse(post(client, {**OK, "stream": True}))
    assert data[-1] == "[DONE]" and all("usage" not in json.loads(d) for d in data[:-1])


def test_a_failed_choice_is_a_500_and_cancels_the_rest(client, engine):
    engine.error_choice = 0
    reply = post(client, {**OK, "n": 2})
    assert reply.status_code == 500
    assert error_of(reply)["type"] == "server_error"
    assert error_of(reply)["message"] == "decoding failed: boom"
    assert engine.cancelled == engine.jobs  # choice 1 had not finished yet


def test_a_failed_choice_in_a_stream_is_an_error_chunk(client, engine):
    engine.error_choice = 0
    data = sse(post(client, {**OK, "stream": True}))
    assert json.loads(data[0])["error"]["message"] == "decoding failed: boom"
    assert data[-1] == "[DONE]"


def test_full_queue_and_shutdown_are_503_with_retry_after(client, engine):
    engine.fail = QueueFullError("the queue is full (8 choices waiting, limit 8); retry later")
    reply = post(client, OK)
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
    assert error_of(reply)["code"] == "queue_full" and "queue is full" in error_of(reply)["message"]
    engine.fail = ShuttingDownError("the server is shutting down")
    reply = post(client, OK)
    assert reply.status_code == 503 and reply.headers["retry-after"] == "5"
    assert error_of(reply)["type"] == "server_error"


TOO_LONG = "context_length_exceeded"
CASES = [
    (b'{"model": "tiny", "prompt": ', "not valid JSON", None, "invalid_json"),
    (b"\xff\xfe", "not valid JSON", None, "invalid_json"),
    (b"[1, 2]", "must be a JSON object", None, None),
    ({**OK, "max_tokens": "3"}, "max_tokens: Input should be a valid integer", "max_tokens", None),
    ({"prompt": "ab"}, "model: field required", "model", None),
    ({**OK, "stream_options": {"x": 1}}, "Extra inputs", "stream_options.x", None),
    ({**OK, "max_tokenz": 5}, "max_tokenz: Extra inputs are not permitted", "max_tokenz", None),
    ({**OK, "echo": True, "max_tokens": 1, "stream": True}, "echo cannot be streamed", None,
     None),
    ({**OK, "echo": True}, "echo supports max_tokens 0 (score the prompt) or 1", None, None),
    ({**OK, "max_tokens": 0}, "max_tokens 0 needs echo: true", None, None),
    ({**OK, "logprobs": 6}, "logprobs must be 0 to 5", "logprobs", None),
    ({**OK, "echo": True, "max_tokens": 1, "prompt": [[1] * 9]},
     "prompt (9 tokens) is more than the model's context of 8 tokens; a scored (echo) prompt "
     "must fit the context; with lm-eval's local-completions pass max_length=9 in --model_args",
     "prompt", TOO_LONG),
    ({**OK, "echo": True, "max_tokens": 0, "prompt": [[3, 28]]},
     "prompt token ids must be in [0, 28)", "prompt", None),
    ({**OK, "num_beams": 2}, "num_beams > 1 (beam search) is not supported", None, None),
    ({**OK, "stop": ["q"] * 17}, "at most 16 stop sequences", "stop", None),
    ({**OK, "max_tokens": 33}, "more than this server allows (32)", "max_tokens", None),
    ({**OK, "prompt": "abcdefghi"}, "prompt (9 tokens) is more than the model's context of 8",
     "prompt", TOO_LONG),
    ({**OK, "prompt": [[1] * 9]}, "more than the model's context", "prompt", TOO_LONG),
    ({**OK, "prompt": [[1, 28]]}, "prompt token ids must be in [0, 28)", "prompt", None),
    ({**OK, "prompt": [[]]}, "needs at least one", "prompt", None),
    ({**OK, "prompt": [-1]}, "(got [-1])", "prompt", None),
    ({**OK, "n": 9}, "1 prompts × n=9 is more choices than this server queues (8)", None, None),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message", "param", "code"), CASES)
def test_bad_requests_are_clear_400s(client, engine, body, message, param, code):
    reply = post(client, body)
    assert reply.status_code == 400, reply.text
    error = error_of(reply)
    assert message in error["message"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert engine.jobs == []  # refused before anything was queued


def test_the_context_bound_is_inclusive_and_the_cap_configurable(client, engine):
    """A prompt may fill the context; max_tokens defaults to a cap of 4 contexts."""
    reply = post(client, {**OK, "prompt": "a" * CONTEXT, "max_tokens": 4 * CONTEXT})
    assert reply.status_code == 200, reply.text
    assert engine.jobs[0].prompts == [[0] * CONTEXT]
    with start(Settings(max_tokens_cap=2), engine) as c:
        wait_ready(c)
        reply = post(c, OK)
        assert reply.status_code == 400 and "allows (2)" in error_of(reply)["message"]
        assert post(c, {**OK, "max_tokens": 2}).status_code == 200


def test_unknown_model_is_404(client):
    reply = post(client, {**OK, "model": "gpt-4"})
    assert reply.status_code == 404
    error = error_of(reply)
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "this server serves 'tiny'" in error["message"]


def test_body_limit_on_content_length_and_while_reading(client):
    def padded(size: int) -> bytes:
        raw = json.dumps(OK).encode()
        return raw + b" " * (size - len(raw))

    assert post(client, padded(300)).status_code == 200  # exactly the limit is allowed
    reply = post(client, padded(301))
    assert reply.status_code == 413
    assert error_of(reply)["code"] == "body_too_large"
    assert "limit of 300 bytes" in error_of(reply)["message"]
    # No Content-Length (chunked upload): the limit is applied while reading.
    chunked = client.post("/v1/completions", content=iter([padded(301)]))
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413 and error_of(chunked)["code"] == "body_too_large"


def test_models_and_unknown_paths(client):
    assert client.get("/v1/models").json() == {
        "object": "list",
        "data": [{"id": "tiny", "object": "model", "created": 0, "owned_by": "jaxgpt"}],
    }
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    missing = client.get("/v1/models/other")
    assert missing.status_code == 404 and error_of(missing)["code"] == "model_not_found"
    nowhere = client.get("/v1/nothing")
    assert nowhere.status_code == 404
    assert "no endpoint /v1/nothing; this server has /v1/" in error_of(nowhere)["message"]
    assert client.get("/v1/completions").status_code == 405  # wrong method, still OpenAI's shape
    assert "error" in client.get("/v1/completions").json()
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404


def test_metrics_count_requests_tokens_and_read_the_engine(client):
    post(client, OK)
    post(client, {**OK, "n": 0})
    client.get("/v1/nothing")
    reply = client.get("/metrics")
    assert reply.headers["content-type"].startswith("text/plain")
    assert "version=0.0.4" in reply.headers["content-type"]
    requests = 'jaxgpt_requests_total{endpoint="%s",code="%s"}'
    assert metric(client, requests % ("/v1/completions", 200)) == 1
    assert metric(client, requests % ("/v1/completions", 400)) == 1
    assert metric(client, requests % ("other", 404)) == 1
    assert metric(client, "jaxgpt_prompt_tokens_total") == 2
    assert metric(client, "jaxgpt_completion_tokens_total") == 3
    assert metric(client, "jaxgpt_request_duration_seconds_count") == 1
    assert metric(client, "jaxgpt_time_to_first_token_seconds_count") == 1
    assert metric(client, "jaxgpt_ready") == 1
    assert metric(client, "jaxgpt_queue_waiting_choices") == 3  # the engine's n_waiting
    assert metric(client, "jaxgpt_busy_slots") == 2
    assert metric(client, "jaxgpt_queue_waiting_score_rows") == 1


def test_api_key_guards_every_endpoint(engine):
    with start(Settings(api_key=KEY), engine) as c:
        good = {"Authorization": f"Bearer {KEY}"}
        wait_ready(c, good)
        wrong = ("", "Bearer wrong", KEY, f"bearer {KEY}", f"Bearer {KEY}x")
        for header in wrong:
            reply = post(c, OK, headers={"Authorization": header} if header else {})
            assert reply.status_code == 401, header
            assert reply.headers["www-authenticate"] == "Bearer"
            error = error_of(reply)
            assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
            assert "Authorization: Bearer <key>" in error["message"]
        for path in ("/health", "/metrics", "/v1/models", "/v1/nothing", "/tokenizer_info"):
            assert c.get(path).status_code == 401, path
        for path in ("/tokenize", "/detokenize"):
            assert c.post(path, json={"prompt": "ab", "tokens": [1]}).status_code == 401, path
        assert engine.jobs == []
        assert post(c, OK, headers=good).status_code == 200
        assert c.get("/v1/models", headers=good).status_code == 200
        requests = 'jaxgpt_requests_total{endpoint="/v1/completions",code="%s"}'
        assert metric(c, requests % 401, good) == 5
        assert metric(c, requests % 200, good) == 1


def test_health_and_api_wait_for_the_model(engine):
    loaded = threading.Event()

    def slow_load(metrics) -> Backend:
        assert loaded.wait(10)
        return Backend(served(), engine)

    with TestClient(create_app(Settings(), slow_load)) as c:
        health = c.get("/health")
        assert health.status_code == 503 and health.headers["retry-after"] == "5"
        assert health.json() == {"status": "the server is loading the model; retry shortly"}
        for reply in (c.get("/v1/models"), post(c, OK)):
            assert reply.status_code == 503 and error_of(reply)["type"] == "server_error"
        assert metric(c, "jaxgpt_ready") == 0 and metric(c, "jaxgpt_busy_slots") == 0
        loaded.set()
        wait_ready(c)
        assert c.get("/health").json() == {"status": "ok", "model": "tiny"}
        assert not engine.stopped.is_set()
    assert engine.stopped.is_set()  # the lifespan stops the engine on shutdown


def test_a_failed_load_is_reported_and_never_ready():
    errors: list[BaseException] = []
    done = threading.Event()

    def broken_load(metrics) -> Backend:
        raise FileNotFoundError("no checkpoints/ here")

    def on_error(e: BaseException) -> None:
        errors.append(e)
        done.set()

    with TestClient(create_app(Settings(), broken_load, on_error)) as c:
        assert done.wait(10)
        assert c.get("/health").status_code == 503
    assert [type(e) for e in errors] == [FileNotFoundError]


def test_tokenizer_info_names_end_of_text_as_bos_and_eos(client):
    info = client.get("/tokenizer_info").json()
    assert (info["eos_token"], info["bos_token"], info["pad_token"]) == ("<eot>", "<eot>", None)
    assert (info["eos_token_id"], info["vocab_size"], info["model_max_length"]) == (27, 28, 8)
    assert info["chat_template"] is None


def test_tokenize_and_detokenize(client):
    reply = client.post("/tokenize", json={"prompt": "ab c", "add_special_tokens": False})
    assert reply.json() == {"tokens": [0, 1, 26, 2], "count": 4, "max_model_len": CONTEXT}
    # lm-eval finds the eos id as encode(eos_token)[0]: the name is the token, not its letters.
    assert client.post("/tokenize", json={"prompt": "<eot>"}).json()["tokens"] == [27]
    assert client.post("/tokenize", json={"prompt": ""}).json()["tokens"] == []
    assert client.post("/detokenize", json={"tokens": [7, 8]}).json() == {"prompt": "hi"}
    assert client.post("/tokenize", json={"model": "tiny", "prompt": "a"}).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/tokenize", {"prompt": 5}, 400, "prompt: Input should be a valid string"),
        ("/tokenize", {"prompt": "a", "extra": 1}, 400, "extra: Extra inputs are not permitted"),
        ("/tokenize", {"messages": []}, 400, "chat messages are not supported"),
        ("/tokenize", {"prompt": "\ud800"}, 400, "prompt is not valid Unicode"),
        ("/tokenize", {"model": "gpt-4", "prompt": "a"}, 404, "this server serves 'tiny'"),
        ("/detokenize", {"tokens": [1, 28]}, 400, "token ids must be in [0, 28) (got [28])"),
        ("/detokenize", {"tokens": [-1]}, 400, "(got [-1])"),
        ("/detokenize", {"tokens": "ab"}, 400, "tokens: Input should be a valid list"),
        ("/detokenize", [1, 2], 400, "must be a JSON object"),
    ],
)
def test_tokenizer_endpoints_refuse_bad_requests(client, path, body, status, message):
    reply = client.post(path, content=json.dumps(body).encode())
    assert reply.status_code == status, reply.text
    assert message in error_of(reply)["message"]
    requests = 'jaxgpt_requests_total{endpoint="%s",code="%s"}'
    assert metric(client, requests % (path, status)) == 1


def test_tokenizer_endpoints_wait_for_the_model(engine):
    loaded = threading.Event()

    def slow_load(metrics) -> Backend:
        assert loaded.wait(10)
        return Backend(served(), engine)

    with TestClient(create_app(Settings(), slow_load)) as c:
        for reply in (c.get("/tokenizer_info"), c.post("/tokenize", json={"prompt": "a"})):
            assert reply.status_code == 503 and reply.headers["retry-after"] == "5"
        loaded.set()
        wait_ready(c)
        assert c.get("/tokenizer_info").status_code == 200


def test_echo_jobs_reach_the_engine(client, engine):
    body = {**OK, "prompt": [[1, 2, 3], [4]], "echo": True, "max_tokens": 1, "logprobs": 1}
    assert post(client, body).status_code == 200
    assert post(client, {**OK, "echo": True, "max_tokens": 0}).status_code == 200
    assert [(j.echo, j.max_tokens, j.prompts) for j in engine.jobs] == [
        (True, 1, [[1, 2, 3], [4]]),
        (True, 0, [[0, 1]]),
    ]
    # A scored prompt may fill the context, as a decoded one may.
    assert (
        post(client, {**OK, "prompt": [[1] * CONTEXT], "echo": True, "max_tokens": 0}).status_code
        == 200
    )


def test_echo_is_refused_when_the_server_scores_nothing(client, engine):
    engine.can_score = False
    reply = post(client, {**OK, "echo": True, "max_tokens": 0})
    assert reply.status_code == 400 and "--score_rows 0" in error_of(reply)["message"]
    assert engine.jobs == []
