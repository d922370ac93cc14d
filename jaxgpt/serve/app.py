"""The FastAPI app: OpenAI-style completions, models, the tokenizer endpoints, health and
metrics; auth and limits."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from jaxgpt.serve.completions import complete
from jaxgpt.serve.engine import Engine
from jaxgpt.serve.errors import ApiError
from jaxgpt.serve.loading import ServedModel
from jaxgpt.serve.metrics import Metrics
from jaxgpt.serve.protocol import (
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    validation_message,
)
from jaxgpt.serve.tokenizing import (
    check_model,
    checked_unicode,
    detokenize,
    tokenize,
    tokenizer_info,
)

log = logging.getLogger("jaxgpt.serve")
Shape = TypeVar("Shape", bound=BaseModel)
ENDPOINTS = (
    "/v1/completions",
    "/v1/models",
    "/tokenize",
    "/detokenize",
    "/tokenizer_info",
    "/health",
    "/metrics",
)
# Default max_tokens cap, in contexts. Past the context a row slides (see engine.py), so the
# cap bounds how long one choice holds a slot, not what fits the cache.
CAP_CONTEXTS = 4


@dataclasses.dataclass(frozen=True)
class Settings:
    """Limits and identity of one server process."""

    api_key: str | None = None
    max_body_bytes: int = 1_000_000
    max_tokens_cap: int | None = None  # None: CAP_CONTEXTS × the model's context
    client_timeout: float = 30.0  # seconds a client may take to send a request

    def cap(self, context: int) -> int:
        """The largest max_tokens a request may ask for."""
        return self.max_tokens_cap or CAP_CONTEXTS * context


@dataclasses.dataclass
class Backend:
    """What the (slow) loader produces: the model and its running engine."""

    served: ServedModel
    engine: Engine


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

        try:
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
        finally:  # an exception still answers (500, outside this middleware): count it too
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.request(endpoint, status[0])

    def _authorized(self, scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        # compare_digest's time does not depend on where the first difference is.
        return hmac.compare_digest(given, self.expected)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit` bytes, with 408
    if it takes more than `timeout` seconds, and with 499 if the client hangs up meanwhile."""
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(request, limit)
    except TimeoutError as e:
        raise ApiError(
            408,
            f"the request body did not arrive within {timeout:g}s (--client_timeout)",
            code="request_timeout",
            headers={"Connection": "close"},
        ) from e
    except ClientDisconnect as e:
        # Nobody reads the answer; the status (nginx's "client closed request") is for /metrics.
        raise ApiError(499, "the client closed the connection", code="client_closed") from e


async def _read_body(request: Request, limit: int) -> bytes:
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
    """JSON → a validated completion request, or a 400 that says which field is wrong and why
    (or what the server does not support)."""
    request = parse_json(body, CompletionRequest)
    if message := request.unsupported():
        raise ApiError(400, message)
    return request


def parse_json(body: bytes, shape: type[Shape]) -> Shape:
    """JSON → a validated request of the given shape, or a 400 that says what is wrong."""
    try:
        data = json.loads(body)
    except RecursionError as e:
        raise ApiError(400, "request body is JSON nested too deeply", code="invalid_json") from e
    except ValueError as e:  # bad JSON or UTF-8, or an integer past Python's digit limit
        raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from e
    if not isinstance(data, dict):
        raise ApiError(
            400,
            "request body must be a JSON object, e.g. "
            '{"model": "...", "prompt": "Hello", "max_tokens": 16}',
        )
    try:
        return shape.model_validate(data)
    except ValidationError as e:
        param = ".".join(map(str, e.errors()[0]["loc"])) if e.errors() else None
        raise ApiError(400, validation_message(e), param=param or None) from e


def tokenize_prompts(request: CompletionRequest, served: ServedModel, cap: int) -> list[list[int]]:
    """Prompt token ids, with max_tokens checked against the cap and each prompt against the
    context (generation may run past the context; a prompt may not)."""
    tok = served.tokenizer
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
            ids = tok.encode(checked_unicode(p)) or [tok.eot_id]  # "" starts a new document
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
        _check_context(len(ids), served.context, request.echo)
        prompts.append(ids)
    return prompts


def _check_context(n: int, context: int, echo: bool) -> None:
    if n <= context:
        return
    if echo:
        advice = (
            "a scored (echo) prompt must fit the context; with lm-eval's local-completions "
            f"pass max_length={context + 1} in --model_args"
        )
    else:
        advice = "shorten the prompt (generation may go past the context, a prompt may not)"
    raise ApiError(
        400,
        f"prompt ({n} tokens) is more than the model's context of {context} tokens; {advice}",
        param="prompt",
        code="context_length_exceeded",
    )


class _Server:
    """One app's shared state: the backend once the loader returned, shutdown, metrics."""

    def __init__(self) -> None:
        self.backend: Backend | None = None  # set by the loader thread
        self.stopping = threading.Event()
        self.metrics = Metrics(
            {
                "ready": (
                    "1 once the model is loaded and compiled.",
                    lambda: float(self.backend is not None),
                ),
                "queue_waiting_choices": (
                    "Choices waiting for a decode slot.",
                    lambda: self.backend.engine.n_waiting if self.backend else 0,
                ),
                "busy_slots": (
                    "Choices decoding now.",
                    lambda: self.backend.engine.n_busy if self.backend else 0,
                ),
                "queue_waiting_score_rows": (
                    "Echo (scoring) choices waiting for a scoring pass.",
                    lambda: self.backend.engine.n_scoring if self.backend else 0,
                ),
            }
        )

    def ready(self) -> Backend:
        """The backend, or a 503 with Retry-After while loading or shutting down."""
        if self.backend is None or self.stopping.is_set():
            state = "shutting down" if self.stopping.is_set() else "loading the model"
            raise ApiError(
                503,
                f"the server is {state}; retry shortly",
                "server_error",
                headers={"Retry-After": "5"},
            )
        return self.backend

    def load(
        self,
        load: Callable[[Metrics], Backend],
        on_load_error: Callable[[BaseException], None] | None,
    ) -> None:
        """Run the loader (in its own thread); a failure is logged and reported, not raised."""
        try:
            self.backend = load(self.metrics)
        except BaseException as e:
            log.exception("loading the model failed")
            if on_load_error:
                on_load_error(e)


def create_app(
    settings: Settings,
    load: Callable[[Metrics], Backend],
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app; `load` runs in a thread at startup, and /health says ready once it returned."""
    server = _Server()
    app = FastAPI(
        title="jaxgpt",
        lifespan=_lifespan(server, load, on_load_error),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(Guard, api_key=settings.api_key, metrics=server.metrics)
    _add_error_handlers(app)
    _add_status_routes(app, server)
    _add_model_routes(app, server)
    _add_completion_route(app, server, settings)
    _add_tokenizer_routes(app, server, settings)
    return app


def _lifespan(
    server: _Server,
    load: Callable[[Metrics], Backend],
    on_load_error: Callable[[BaseException], None] | None,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Start loading in the background (so /health answers at once); stop the engine at exit."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(
            target=server.load, args=(load, on_load_error), name="jaxgpt-load", daemon=True
        ).start()
        yield
        # Uvicorn runs this after in-flight requests ended (or its graceful timeout passed).
        server.stopping.set()
        if server.backend is not None:
            await asyncio.to_thread(server.backend.engine.stop, 30)

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    """Every error, ours or Starlette's (404, 405), answers in OpenAI's error shape."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = str(e.detail)
        if e.status_code == 404:
            message = f"no endpoint {request.url.path}; this server has {', '.join(ENDPOINTS)}"
        return ApiError(e.status_code, message, headers=e.headers).response()

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> JSONResponse:
        # A bug: the client gets the usual shape, uvicorn logs the traceback.
        message = f"internal error ({type(e).__name__}); the server log has the details"
        return ApiError(500, message, "server_error").response()


def _add_status_routes(app: FastAPI, server: _Server) -> None:
    """GET /health (for load balancers and probes) and GET /metrics (Prometheus)."""

    @app.get("/health")
    async def health() -> Response:
        try:
            b = server.ready()
        except ApiError as e:
            return JSONResponse({"status": str(e)}, 503, headers=e.headers)
        return JSONResponse({"status": "ok", "model": b.served.name})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "jaxgpt"}


def _add_model_routes(app: FastAPI, server: _Server) -> None:
    """GET /v1/models and /v1/models/{name}: the one model this server serves."""

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(server.ready().served.name)]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        if name != server.ready().served.name:
            raise ApiError(404, f"model {name!r} does not exist", code="model_not_found")
        return _model_card(name)


def _add_completion_route(app: FastAPI, server: _Server, settings: Settings) -> None:
    """POST /v1/completions."""

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        b = server.ready()
        body = await read_body(request, settings.max_body_bytes, settings.client_timeout)
        req = parse_request(body)
        prompts = _admit(req, b, settings)
        return await complete(b.engine, b.served, req, prompts, server.metrics, request.receive)


def _add_tokenizer_routes(app: FastAPI, server: _Server, settings: Settings) -> None:
    """GET /tokenizer_info, POST /tokenize and /detokenize, at the root as vLLM serves them
    (lm-eval's remote tokenizer looks there: base_url without /v1/completions)."""

    @app.get("/tokenizer_info")
    async def info() -> dict[str, Any]:
        return tokenizer_info(server.ready().served)

    @app.post("/tokenize")
    async def tokenize_text(request: Request) -> dict[str, Any]:
        b = server.ready()
        body = await read_body(request, settings.max_body_bytes, settings.client_timeout)
        return tokenize(b.served, parse_json(body, TokenizeRequest))

    @app.post("/detokenize")
    async def detokenize_ids(request: Request) -> dict[str, Any]:
        b = server.ready()
        body = await read_body(request, settings.max_body_bytes, settings.client_timeout)
        return detokenize(b.served, parse_json(body, DetokenizeRequest))


def _admit(req: CompletionRequest, b: Backend, settings: Settings) -> list[list[int]]:
    """The request's prompt token ids, once its model, prompts and size are known to fit."""
    check_model(req.model, b.served)
    if req.echo and not b.engine.can_score:
        raise ApiError(
            400,
            "echo is off on this server (started with --score_rows 0); restart it with "
            "--score_rows 8 to score prompts",
        )
    prompts = tokenize_prompts(req, b.served, settings.cap(b.served.context))
    # More than the whole queue can never be admitted: a 400, not a 503 that invites a retry.
    if len(prompts) * req.n > b.engine.max_queue:
        raise ApiError(
            400,
            f"{len(prompts)} prompts × n={req.n} is more choices than this "
            f"server queues ({b.engine.max_queue}); split the request",
        )
    return prompts
