"""Input-pipeline throughput from token shards in a bucket (gs://, s3://) against local disk.

    python benchmarks/storage_input.py [--rows 8 64] [--seq 1024] [--batches 40] [--trials 5]

Prepares tinyshakespeare (char tokenizer, 1.0 M training tokens) once locally and once into a
bucket on each loopback emulator (fake-gcs-server for gs://, moto's S3 server for s3://; both
from tests/storage_servers.py), then times the training input exactly as train runs it
(`TrainBatches` + `device_batches`, one prefetch thread, two batches ahead): --batches batches
of ROWS × (--seq + 1) tokens per trial, after 3 untimed ones. A batch from a bucket is one round
of concurrent ranged GETs, one per row. Prints the median over --trials of tokens/s and of the
time per batch, per source and row count; the last line is JSON.

The emulators run on this host (moto even in this process, sharing its GIL with the reader), so
the figures measure the client path and request overhead, not a real network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jaxgpt.config.data import DataConfig, TokenizerConfig  # noqa: E402
from jaxgpt.data.build import prepare_dataset  # noqa: E402
from jaxgpt.data.pipeline import TrainBatches, device_batches  # noqa: E402
from tests.storage_servers import SERVERS, new_bucket  # noqa: E402

WARMUP = 3


def time_pipeline(info, rows: int, seq: int, batches: int, trial: int) -> float:
    """Seconds to take `batches` batches from the prefetching input, after WARMUP untimed."""
    stream = TrainBatches(info.tokens("train"), rows, seq, seed=trial)
    it = device_batches(stream, 0, WARMUP + batches, lambda b: b)
    for _ in range(WARMUP):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return time.perf_counter() - start


def measure(info, args) -> dict[int, dict[str, float]]:
    out = {}
    for rows in args.rows:
        seconds = [time_pipeline(info, rows, args.seq, args.batches, t) for t in range(args.trials)]
        tokens = args.batches * rows * (args.seq + 1)
        out[rows] = {
            "tokens_per_s": statistics.median(tokens / s for s in seconds),
            "ms_per_batch": statistics.median(s / args.batches * 1e3 for s in seconds),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[8, 64], help="rows per batch")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--trials", type=int, default=5)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jaxgpt-storage-bench-"))
    os.environ["JAXGPT_CACHE_DIR"] = str(work / "cache")
    cfg = DataConfig(
        sources="shakespeare", tokenizer=TokenizerConfig(model_type="char", vocab_size=0)
    )
    results = {"local": measure(prepare_dataset(cfg, work / "data", verbose=False), args)}
    for kind in ("gs", "s3"):
        server = SERVERS[kind]()
        try:
            url, env = new_bucket(server, kind)
            os.environ.update(env)
            results[kind] = measure(prepare_dataset(cfg, f"{url}/data", verbose=False), args)
        finally:
            server.stop()
    print(f"{'source':<8} {'rows':>5} {'tokens/s':>14} {'ms/batch':>10}")
    for source, by_rows in results.items():
        for rows, r in by_rows.items():
            print(f"{source:<8} {rows:>5} {r['tokens_per_s']:>14,.0f} {r['ms_per_batch']:>10.2f}")
    print(json.dumps({"seq": args.seq, "batches": args.batches, "results": results}))


if __name__ == "__main__":
    main()
