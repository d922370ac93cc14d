"""prepare on each engine: throughput, time per pass, and peak memory of every process.

    python benchmarks/data_engines.py [--mb 100] [--engines local,ray] [--corpus PATH]

The corpus is data_throughput.py's (distinct documents of tinyshakespeare's words, 2% exact and
2% near duplicates planted), --mb megabytes of it (or an existing --corpus). Each engine builds
the data dir in a fresh process (so one engine's memory does not count against the other); the
Ray engine starts its own Ray on this machine (data.ray_address=""), and that start-up counts.
Prints, per engine, the wall time and MB/s, the time of each pass, the peak resident memory of
the driver and the largest of each stage's workers, as [RSS (VmHWM), private (RssAnon)] in MB
(a Ray worker's RSS also counts the object-store pages it has read, which are shared), and
whether the data dirs are byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from data_throughput import make_corpus  # noqa: E402

from jaxgpt.config.data import DataConfig, TokenizerConfig  # noqa: E402
from jaxgpt.data.build import build_dataset  # noqa: E402


def build(engine: str, corpus: Path, out: Path, workers: int) -> None:
    """One build, in this process (the child)."""
    cfg = DataConfig(
        sources=f"jsonl:{corpus}",
        tokenizer=TokenizerConfig(vocab_size=8192, train_mb=10.0),
        workers=workers,
        engine=engine,
    )
    began = time.perf_counter()
    build_dataset(cfg, out, verbose=False)
    print(json.dumps({"wall_s": time.perf_counter() - began}))


def summary(out: Path, wall: float, size: int) -> dict:
    meta = json.loads((out / "metadata.json").read_text())
    t = meta["timings"]
    peaks: dict[str, list[float]] = {}
    for w in t["per_worker"]:
        rss, private = peaks.get(w["stage"], [0.0, 0.0])
        peaks[w["stage"]] = [max(rss, w["peak_rss_mb"]), max(private, w["peak_private_mb"])]
    return {
        "engine": t["engine"],
        "wall_s": round(wall, 1),
        "mb_s": round(size / 1e6 / wall, 2),
        "passes": t["passes"],
        "driver_peak_rss_private_mb": [t["peak_rss_mb"], t["peak_private_mb"]],
        "worker_peak_rss_private_mb": peaks,
        "workers": len({(w["node"], w["pid"]) for w in t["per_worker"]}),
    }


def same_bytes(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    skip = ("metadata.json", "report.txt")
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names if n not in skip)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mb", type=float, default=100.0)
    p.add_argument("--engines", default="local,ray")
    p.add_argument("--corpus", type=Path, help="an existing JSONL corpus (else one is made)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--child", nargs=2, metavar=("ENGINE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return build(args.child[0], args.corpus, Path(args.child[1]), args.workers)
    work = Path(tempfile.mkdtemp(prefix="jaxgpt-engines-"))
    env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **os.environ}
    try:
        corpus = args.corpus or work / "corpus.jsonl"
        if not args.corpus:
            make_corpus(work, args.mb)
        size = corpus.stat().st_size
        results, outs = [], []
        for engine in args.engines.split(","):
            out = work / f"data-{engine}"
            child = [sys.executable, __file__, "--corpus", str(corpus), "--child", engine, str(out)]
            run = subprocess.run(
                [*child, "--workers", str(args.workers)], env=env, capture_output=True, text=True
            )
            if run.returncode:
                sys.exit(f"{engine} failed:\n{run.stderr[-3000:]}")
            wall = json.loads(run.stdout.strip().splitlines()[-1])["wall_s"]
            results.append(summary(out, wall, size))
            outs.append(out)
            print(json.dumps(results[-1], indent=1))
        identical = all(same_bytes(outs[0], o) for o in outs[1:])
        print(json.dumps({"corpus_mb": round(size / 1e6, 1), "identical": identical}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
