"""lm-eval loglikelihood requests per second through the server: lm-eval's own
`local-completions` model against `python -m jaxgpt.serve` on loopback.

    python benchmarks/lmeval_speed.py [--workdir DIR] [--requests 2000] [--context_words 20]
        [--batch_size 32] [--num_concurrent 1,2] [--repeats 3] [--score_rows 8]

The requests are multiple-choice-like, as `benchmarks/lmeval_inprocess.py` makes them: a context
of `--context_words` random words from a fixed list and a one-word continuation, handed to
lm-eval's `loglikelihood()` as strings. So a pass includes what a real run pays: lm-eval
tokenizing every context and continuation through the server's /tokenize (one HTTP call per
string), sorting, batching, then one echo request per batch of `--batch_size`. The server runs
on one CPU device (like the other serve benchmarks); lm-eval's model is built once, scores
every request once as a warm-up, then `--repeats` timed passes; the median is printed, with the
share of the pass spent in /tokenize calls.

Without --workdir it first trains the configs/tiny.py model shape (4 layers, width 128, context
128; char tokenizer) for a few steps on tinyshakespeare: the weights barely matter for speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from serve_abuse import ServerProcess  # noqa: E402

SHAKESPEARE = REPO / "jaxgpt" / "data" / "corpora" / "tinyshakespeare.txt"
WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which this "
    "be or has had not but its they have first one two new after their who all also been more "
    "time into would other when year there can people most some three used many school state"
).split()


def make_requests(n: int, context_words: int, seed: int = 0) -> list[SimpleNamespace]:
    """n (context, continuation) requests shaped like lm-eval's Instances (only .args is read)."""
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(n):
        words = rng.choice(WORDS, context_words + 1)
        requests.append(SimpleNamespace(args=(" ".join(words[:-1]), " " + words[-1])))
    return requests


def train_tiny(out: Path) -> Path:
    """The tiny config's model shape, trained briefly on tinyshakespeare."""
    from jaxgpt.config import load_config_file, override
    from jaxgpt.run.loop import train

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


def served_context(url: str) -> int:
    import httpx

    return httpx.get(url + "/tokenizer_info", timeout=30).json()["model_max_length"]


def completions_lm(url: str, batch_size: int, num_concurrent: int):
    """lm-eval's local-completions model on the server, as its documented command builds it."""
    from lm_eval.api.registry import get_model

    return get_model("local-completions")(
        model="bench", base_url=url + "/v1/completions", tokenizer_backend="remote",
        max_length=served_context(url) + 1, batch_size=batch_size,
        num_concurrent=num_concurrent, max_retries=1,
    )  # fmt: skip


def timed_pass(lm, requests: list) -> tuple[float, float]:
    """(seconds for lm-eval to score every request once, of which in /tokenize calls)."""
    tokenizer = lm.tokenizer
    encode, spent = tokenizer.encode, [0.0]

    def timed_encode(text: str) -> list[int]:
        started = time.perf_counter()
        try:
            return encode(text)
        finally:
            spent[0] += time.perf_counter() - started

    tokenizer.encode = timed_encode
    try:
        started = time.perf_counter()
        lm.loglikelihood(requests, disable_tqdm=True)
        return time.perf_counter() - started, spent[0]
    finally:
        tokenizer.encode = encode


def server_rps(
    url: str, requests: list, batch_size: int = 32, num_concurrent: int = 1, repeats: int = 3
) -> tuple[float, float]:
    """(median loglikelihood requests/s through the server at `url`, median share of each pass
    spent tokenizing through /tokenize), after a warm-up pass."""
    lm = completions_lm(url, batch_size, num_concurrent)
    timed_pass(lm, requests)
    passes = [timed_pass(lm, requests) for _ in range(repeats)]
    seconds = statistics.median(s for s, _ in passes)
    return len(requests) / seconds, statistics.median(t / s for s, t in passes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="a jaxgpt training run (default: train the tiny shape)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--context_words", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_concurrent", default="1,2", help="comma-separated levels")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--score_rows", type=int, default=8, help="the server's --score_rows")
    args = p.parse_args()
    requests = make_requests(args.requests, args.context_words)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else train_tiny(Path(tmp) / "run")
        flags = ("--model_name", "bench", "--score_rows", str(args.score_rows))
        server = ServerProcess(workdir, Path(tmp) / "server.log", *flags)
        try:
            print(f"server ready in {server.wait_ready():.1f}s (load + compiles)")
            found = {
                c: server_rps(server.url, requests, args.batch_size, c, args.repeats)
                for c in map(int, args.num_concurrent.split(","))
            }
        finally:
            server.stop()
    print(
        f"{args.requests} loglikelihood requests ({args.context_words}-word contexts), "
        f"batch {args.batch_size}, --score_rows {args.score_rows}, median of {args.repeats}"
    )
    print(f"{'num_concurrent':>14}{'requests/s':>12}{'in /tokenize':>14}")
    for concurrent, (rps, tokenizing) in found.items():
        print(f"{concurrent:>14}{rps:>12.1f}{tokenizing:>13.0%}")


if __name__ == "__main__":
    main()
