"""lm-eval loglikelihood requests per second: jaxgpt's in-process `jaxgpt` model against lm-eval's
own `hf` model on the exported Hugging Face folder, same requests, same run.

    python benchmarks/lmeval_inprocess.py --workdir runs/tiny [--hf runs/tiny/hf]
        [--requests 2000] [--context_words 20] [--batch_size 32] [--repeats 3]

The requests are multiple-choice-like: a context of `--context_words` random words from a fixed
list and a one-word continuation, as lm-eval's loglikelihood() receives them (strings; each
model tokenizes, sorts and batches as it does in a real run). Each model is built once (loading,
placing; for jaxgpt the mesh of the run), scores every request once as a warm-up (jit compiles),
then `--repeats` times, the two taking turns; the median is reported. Without --hf the folder
is exported to a temporary directory first (python -m jaxgpt.export).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from jaxgpt import lm_eval_model

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


def timed_pass(lm, requests: list) -> float:
    """Seconds for the model to score every request once."""
    started = time.perf_counter()
    lm.loglikelihood(requests, disable_tqdm=True)
    return time.perf_counter() - started


def inprocess_lm(workdir: str, batch_size: int):
    """The `jaxgpt` lm-eval model on a training run (its mesh, its context)."""
    return lm_eval_model.lm_class()(workdir=workdir, batch_size=batch_size)


def hf_lm(hf_dir: str, batch_size: int, max_length: int):
    """lm-eval's `hf` model on an exported folder (float32, CPU: what parity is checked on)."""
    from lm_eval.api.registry import get_model

    return get_model("hf")(
        pretrained=hf_dir, dtype="float32", device="cpu", batch_size=batch_size,
        max_length=max_length,
    )  # fmt: skip


def inprocess_rps(workdir: str, requests: list, batch_size: int = 32, repeats: int = 3) -> float:
    """Median loglikelihood requests/s of the in-process `jaxgpt` model (after a warm-up)."""
    lm = inprocess_lm(workdir, batch_size)
    timed_pass(lm, requests)
    return len(requests) / statistics.median(timed_pass(lm, requests) for _ in range(repeats))


def compare(workdir: str, hf_dir: str, requests: list, batch_size: int, repeats: int) -> dict:
    """{model: (warm-up seconds, median requests/s)}; the models take turns pass by pass, so
    load from other processes falls on both alike."""
    ours = inprocess_lm(workdir, batch_size)
    runners = {
        "jaxgpt in-process": ours,
        "lm-eval hf (export)": hf_lm(hf_dir, batch_size, ours.max_length),
    }
    warm = {name: timed_pass(lm, requests) for name, lm in runners.items()}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, lm in runners.items():
            times[name].append(timed_pass(lm, requests))
    return {
        name: (warm[name] - statistics.median(t), len(requests) / statistics.median(t))
        for name, t in times.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a jaxgpt training run")
    p.add_argument("--hf", help="its exported folder (default: export to a temporary folder)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--context_words", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = args.hf
        if hf_dir is None:
            hf_dir = str(Path(tmp) / "hf")
            export = [sys.executable, "-m", "jaxgpt.export", "--workdir", args.workdir]
            subprocess.run([*export, "--out", hf_dir], check=True, capture_output=True)
        requests = make_requests(args.requests, args.context_words)
        found = compare(args.workdir, hf_dir, requests, args.batch_size, args.repeats)
    print(
        f"{args.requests} loglikelihood requests ({args.context_words}-word contexts), "
        f"batch {args.batch_size}, median of {args.repeats}"
    )
    print(f"{'model':<22}{'requests/s':>12}{'warm-up s':>11}")
    for name, (warm, rps) in found.items():
        print(f"{name:<22}{rps:>12.1f}{warm:>11.1f}")
    rates = [rps for _, rps in found.values()]
    print(f"ratio (jaxgpt / hf): {rates[0] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
