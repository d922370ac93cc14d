"""POST /v1/completions after admission: the engine job, and its events turned into one JSON
response or a stream of server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from jaxgpt.serve.engine import Engine, Event, Job, QueueFullError, ShuttingDownError
from jaxgpt.serve.errors import ApiError
from jaxgpt.serve.loading import ServedModel
from jaxgpt.serve.metrics import Metrics
from jaxgpt.serve.protocol import CompletionBuilder, CompletionRequest, error_body


async def complete(
    engine: Engine,
    served: ServedModel,
    req: CompletionRequest,
    prompts: list[list[int]],
    metrics: Metrics,
    receive: Callable[[], Awaitable[dict[str, Any]]],
) -> Response:
    """Submit the job, then answer with the whole completion or a stream of chunks.

    `receive` is the request's ASGI receive, read for the client hanging up (the streamed
    response watches it itself)."""
    reply = _Reply(engine, served, req, prompts, metrics)
    reply.submit()
    if not req.stream:
        return await reply.whole(receive)
    return StreamingResponse(
        reply.stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _make_job(
    req: CompletionRequest, prompts: list[list[int]], emit: Callable[[Event], None]
) -> Job:
    """The engine's job for a request; without a seed, a fresh one per request."""
    return Job(
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
        emit=emit,
        echo=req.echo,
    )


def _echo_texts(req: CompletionRequest, prompts: list[list[int]], decode) -> list[str] | None:
    """Each choice's echoed prompt: the text as sent, or the decoded ids (None without echo)."""
    if not req.echo:
        return None
    texts = [
        p if isinstance(p, str) else decode(ids)
        for p, ids in zip(req.prompts, prompts, strict=True)
    ]
    return [text for text in texts for _ in range(req.n)]


async def _disconnected(receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Returns once the client has hung up (the body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _Reply:
    """One request's job and its events turned into the response; cancels and meters the job
    when the response ends."""

    def __init__(
        self,
        engine: Engine,
        served: ServedModel,
        req: CompletionRequest,
        prompts: list[list[int]],
        metrics: Metrics,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        # The engine emits from its own thread; the queue belongs to this request's event loop.
        emit = lambda event: loop.call_soon_threadsafe(self.events.put_nowait, event)
        self.job = _make_job(req, prompts, emit)
        self.engine, self.metrics, self.req = engine, metrics, req
        decode = served.tokenizer.decode
        self.out = CompletionBuilder(
            f"cmpl-{uuid.uuid4().hex}",
            served.name,
            self.job.n_choices,
            req.logprobs,
            served.decode_piece,
            _echo_texts(req, prompts, decode),
        )
        self.prompt_tokens = sum(map(len, prompts))
        self.start = 0.0
        self.first: float | None = None  # seconds from submit to the first event

    def submit(self) -> None:
        """Queue the job, or a 503 whose Retry-After is the mean request latency when full."""
        self.start = time.perf_counter()
        try:
            self.engine.submit(self.job)
        except QueueFullError as e:
            hist = self.metrics.latency
            wait = max(1, math.ceil(hist.sum / hist.count)) if hist.count else 1
            raise ApiError(
                503, str(e), "server_error", "queue_full", headers={"Retry-After": str(wait)}
            ) from e
        except ShuttingDownError as e:
            raise ApiError(503, str(e), "server_error", headers={"Retry-After": "5"}) from e

    async def next_chunk(self) -> tuple[Event, dict[str, Any] | None]:
        event = await self.events.get()
        if self.first is None:
            self.first = time.perf_counter() - self.start
        return event, self.out.add(event)

    def finished(self) -> None:
        """Free the job's slots if it is still running, and record its metrics."""
        if not self.out.done:
            self.engine.cancel(self.job)
        seconds = time.perf_counter() - self.start
        self.metrics.completion(self.prompt_tokens, self.out.completion_tokens, seconds, self.first)

    async def whole(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> JSONResponse:
        """Wait for every choice to finish; an engine error is a 500. A client that hangs up
        first has its choices cancelled at once, rather than when they would have ended."""
        collect = asyncio.ensure_future(self._collect())
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not collect.done():
                collect.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collect
        if collect.cancelled():  # nobody reads this; the status is for /metrics
            raise ApiError(499, "the client closed the connection", code="client_closed")
        return collect.result()

    async def _collect(self) -> JSONResponse:
        try:
            while not self.out.done:
                event, _ = await self.next_chunk()
                if event.error:
                    raise ApiError(500, event.error, "server_error")
        finally:
            self.finished()
        return JSONResponse(self.out.response(self.prompt_tokens))

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events: one chunk per event, the usage if asked for, then [DONE]."""
        try:
            while not self.out.done:
                event, chunk = await self.next_chunk()
                if event.error:
                    yield f"data: {json.dumps(error_body(event.error, 'server_error'))}\n\n"
                    break
                if chunk is not None:
                    yield f"data: {json.dumps(chunk)}\n\n"
            if self.req.stream_options and self.req.stream_options.include_usage:
                yield f"data: {json.dumps(self.out.usage_chunk(self.prompt_tokens))}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # also when the client disconnects: free its slots
            self.finished()
