"""The time-to-quality benchmark's pieces: the PyTorch baseline is nanoGPT's baby GPT (schedule,
size), and the race's bookkeeping (turns, evaluations, steps and seconds to the target, ratios)."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import time_to_quality as ttq  # noqa: E402
from torch_baseline import CharRun, char_vocab, nanogpt_lr  # noqa: E402


def test_nanogpt_schedule():
    """nanoGPT's get_lr for lr 1e-3 → 1e-4, warmup 100, decay over 2000 iterations."""
    lr = lambda it: nanogpt_lr(it, 1e-3, 1e-4, 100, 2000)
    assert lr(0) == pytest.approx(1e-3 / 101)
    assert lr(99) == pytest.approx(1e-3 * 100 / 101)
    assert lr(100) == pytest.approx(1e-3)
    assert lr(1050) == pytest.approx(1e-4 + 0.5 * 0.9e-3)  # half way: cos(π/2) = 0
    assert lr(2000) == pytest.approx(1e-4) and lr(2500) == 1e-4


def test_baby_gpt_size_and_learning():
    """4 layers, width 128, no biases, tied head: nanoGPT's 0.80M parameters (wpe excluded),
    and a few steps on a repeating text lower the loss."""
    tokens = np.tile(np.arange(65), 200)
    run = CharRun(tokens, 65, steps=30, threads=1)
    n = sum(p.numel() for p in run.model.parameters())
    assert n == 804_096 and round((n - 64 * 128) / 1e6, 2) == 0.80
    windows = np.stack([tokens[i : i + 65] for i in range(0, 650, 65)])
    before = run.val_loss(windows)
    for x, y in run.batches(30):
        run.step(x, y)
    assert run.val_loss(windows) < before - 0.5


def test_char_vocab_keeps_order():
    lut, size = char_vocab(np.array([7, 3, 300]), np.array([[3, 9]]))
    assert size == 4 and list(lut[[3, 7, 9, 300]]) == [0, 1, 2, 3]


class Fake(ttq.Contender):
    """Loss falls by `drop` per step; each step takes `ms`."""

    def __init__(self, label, steps, eval_every, drop, ms, startup=0.0):
        self.curve = ttq.Curve(label, startup_s=startup)
        self.steps, self.eval_every, self.drop, self.ms = steps, eval_every, drop, ms

    def train(self, n):
        self.curve.step_ms += [self.ms] * n
        self.curve.first_step_s = self.curve.first_step_s or self.ms / 1e3
        self.step += n
        return n * self.ms / 1e3

    def val_loss(self):
        return 4.0 - self.drop * self.step


def test_race_and_summary():
    """Turns of `chunk` steps, evaluations at multiples of eval_every and at the end; the ratio
    is seconds to the target over the baseline's seconds for all its steps."""
    base = Fake(ttq.BASELINE, steps=200, eval_every=50, drop=0.011, ms=30)
    fast = Fake("fast", steps=45, eval_every=10, drop=0.05, ms=50, startup=1.0)
    ttq.race([base, fast], target=1.88, stop_at_target=False, chunk=10)
    assert [p[0] for p in fast.curve.points] == [0, 10, 20, 30, 40, 45]
    assert [p[0] for p in base.curve.points] == [0, 50, 100, 150, 200]
    assert 150 < base.curve.shared_steps < 200  # turns go by progress: fast spreads over base
    s = ttq.summarize([base.curve, fast.curve], 1.88)
    # fast: 4 - 0.05·step ≤ 1.88 first at step 45 (evaluations at 40 → 2.0, 45 → 1.75).
    assert s["fast"]["median_steps_to_target"] == 45
    assert s["fast"]["median_seconds_to_target"] == pytest.approx(1.0 + 45 * 0.05)
    assert s[ttq.BASELINE]["median_steps_to_target"] == 200  # 4 - 0.011·200 = 1.8
    assert s["fast"]["ratio"] == pytest.approx(3.25 / 6.0, abs=1e-3)
    assert s["fast"]["ratio_steps_only"] == pytest.approx((3.25 - 1.0) / 6.0, abs=1e-3)
    assert s["fast"]["ratio_load_matched"] == pytest.approx(3.25 / 6.0, abs=1e-3)
    assert math.isclose(s[ttq.BASELINE]["ratio"], 1.0)
    assert "NOT met" in ttq.report(s, 1.88)  # 0.54 > 0.50
