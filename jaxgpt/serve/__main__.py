"""`python -m jaxgpt.serve --workdir DIR`: an OpenAI-compatible completions server."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from jaxgpt import config as config_lib
from jaxgpt import host_memory
from jaxgpt.serve.loading import check_model_dir
from jaxgpt.serve.server import Options, serve
from jaxgpt.storage import StorageError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = config_lib.make_parser(
        "serve",
        "Serve a jaxgpt model over HTTP: POST /v1/completions (OpenAI format, "
        "streaming, echo for scoring), GET /v1/models, the tokenizer endpoints (/tokenize, "
        "/detokenize, /tokenizer_info), /health, /metrics. See docs/serving.md.",
    )
    p.add_argument(
        "--workdir",
        required=True,
        help="a training run's directory, or a Hugging Face folder it was exported to",
    )
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="checkpoint step (default: the best params if the run kept them, else the latest)",
    )
    p.add_argument(
        "--model_name",
        default=None,
        help="the name clients pass as `model` (default: the directory's name)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; 0.0.0.0 exposes the server (use --api_key_env then)",
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api_key_env",
        default=None,
        help="name of an environment variable holding the API key; every request "
        "must then send `Authorization: Bearer <key>`",
    )
    _add_limit_flags(p)
    p.add_argument("--step_delay_ms", type=float, default=0.0, help=argparse.SUPPRESS)
    return config_lib.parse_args(p, argv)


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    """Batch, queue, request size and time limits."""
    p.add_argument("--max_batch", type=int, default=32, help="rows decoded together")
    p.add_argument(
        "--score_rows",
        type=int,
        default=8,
        help="prompts scored together by an echo request's forward pass (lm-eval's "
        "loglikelihood tasks); 0 turns echo off and skips its compiles",
    )
    p.add_argument(
        "--max_queue",
        type=int,
        default=256,
        help="choices that may wait for a slot; beyond it requests get 503",
    )
    p.add_argument("--max_body_bytes", type=int, default=1_000_000)
    p.add_argument(
        "--max_tokens_cap",
        type=int,
        default=None,
        help="largest max_tokens a request may ask for (default: 4 × the model's context; "
        "past the context a row slides, see docs/serving.md)",
    )
    p.add_argument(
        "--client_timeout",
        type=float,
        default=30.0,
        help="seconds a client may take to send a request's headers, and again its body; "
        "slower ones get 408 and are disconnected",
    )
    p.add_argument(
        "--graceful_timeout",
        type=float,
        default=60.0,
        help="seconds SIGTERM waits for in-flight requests before cancelling them",
    )


def options_from_args(args: argparse.Namespace) -> Options:
    """Flags → Options, failing early (before any model loads) on bad values."""
    check_model_dir(args.workdir)
    for flag in ("max_batch", "max_queue", "max_body_bytes", "max_tokens_cap"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag} must be at least 1, got {value}")
    if args.score_rows < 0:
        raise ValueError(f"--score_rows must be at least 0, got {args.score_rows}")
    if not args.client_timeout > 0:
        raise ValueError(f"--client_timeout must be more than 0, got {args.client_timeout}")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env, "")
        if not api_key:
            raise ValueError(
                f"--api_key_env {args.api_key_env}: that environment variable is "
                "empty or unset; export the key in it first"
            )
    elif not _is_loopback(args.host):
        logging.getLogger("jaxgpt.serve").warning(
            "binding %s without --api_key_env: anyone who can reach it can use the model", args.host
        )
    return Options(
        workdir=args.workdir,
        step=args.step,
        model_name=args.model_name,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_batch=args.max_batch,
        score_rows=args.score_rows,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        max_tokens_cap=args.max_tokens_cap,
        client_timeout=args.client_timeout,
        graceful_timeout=args.graceful_timeout,
        step_delay_ms=args.step_delay_ms,
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> None:
    host_memory.keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        options = options_from_args(parse_args(argv))
    except (ValueError, FileNotFoundError, StorageError) as e:
        sys.exit(f"error: {e}")
    sys.exit(serve(options))


if __name__ == "__main__":
    main()
