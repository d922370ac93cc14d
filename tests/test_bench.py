"""The benchmark harness: what it measures, its MFU formula, real-data input share, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxgpt import cpu_devices, profile_ops
from jaxgpt import metrics as metrics_lib
from jaxgpt.config import load_config_file, override
from jaxgpt.model import GPTConfig, flops_per_token
from jaxgpt.run.bench import benchmark, format_result
from jaxgpt.sharding import MeshConfig

REPO = Path(__file__).resolve().parent.parent
TINY = {
    "model.vocab_size": 64,
    "model.n_layer": 1,
    "model.n_head": 2,
    "model.n_embd": 32,
    "model.block_size": 16,
    "train.batch_size": 8,  # one row per test device
}


def tiny_config(**overrides):
    return override(load_config_file(REPO / "configs" / "tiny.py"), **{**TINY, **overrides})


def test_bench_figures_and_mfu_formula():
    """Steps are timed, and MFU is (6N + 12·L·H·Q·T)·tokens/s / (devices·peak) as in training."""
    r = benchmark(tiny_config(**{"train.peak_flops": 1e9}), steps=4, warmup=1)
    assert len(r.step_s) == 4 and all(t > 0 for t in r.step_s)
    assert r.compile_s > 0 and r.n_devices == 8 and r.tokens_per_step == 8 * 16
    model = GPTConfig(**{k: v for k, v in r.model.items()})
    assert r.flops_per_token == flops_per_token(model, r.n_params_no_pos)
    assert r.n_params - r.n_params_no_pos == 16 * 32  # the position table
    expected = r.flops_per_token * r.tokens_per_s / (8 * 1e9)
    assert r.mfu == pytest.approx(expected)
    assert r.mfu == metrics_lib.mfu(r.flops_per_token, r.tokens_per_s, 8, 1e9)
    # XLA's own FLOP count of the compiled step is near the formula's (here the optimizer and
    # softmax add a little; a formula off by a factor would show).
    assert 0.7 < r.xla_flops_per_step * 8 / (r.tokens_per_step * r.flops_per_token) < 1.5
    assert r.xla_step_bytes > 0 and r.host_peak_rss_bytes > 0
    text = format_result(r)
    assert "6·N + 12·L·H·Q·T" in text and metrics_lib.MFU_FORMULA in text
    assert f"{100 * r.mfu:.1f}% of" in text
    assert r.input_wait_frac is None and "synthetic" in text
    json.dumps(r.summary())  # plain numbers only


def test_bench_profile_groups_device_time_by_model_operation(tmp_path):
    r = benchmark(tiny_config(), steps=2, warmup=0, profile_dir=tmp_path / "trace")
    assert list((tmp_path / "trace").glob("plugins/profile/*/*.trace.json.gz"))
    assert r.profile and all(op.ms_per_step > 0 and op.kernels_per_step > 0 for op in r.profile)
    names = [op.name for op in r.profile]
    assert all(n.split()[0] in ("fwd", "bwd", "update", "(xla)") for n in names), names
    # The layers' matmuls are folded across layers and show up, forward and backward.
    assert any(n.startswith("fwd h_*/") and n.endswith("dot_general") for n in names), names
    assert any(n.startswith("bwd h_*/") for n in names), names
    assert [op.ms_per_step for op in r.profile] == sorted(
        (op.ms_per_step for op in r.profile), reverse=True
    )
    text = format_result(r)
    assert "profile" in text and names[0] in text
    assert r.summary()["profile"][0]["name"] == names[0]


def test_readable_op_names():
    assert (
        profile_ops.readable(
            "jit(train_step)/transpose(jvp(GPT))/GPT._trunk/h_11/mlp/c_fc/dot_general"
        )
        == "bwd h_*/mlp/c_fc/dot_general"
    )
    assert profile_ops.readable("jit(train_step)/jvp(GPT)/GPT.logits/wte.attend/dot_general") == (
        "fwd GPT.logits/wte.attend/dot_general"
    )
    assert profile_ops.readable("jit(train_step)/add") == "update add"


def test_bench_without_known_peak_reports_no_mfu():
    """On CPU no peak is known: MFU is None and the text says how to set one."""
    r = benchmark(tiny_config(**{"model.loss_chunk": 4, "model.remat": "full"}), 2, 0)
    assert r.peak_flops is None and r.mfu is None
    assert "train.peak_flops" in format_result(r)
    assert r.model["loss_chunk"] == 4 and r.model["remat"] == "full"


@pytest.mark.slow
def test_bench_on_real_data_reports_input_share(small_corpus, tmp_path):
    """--data runs the training input pipeline and measures the time spent waiting for it."""
    config = tiny_config(
        **{
            "data.sources": f"text:{small_corpus}",
            "data.tokenizer.model_type": "char",
            "data.tokenizer.vocab_size": 0,
            "model.vocab_size": 0,
        }
    )
    r = benchmark(
        config, steps=3, warmup=1, data_dir=tmp_path / "data", profile_dir=tmp_path / "trace"
    )
    assert r.input == str(tmp_path / "data") and r.profile  # the traced steps get batches too
    assert 0.0 <= r.input_wait_frac < 1.0
    assert "waiting for input" in format_result(r)


@pytest.mark.e2e
def test_cli_prints_report_and_json():
    args = [f"--config.{k}={v}" for k, v in TINY.items()] + ["--steps", "2", "--warmup", "0"]
    out = subprocess.run(
        [sys.executable, "-m", "jaxgpt.bench", "--config", "configs/tiny.py", *args],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    for head in ("compile", "step", "tokens/s", "MFU", "memory", "input"):
        assert any(line.startswith(head) for line in lines), head
    summary = json.loads(lines[-1])
    # As train does, the CPU host is split into one device per core (dividing the batch of 8).
    n_devices = cpu_devices.auto_count(MeshConfig(), (8,), cpu_devices.usable_cores())
    assert summary["steps"] == 2 and summary["n_devices"] == n_devices and summary["mfu"] is None
    assert summary["median_step_ms"] > 0
    # Two timed steps: their mean is their midpoint, between the 10th and 90th percentiles.
    assert summary["p10_step_ms"] <= summary["mean_step_ms"] <= summary["p90_step_ms"]
    assert any(line.startswith("step") and " mean " in line for line in lines)
