"""Data figures: `prepare` throughput (MB/s) and input-pipeline throughput (tokens/s).

    python benchmarks/data_throughput.py [--mb 100] [--batch 480 --seq 1024] [--steps 200]

prepare: a synthetic corpus of about --mb megabytes (distinct documents of words drawn from
tinyshakespeare, with planted exact and near duplicates) goes through read → clean → dedup →
tokenizer → encode → shards, timed end to end. pipeline: the training input's batches of
--batch × (--seq + 1) tokens from the resulting shards, timed after warm-up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxgpt.config.data import DataConfig, TokenizerConfig
from jaxgpt.data.build import build_dataset
from jaxgpt.data.pipeline import TrainBatches, device_batches
from jaxgpt.data.sources import SHAKESPEARE


def make_corpus(directory: Path, megabytes: float, seed: int = 0) -> int:
    """JSONL documents of 300–3000 words drawn from tinyshakespeare's vocabulary (so they are
    distinct), with 2% planted exact and 2% near duplicates (3 words changed)."""
    words = SHAKESPEARE.read_text().split()
    rng = np.random.default_rng(seed)
    target, written, recent = int(megabytes * 1e6), 0, []
    with (directory / "corpus.jsonl").open("w") as f:
        while written < target:
            roll = rng.random()
            if recent and roll < 0.02:
                doc = recent[rng.integers(len(recent))]
            elif recent and roll < 0.04:
                parts = recent[rng.integers(len(recent))].split(" ")
                for i in rng.integers(0, len(parts), 3):
                    parts[i] = "zounds"
                doc = " ".join(parts)
            else:
                picks = rng.integers(0, len(words), rng.integers(300, 3000))
                lines = [
                    " ".join(words[j] for j in picks[k : k + 12]) for k in range(0, len(picks), 12)
                ]
                doc = "\n".join(lines)
                recent = [*recent[-200:], doc]
            line = json.dumps({"text": doc}) + "\n"
            f.write(line)
            written += len(line)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mb", type=float, default=100.0)
    p.add_argument("--batch", type=int, default=480)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jaxgpt-bench-"))
    try:
        size = make_corpus(work, args.mb)
        cfg = DataConfig(
            sources=f"jsonl:{work / 'corpus.jsonl'}",
            tokenizer=TokenizerConfig(vocab_size=8192, train_mb=10.0),
            workers=args.workers,
        )
        t0 = time.perf_counter()
        info = build_dataset(cfg, work / "data", verbose=False)
        seconds = time.perf_counter() - t0
        meta = json.loads((info.path / "metadata.json").read_text())
        print((info.path / "report.txt").read_text())
        print(f"prepare: {size / 1e6:.1f} MB in {seconds:.1f} s = {size / 1e6 / seconds:.2f} MB/s")

        batches = TrainBatches(info.tokens("train"), args.batch, args.seq, seed=0)
        it = device_batches(batches, 0, args.steps + 20, lambda b: b)
        for _ in range(20):
            next(it)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            next(it)
        seconds = time.perf_counter() - t0
        tokens = args.steps * args.batch * (args.seq + 1)
        print(
            f"pipeline: {args.steps} batches of {args.batch}×{args.seq + 1} in {seconds:.2f} s = "
            f"{tokens / seconds / 1e6:.2f}M tokens/s"
        )
        print(
            json.dumps(
                {
                    "prepare_mb_s": size / 1e6 / meta["seconds"],
                    "pipeline_tokens_s": tokens / seconds,
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
