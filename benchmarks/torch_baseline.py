"""PyTorch eager reference: a char-level GPT-2-style model and a train-step timer.

Used as a CPU baseline so the JAX trainer's step time can be compared in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)
from torch import nn


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention using the fused SDPA kernel."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        assert n_embd % n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.dropout = n_head, dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
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

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.ModuleDict(
            {"c_fc": nn.Linear(n_embd, 4 * n_embd), "c_proj": nn.Linear(4 * n_embd, n_embd)}
        )
        self.mlp_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        h = F.gelu(self.mlp["c_fc"](self.ln_2(x)), approximate="tanh")
        return x + self.mlp_drop(self.mlp["c_proj"](h))


class GPT(nn.Module):
    """GPT-2 architecture with learned positions and lm_head tied to the token embedding."""

    def __init__(
        self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
        dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
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
        ("batch_size", 12), ("vocab_size", 65), ("steps", 60), ("warmup", 10), ("seed", 0),
    ]:  # fmt: skip
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads value")
    args = ap.parse_args()
    r = time_torch_steps(**vars(args))
    print(
        f"torch {r['torch_version']} eager, {r['threads']} threads, {r['params']:,} params: "
        f"median {r['median_ms']:.2f} ms/step (mean {r['mean_ms']:.2f}, "
        f"p10 {r['p10_ms']:.2f}, p90 {r['p90_ms']:.2f}) over {r['steps']} steps"
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
