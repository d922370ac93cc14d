"""Container health check for `python -m jaxgpt.serve`: exit 0 when GET /health answers 200.

Kubernetes' httpGet probes cannot send a secret header, and with `--api_key_env` the server
answers every path, /health included, with 401 unless the request carries the key: an httpGet
probe would then never pass. This script runs inside the container (an `exec` probe, or the
image's HEALTHCHECK), reads the key from the same environment variable as the server and sends
it. Standard library only, so a probe costs a Python start and one request, not a JAX import.

    python /opt/jaxgpt/healthcheck.py --port 8000 --api_key_env JAXGPT_API_KEY

Exit status: 0 ready; 1 not ready (loading, compiling, draining), refused, or key rejected.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

# The key's variable when --api_key_env is not given, if it is set (the images' convention).
DEFAULT_KEY_ENV = "JAXGPT_API_KEY"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Exit 0 if the local jaxgpt server is ready.")
    p.add_argument("--host", default="127.0.0.1", help="where the server listens in the container")
    p.add_argument("--port", type=int, default=8000, help="the server's --port")
    p.add_argument(
        "--api_key_env",
        default=None,
        help=f"the server's --api_key_env (default: {DEFAULT_KEY_ENV} if that variable is set)",
    )
    p.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for the answer")
    return p.parse_args(argv)


def check(host: str, port: int, key: str | None, timeout: float) -> tuple[bool, str]:
    """(ready, what happened) for one GET /health."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(f"http://{host}:{port}/health", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200, f"{response.status} {response.read(200).decode()}"
    except urllib.error.HTTPError as e:  # 503 while loading or draining, 401 for a wrong key
        return False, f"{e.code} {e.read(200).decode(errors='replace')}"
    except (OSError, ValueError) as e:  # refused, timed out, or not HTTP at all
        return False, f"no answer from {host}:{port}: {e}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    key_env = args.api_key_env or (DEFAULT_KEY_ENV if os.environ.get(DEFAULT_KEY_ENV) else None)
    key = None
    if key_env:
        key = os.environ.get(key_env, "")
        if not key:
            print(f"healthcheck: ${key_env} is empty or unset; set it as for the server")
            return 1
    ready, what = check(args.host, args.port, key, args.timeout)
    # Kubernetes shows a failed exec probe's output in the pod's events: say what came back.
    if not ready:
        print(f"healthcheck: not ready: {what}")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
