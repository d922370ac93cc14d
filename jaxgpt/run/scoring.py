"""Score a trained run (the library behind `python -m jaxgpt.evaluate`): loss, perplexity and
bits per byte on its validation split or on other text, with the training loop's own sharded
evaluation loop (jaxgpt.run.evaluation) over the mesh the run was trained with."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxgpt import cpu_devices
from jaxgpt import sharding as sharding_lib
from jaxgpt.config.run import MeshConfig
from jaxgpt.config.tree import from_dict
from jaxgpt.data import sft
from jaxgpt.data import sources as sources_lib
from jaxgpt.data.dataset import DatasetInfo, load_dataset
from jaxgpt.run.evaluation import batch_windows, local_rows, loss_sums, perplexity
from jaxgpt.state import make_scorer
from jaxgpt.workdir import Run, load_run


def token_stream(run: Run, sources: str | None) -> tuple[np.ndarray, int, str]:
    """(tokens, UTF-8 bytes of the text they encode, a description)."""
    if not sources:
        data_dir = _data_dir(run)
        info = load_dataset(data_dir)
        meta = json.loads((Path(data_dir) / "metadata.json").read_text())
        return info.tokens("val").read_all(), meta["splits"]["val"]["bytes"], f"{data_dir} (val)"
    stats = sources_lib.ReadStats()
    pieces, n_bytes = [], 0
    for doc in sources_lib.iter_documents(sources_lib.parse_sources(sources), stats):
        pieces.append(np.asarray([*run.tokenizer.encode(doc), run.tokenizer.eot_id], np.int64))
        n_bytes += len(doc.encode())
    if not pieces:
        raise ValueError(f"{sources} holds no documents")
    return np.concatenate(pieces), n_bytes, sources


def _data_dir(run: Run) -> str:
    return run.config["data"]["path"] or str(run.path / "data")


def stream_windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows [N, T+1] covering the stream (each shares one token with the
    next: the last input of one is the first of the next)."""
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows == 0:
        raise ValueError(f"{len(tokens)} tokens is less than one window of {seq_len + 1}")
    starts = np.arange(n_windows) * seq_len
    return np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int32)


class RunScorer:
    """A run's params placed on the mesh it was trained with, and the sharded eval step."""

    def __init__(self, run: Run, batch_size: int):
        mesh_cfg = from_dict(MeshConfig, run.config.get("mesh", {}), "mesh.")
        cpu_devices.configure(mesh_cfg.cpu_devices, mesh_cfg, (batch_size,))
        mesh = sharding_lib.make_mesh(mesh_cfg)
        n_batch = sharding_lib.batch_axis_size(mesh, mesh_cfg.rules)
        # Batches must split evenly over the data-parallel devices: round up, pad with rows
        # that count nothing.
        self.batch_size = -(-batch_size // n_batch) * n_batch
        self.scorer = make_scorer(run.model, mesh, mesh_cfg.rules)
        self.params = jax.device_put(run.params, self.scorer.params_sharding)

    def loss_sums(self, windows_NT1: np.ndarray) -> tuple[float, float]:
        """(summed loss, targets) over windows [N, T+1] (negative tokens are not targets)."""
        batches = [local_rows(b) for b in batch_windows(windows_NT1, self.batch_size)]
        return loss_sums(self.scorer.eval, self.params, batches, self.scorer.batch_sharding)


def evaluate(workdir: str | Path, sources: str | None = None, batch_size: int = 8) -> dict:
    """Loss, perplexity and bits per byte of a run on its validation split or other text."""
    run = load_run(workdir)
    scorer = RunScorer(run, batch_size)
    if not sources:
        info = load_dataset(_data_dir(run))
        if info.format == "sft":
            return evaluate_sft(run, scorer, info)
    tokens, n_bytes, what = token_stream(run, sources)
    started = time.time()
    loss_sum, scored = scorer.loss_sums(stream_windows(tokens, run.gpt_config.block_size))
    loss = loss_sum / scored
    # Bits per byte: total bits over the bytes of the scored tokens' share of the text.
    scored_bytes = n_bytes * scored / len(tokens)
    return {
        "workdir": str(workdir),
        "step": run.step,
        "data": what,
        "tokens": int(scored),
        "loss": loss,
        "perplexity": perplexity(loss),
        "bits_per_byte": loss * scored / (math.log(2) * scored_bytes),
        "bytes_per_token": n_bytes / len(tokens),
        "seconds": round(time.time() - started, 2),
    }


def evaluate_sft(run: Run, scorer: RunScorer, info: DatasetInfo) -> dict[str, Any]:
    """Completion-token loss over every validation example of a supervised fine-tuning run."""
    started = time.time()
    examples = sft.load_examples(info, "val")
    T = run.gpt_config.block_size
    rows = sft.eval_rows(examples, info.eot_id, T, len(examples) * T, 1).reshape(-1, T + 1)
    loss_sum, scored = scorer.loss_sums(rows)
    loss = loss_sum / scored
    return {
        "workdir": str(run.path),
        "step": run.step,
        "data": f"{info.path} (val, {len(examples):,} examples, completion tokens)",
        "tokens": int(scored),
        "loss": loss,
        "perplexity": perplexity(loss),
        "bits_per_byte": None,  # prompts are not scored, so there is no byte count to divide
        "bytes_per_token": None,
        "seconds": round(time.time() - started, 2),
    }
