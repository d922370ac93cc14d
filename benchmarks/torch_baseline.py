"""PyTorch eager reference: a char-level GPT-2-style model, a train-step timer, and nanoGPT's
"baby GPT on CPU" run (CharRun) for the time-to-quality race.

Used as a CPU baseline so the JAX trainer's step time (benchmarks/step_time.py) and time to
validation loss 1.88 (benchmarks/time_to_quality.py) can be compared in the same run.

    python benchmarks/torch_baseline.py                       # median ms/step, synthetic tokens
    python benchmarks/torch_baseline.py --data DIR            # the 2000-iteration baseline run
on a data dir that `python -m jaxgpt.prepare --config configs/shakespeare_char.py` made.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)
from torch import nn


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention using the fused SDPA kernel."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool = True) -> None:
        super().__init__()
        assert n_embd % n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.dropout = n_head, dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.resid_drop(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: attention and 4x GELU MLP, each with a residual."""

    def __init__(
        self, n_embd: int, n_head: int, dropout: float, bias: bool = True, gelu: str = "tanh"
    ) -> None:
        super().__init__()
        self.gelu = gelu  # "tanh" (GPT-2's and jaxgpt's) | "none" (exact erf: nanoGPT's nn.GELU)
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = nn.ModuleDict(
            {
                "c_fc": nn.Linear(n_embd, 4 * n_embd, bias=bias),
                "c_proj": nn.Linear(4 * n_embd, n_embd, bias=bias),
            }
        )
        self.mlp_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        h = F.gelu(self.mlp["c_fc"](self.ln_2(x)), approximate=self.gelu)
        return x + self.mlp_drop(self.mlp["c_proj"](h))


class GPT(nn.Module):
    """GPT-2 architecture with learned positions and lm_head tied to the token embedding
    (bias=False: nanoGPT's default, no biases in Linear and LayerNorm layers)."""

    def __init__(
        self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
        dropout: float = 0.0, bias: bool = True, gelu: str = "tanh",
    ) -> None:  # fmt: skip
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(n_embd, n_head, dropout, bias, gelu) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2 scales residual projections so the residual stream variance doesn't grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the mean cross-entropy loss over all (B, T) targets."""
        seq_len = idx.shape[1]
        assert seq_len <= self.block_size, f"sequence {seq_len} > block_size {self.block_size}"
        pos = torch.arange(seq_len, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def make_optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.AdamW:
    """AdamW with weight decay only on matrices/embeddings (>= 2-D), as in GPT-2 training."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))


class TorchStepper:
    """One eager train step per call (forward, backward, clip, AdamW, loss.item()), on
    pre-generated batches, so a caller can interleave it with another framework's steps."""

    def __init__(
        self, n_layer: int = 4, n_head: int = 4, n_embd: int = 128, block_size: int = 64,
        batch_size: int = 12, vocab_size: int = 65, seed: int = 0, threads: int | None = None,
        n_batches: int = 64,
    ) -> None:  # fmt: skip
        if threads is not None:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.model = GPT(vocab_size, block_size, n_layer, n_head, n_embd)
        self.model.train()
        self.opt = make_optimizer(self.model)
        # Pre-generate batches so data generation stays out of the timed region.
        g = torch.Generator().manual_seed(seed)
        data = torch.randint(0, vocab_size, (n_batches, batch_size, block_size + 1), generator=g)
        self.xs, self.ys = data[..., :-1].contiguous(), data[..., 1:].contiguous()
        self.i = 0

    def step(self) -> float:
        x, y = self.xs[self.i % len(self.xs)], self.ys[self.i % len(self.ys)]
        self.i += 1
        loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()  # a logging loop syncs on the loss each step; keep that cost

    def info(self) -> dict:
        return {
            "threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            # Tied lm_head shares wte's tensor, so parameters() counts it once.
            "params": sum(p.numel() for p in self.model.parameters()),
        }


def nanogpt_lr(it: int, lr: float, min_lr: float, warmup: int, decay_iters: int) -> float:
    """nanoGPT's get_lr: linear warmup, cosine decay to min_lr at decay_iters, then min_lr."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


class CharRun:
    """nanoGPT's "baby GPT on CPU" (config/train_shakespeare_char.py, its default bias=False,
    and --device=cpu --compile=False --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
    --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0) on a given token
    array: random-offset batches as its get_batch, AdamW lr 1e-3 → 1e-4 (cosine, warmup 100),
    β2 0.99, weight decay 0.1 on matrices, clip 1.0. Batches are drawn apart from the timed
    steps."""

    def __init__(
        self, train_tokens, vocab_size: int, steps: int = 2000, seed: int = 0,
        threads: int | None = None, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
        block_size: int = 64, batch_size: int = 12, lr: float = 1e-3, min_lr: float = 1e-4,
        warmup: int = 100,
    ) -> None:  # fmt: skip
        if threads is not None:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.model = GPT(vocab_size, block_size, n_layer, n_head, n_embd, bias=False, gelu="none")
        self.opt = make_optimizer(self.model, lr)
        self.data = torch.as_tensor(train_tokens, dtype=torch.long)
        self.gen = torch.Generator().manual_seed(seed)
        self.steps, self.block_size, self.batch_size = steps, block_size, batch_size
        self.schedule = (lr, min_lr, warmup, steps)
        self.it = 0

    def batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The next n (x, y) batches at random offsets (nanoGPT's get_batch)."""
        out = []
        for _ in range(n):
            ix = torch.randint(
                len(self.data) - self.block_size, (self.batch_size,), generator=self.gen
            )
            x = torch.stack([self.data[i : i + self.block_size] for i in ix])
            y = torch.stack([self.data[i + 1 : i + 1 + self.block_size] for i in ix])
            out.append((x, y))
        return out

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One training iteration at nanoGPT's learning rate for it; returns the loss."""
        for group in self.opt.param_groups:
            group["lr"] = nanogpt_lr(self.it, *self.schedule)
        self.model.train()
        loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.it += 1
        return loss.item()

    @torch.no_grad()
    def val_loss(self, windows_NT1) -> float:
        """Mean next-token loss over fixed windows [N, T+1] (eval mode)."""
        self.model.eval()
        w = torch.as_tensor(windows_NT1, dtype=torch.long)
        # Bigger batches than training's: the same mean over every target, in fewer calls.
        parts = w.split(8 * self.batch_size)
        losses = [self.model(b[:, :-1], b[:, 1:]).item() for b in parts]
        sizes = [len(b) for b in parts]
        return sum(loss * n for loss, n in zip(losses, sizes, strict=True)) / sum(sizes)


def char_vocab(*token_arrays: np.ndarray) -> tuple[np.ndarray, int]:
    """(lookup table, size): jaxgpt's char tokenizer has 324 ids of which Shakespeare uses 66
    (65 characters and end-of-text); the baseline's vocabulary is the ids used, in order."""
    used = np.unique(np.concatenate([np.unique(a) for a in token_arrays]))
    lut = np.zeros(int(used.max()) + 1, np.int64)
    lut[used] = np.arange(len(used))
    return lut, len(used)


def data_arrays(data_dir: str, seq_len: int = 64, eval_tokens: int = 100 * 12 * 64):
    """(train tokens, fixed validation windows [N, T+1], vocab size) of a jaxgpt-prepared
    data dir, remapped to the characters used; the windows are jaxgpt's own (eval_windows)."""
    from jaxgpt.data.dataset import load_dataset
    from jaxgpt.data.pipeline import eval_windows

    data = load_dataset(data_dir)
    stream = data.tokens("train")
    train = np.asarray(stream.window(0, len(stream)))
    val = eval_windows(data.tokens("val"), seq_len, eval_tokens, 12).reshape(-1, seq_len + 1)
    lut, vocab = char_vocab(train, val)
    return lut[train], lut[val], vocab


def train_on_data(
    data_dir: str, steps: int = 2000, eval_every: int = 250, eval_tokens: int = 100 * 12 * 64,
    seed: int = 0, threads: int | None = None,
) -> dict:  # fmt: skip
    """The baseline's full run on a prepared data dir: training seconds (steps only, batches
    drawn before each timed round, evaluations excluded) and the validation curve."""
    train, val, vocab = data_arrays(data_dir, 64, eval_tokens)
    run = CharRun(train, vocab, steps, seed, threads)
    curve, seconds, times_ms = [(0, 0.0, round(run.val_loss(val), 4))], 0.0, []
    while run.it < steps:
        for x, y in run.batches(min(eval_every, steps - run.it)):
            t0 = time.perf_counter()
            run.step(x, y)
            times_ms.append((time.perf_counter() - t0) * 1e3)
            seconds += times_ms[-1] / 1e3
        curve.append((run.it, round(seconds, 3), round(run.val_loss(val), 4)))
        print(f"step {run.it:5d}  {seconds:7.1f} s  val {curve[-1][2]:.4f}", flush=True)
    return {
        "train_seconds": round(seconds, 2),
        "final_val": round(curve[-1][2], 4),
        "val_windows": len(val),
        "curve": curve,
        **summarize(times_ms),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }


def time_torch_steps(
    n_layer: int = 4, n_head: int = 4, n_embd: int = 128, block_size: int = 64,
    batch_size: int = 12, vocab_size: int = 65, steps: int = 60, warmup: int = 10,
    seed: int = 0, threads: int | None = None,
) -> dict:  # fmt: skip
    """Time `steps` eager train steps (after `warmup` untimed ones); return step-time stats."""
    stepper = TorchStepper(
        n_layer, n_head, n_embd, block_size, batch_size, vocab_size, seed, threads
    )
    times_ms: list[float] = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        stepper.step()
        if i >= warmup:
            times_ms.append((time.perf_counter() - t0) * 1e3)
    return {**summarize(times_ms), **stepper.info()}


def summarize(times_ms: list[float]) -> dict:
    """Median, mean, p10 and p90 of per-step milliseconds."""
    q = statistics.quantiles(times_ms, n=10) if len(times_ms) >= 2 else times_ms * 9
    return {
        "median_ms": statistics.median(times_ms),
        "mean_ms": statistics.fmean(times_ms),
        "p10_ms": q[0],
        "p90_ms": q[-1],
        "steps": len(times_ms),
    }


def main() -> None:
    """CLI: run the benchmark, print a summary and one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__)
    for name, default in [
        ("n_layer", 4), ("n_head", 4), ("n_embd", 128), ("block_size", 64),
        ("batch_size", 12), ("vocab_size", 65), ("warmup", 10), ("seed", 0),
    ]:  # fmt: skip
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (60; --data: 2000)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads value")
    ap.add_argument(
        "--data",
        default="",
        help="a jaxgpt-prepared char data dir (python -m jaxgpt.prepare --config "
        "configs/shakespeare_char.py): train nanoGPT's baby GPT on it for --steps (2000) "
        "and print its training seconds and validation curve",
    )
    ap.add_argument("--eval_every", type=int, default=250, help="--data: steps between evals")
    ap.add_argument("--eval_tokens", type=int, default=100 * 12 * 64, help="--data: val tokens")
    args = ap.parse_args()
    if args.data:
        args.steps = args.steps or 2000
        r = train_on_data(
            args.data, args.steps, args.eval_every, args.eval_tokens, args.seed, args.threads
        )
        print(
            f"torch {r['torch_version']} eager, {r['threads']} threads: {args.steps} steps in "
            f"{r['train_seconds']:.1f} s of training (median {r['median_ms']:.2f} ms/step), "
            f"val {r['final_val']:.4f} on {r['val_windows']} windows of 64"
        )
        print(json.dumps(r))
        return
    args.steps = args.steps or 60
    extra = ("data", "eval_every", "eval_tokens")
    r = time_torch_steps(**{k: v for k, v in vars(args).items() if k not in extra})
    print(
        f"torch {r['torch_version']} eager, {r['threads']} threads, {r['params']:,} params: "
        f"median {r['median_ms']:.2f} ms/step (mean {r['mean_ms']:.2f}, "
        f"p10 {r['p10_ms']:.2f}, p90 {r['p90_ms']:.2f}) over {r['steps']} steps"
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
