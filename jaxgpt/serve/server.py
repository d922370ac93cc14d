"""Run the app under uvicorn: load and compile in the background, exit cleanly on SIGTERM."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time

from jaxgpt.serve.app import Backend, Settings, create_app
from jaxgpt.serve.connection import with_header_deadline
from jaxgpt.serve.decoder import Decoder
from jaxgpt.serve.engine import Engine
from jaxgpt.serve.loading import load_model
from jaxgpt.serve.metrics import Metrics
from jaxgpt.serve.scorer import Scorer

log = logging.getLogger("jaxgpt.serve")


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything `python -m jaxgpt.serve` takes (see its --help)."""

    workdir: str
    step: int | None = None
    model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 32
    score_rows: int = 8  # prompts per scoring pass (echo); 0 turns echo off
    max_queue: int = 256
    max_body_bytes: int = 1_000_000
    max_tokens_cap: int | None = None
    client_timeout: float = 30.0
    graceful_timeout: float = 60.0
    step_delay_ms: float = 0.0


def load_backend(options: Options, metrics: Metrics) -> Backend:
    """Weights, tokenizer, every compiled shape, and the engine thread, started."""
    start = time.perf_counter()
    served = load_model(options.workdir, options.step, options.model_name)
    vocab_limit = min(served.tokenizer.vocab_size, served.model.config.vocab_size)
    decoder = Decoder(served.model, served.params, vocab_limit, options.max_batch)
    scorer = None
    if options.score_rows:  # shares the decoder's model and device params: no second copy
        scorer = Scorer(
            decoder.model, decoder.params, vocab_limit, options.score_rows, decoder.prompt_sizes
        )
    loaded = time.perf_counter()
    n = decoder.warm_up() + (scorer.warm_up() if scorer else 0)
    log.info(
        "model %r loaded in %.1fs; %d shapes compiled in %.1fs; ready",
        served.name,
        loaded - start,
        n,
        time.perf_counter() - loaded,
    )
    engine = Engine(
        decoder,
        served.tokenizer,
        options.max_queue,
        metrics.step,
        options.step_delay_ms / 1000,
        scorer,
        metrics.score,
    )
    engine.start()
    return Backend(served, engine)


def serve(options: Options) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code (1 if the model failed to load)."""
    import uvicorn

    failed: list[BaseException] = []
    server: list[uvicorn.Server] = []

    def on_load_error(e: BaseException) -> None:
        failed.append(e)
        server[0].should_exit = True

    settings = Settings(
        options.api_key, options.max_body_bytes, options.max_tokens_cap, options.client_timeout
    )
    app = create_app(settings, lambda metrics: load_backend(options, metrics), on_load_error)
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        http=with_header_deadline(options.client_timeout),
        log_level="info",
        timeout_graceful_shutdown=options.graceful_timeout,
    )
    server.append(uvicorn.Server(config))
    # Uvicorn re-raises the signal that stopped it once it has shut down gracefully; SIGTERM is
    # the normal way to stop a replica, so that should end the process with 0, not by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):  # Ctrl-C too: no KeyboardInterrupt traceback
        signal.signal(sig, lambda *_: sys.exit(1 if failed else 0))
    server[0].run()
    if failed:
        e = failed[0]
        log.error("error: could not load %s: %s", options.workdir, e)
        return 1
    return 0
