"""The FastAPI app: OpenAI-style completions, models, health and metrics; auth and limits."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from jaxgpt.serve.engine import Engine, Event, Job, QueueFullError, ShuttingDownError
from jaxgpt.serve.loading import ServedModel
from jaxgpt.serve.metrics import Metrics
from jaxgpt.serve.protocol import (
    CompletionBuilder,
    CompletionRequest,
    error_body,
    validation_message,
)

log = logging.getLogger("jaxgpt.serve")
ENDPOINTS = ("/v1/completions", "/v1/models", "/health", "/metrics")
# Default max_tokens cap, in contexts. Past the context a row slides (see engine.py), so the
# cap bounds how long one choice holds a slot, not what fits the cache.
CAP_CONTEXTS = 4


@dataclasses.dataclass(frozen=True)
class Settings:
    """Limits and identity of one server process."""

    api_key: str | None = None
    max_body_bytes: int = 1_000_000
    max_tokens_cap: int | None = None  # None: CAP_CONTEXTS × the model's context

    def cap(self, context: int) -> int:
        """The largest max_tokens a request may ask for."""
        return self.max_tokens_cap or CAP_CONTEXTS * context


@dataclasses.dataclass
class Backend:
    """What the (slow) loader produces: the model and its running engine."""

    served: ServedModel
    engine: Engine


class ApiError(Exception):
    """An error response in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param
        self.headers = headers

    def response(self) -> JSONResponse:
        body = error_body(str(self), self.kind, self.param, self.code)
        return JSONResponse(body, self.status, headers=self.headers)


class Guard:
    """ASGI middleware: the API key (constant-time compare) and per-endpoint request counts.

    Pure ASGI rather than @app.middleware, which would buffer streamed responses.
    """

    def __init__(self, app, api_key: str | None, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_and_count(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if self.expected is not None and not self._authorized(scope):
            error = ApiError(
                401,
                "missing or wrong API key: send the header `Authorization: Bearer <key>`",
                "authentication_error",
                "invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await error.response()(scope, receive, send_and_count)
        else:
            await self.app(scope, receive, send_and_count)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        self.metrics.request(endpoint, status[0])

    def _authorized(self, scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        # compare_digest's time does not depend on where the first difference is.
        return hmac.compare_digest(given, self.expected)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit` bytes."""
    too_big = ApiError(
        413,
        f"request body is larger than this server's limit of {limit} bytes "
        "(--max_body_bytes); send a shorter prompt",
        code="body_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes) -> CompletionRequest:
    """JSON → a validated request, or a 400 that says which field is wrong and why."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from e
    if not isinstance(data, dict):
        raise ApiError(
            400,
            "request body must be a JSON object, e.g. "
            '{"model": "...", "prompt": "Hello", "max_tokens": 16}',
        )
    try:
        request = CompletionRequest.model_validate(data)
    except ValidationError as e:
        param = ".".join(map(str, e.errors()[0]["loc"])) if e.errors() else None
        raise ApiError(400, validation_message(e), param=param) from e
    if message := request.unsupported():
        raise ApiError(400, message)
    return request


def tokenize_prompts(request: CompletionRequest, served: ServedModel, cap: int) -> list[list[int]]:
    """Prompt token ids, with max_tokens checked against the cap and each prompt against the
    context (generation may run past the context; a prompt may not)."""
    tok, context = served.tokenizer, served.context
    if request.max_tokens > cap:
        raise ApiError(
            400,
            f"max_tokens={request.max_tokens} is more than this server allows "
            f"({cap}); ask for fewer tokens",
            param="max_tokens",
        )
    prompts = []
    for p in request.prompts:
        if isinstance(p, str):
            ids = tok.encode(p) or [tok.eot_id]  # an empty prompt starts a new document
        else:
            bad = [i for i in p if not 0 <= i < tok.vocab_size]
            if not p or bad:
                raise ApiError(
                    400,
                    f"prompt token ids must be in [0, {tok.vocab_size}) and a "
                    f"prompt needs at least one (got {bad[:5] or p})",
                    param="prompt",
                )
            ids = list(p)
        if len(ids) > context:
            raise ApiError(
                400,
                f"prompt ({len(ids)} tokens) is more than the model's context of {context} "
                "tokens; shorten the prompt (generation may go past the context, a prompt may "
                "not)",
                param="prompt",
                code="context_length_exceeded",
            )
        prompts.append(ids)
    return prompts


def create_app(
    settings: Settings,
    load: Callable[[Metrics], Backend],
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app; `load` runs in a thread at startup, and /health says ready once it returned."""
    backend: list[Backend] = []  # filled by the loader thread
    stopping = threading.Event()
    metrics = Metrics(
        {
            "ready": ("1 once the model is loaded and compiled.", lambda: float(bool(backend))),
            "queue_waiting_choices": (
                "Choices waiting for a decode slot.",
                lambda: backend[0].engine.n_waiting if backend else 0,
            ),
            "busy_slots": (
                "Choices decoding now.",
                lambda: backend[0].engine.n_busy if backend else 0,
            ),
        }
    )

    def load_in_background() -> None:
        try:
            backend.append(load(metrics))
        except BaseException as e:
            log.exception("loading the model failed")
            if on_load_error:
                on_load_error(e)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=load_in_background, name="jaxgpt-load", daemon=True).start()
        yield
        # Uvicorn runs this after in-flight requests ended (or its graceful timeout passed).
        stopping.set()
        if backend:
            await asyncio.to_thread(backend[0].engine.stop, 30)

    app = FastAPI(
        title="jaxgpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.add_middleware(Guard, api_key=settings.api_key, metrics=metrics)

    def ready() -> Backend:
        if not backend or stopping.is_set():
            state = "shutting down" if stopping.is_set() else "loading the model"
            raise ApiError(
                503,
                f"the server is {state}; retry shortly",
                "server_error",
                headers={"Retry-After": "5"},
            )
        return backend[0]

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = str(e.detail)
        if e.status_code == 404:
            message = f"no endpoint {request.url.path}; this server has {', '.join(ENDPOINTS)}"
        return ApiError(e.status_code, message, headers=e.headers).response()

    @app.get("/health")
    async def health() -> Response:
        try:
            b = ready()
        except ApiError as e:
            return JSONResponse({"status": str(e)}, 503, headers=e.headers)
        return JSONResponse({"status": "ok", "model": b.served.name})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "jaxgpt"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(ready().served.name)]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        if name != ready().served.name:
            raise ApiError(404, f"model {name!r} does not exist", code="model_not_found")
        return model_card(name)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        b = ready()
        req = parse_request(await read_body(request, settings.max_body_bytes))
        if req.model != b.served.name:
            raise ApiError(
                404,
                f"model {req.model!r} does not exist; this server serves "
                f"{b.served.name!r} (see GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        prompts = tokenize_prompts(req, b.served, settings.cap(b.served.context))
        if len(prompts) * req.n > b.engine.max_queue:
            raise ApiError(
                400,
                f"{len(prompts)} prompts × n={req.n} is more choices than this "
                f"server queues ({b.engine.max_queue}); split the request",
            )
        return await _complete(b, req, prompts, metrics)

    return app


async def _complete(
    b: Backend, req: CompletionRequest, prompts: list[list[int]], metrics: Metrics
) -> Response:
    """Submit the job, then answer with the whole completion or a stream of chunks."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()
    job = Job(
        prompts=prompts,
        n=req.n,
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        stop=req.stops,
        seed=req.seed if req.seed is not None else secrets.randbits(31),
        logprobs=req.logprobs is not None,
        stream=req.stream,
        emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
    )
    start = time.perf_counter()
    try:
        b.engine.submit(job)
    except QueueFullError as e:
        hist = metrics.latency
        wait = max(1, math.ceil(hist.sum / hist.count)) if hist.count else 1
        raise ApiError(
            503, str(e), "server_error", "queue_full", headers={"Retry-After": str(wait)}
        ) from e
    except ShuttingDownError as e:
        raise ApiError(503, str(e), "server_error", headers={"Retry-After": "5"}) from e
    decode = b.served.tokenizer.decode
    out = CompletionBuilder(
        f"cmpl-{uuid.uuid4().hex}", b.served.name, job.n_choices, req.logprobs, decode
    )
    prompt_tokens = sum(map(len, prompts))
    first: list[float] = []

    async def next_chunk() -> tuple[Event, dict[str, Any] | None]:
        event = await events.get()
        if not first:
            first.append(time.perf_counter() - start)
        return event, out.add(event)

    def finished() -> None:
        if not out.done:
            b.engine.cancel(job)
        seconds = time.perf_counter() - start
        metrics.completion(
            prompt_tokens, out.completion_tokens, seconds, first[0] if first else None
        )

    if not req.stream:
        try:
            while not out.done:
                event, _ = await next_chunk()
                if event.error:
                    raise ApiError(500, event.error, "server_error")
        finally:
            finished()
        return JSONResponse(out.response(prompt_tokens))

    async def stream() -> AsyncIterator[str]:
        try:
            while not out.done:
                event, chunk = await next_chunk()
                if event.error:
                    yield f"data: {json.dumps(error_body(event.error, 'server_error'))}\n\n"
                    break
                if chunk is not None:
                    yield f"data: {json.dumps(chunk)}\n\n"
            if req.stream_options and req.stream_options.include_usage:
                yield f"data: {json.dumps(out.usage_chunk(prompt_tokens))}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # also when the client disconnects: free its slots
            finished()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
