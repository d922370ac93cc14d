"""Using a trained run: generate and evaluate, as functions and as commands."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxgpt.generate import parse_args, sample_texts
from jaxgpt.run.loop import train
from jaxgpt.run.scoring import evaluate
from jaxgpt.workdir import load_run

pytestmark = pytest.mark.slow  # trains or exports real runs; not in the fast subset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tests.helpers import tiny_config

    tmp = tmp_path_factory.mktemp("use")
    corpus = tmp / "corpus.txt"
    corpus.write_text("".join(f"line {i % 13}: the cat sat on the mat.\n" for i in range(2000)))
    workdir = tmp / "run"
    train(tiny_config(corpus, **{"train.steps": 30, "model.dropout": 0.0}), workdir)
    return workdir


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
        input=stdin, timeout=300,
    )  # fmt: skip


def test_load_run(run_dir):
    run = load_run(run_dir)
    assert run.step == 30 and run.gpt_config.n_layer == 2
    assert run.tokenizer.decode(run.tokenizer.encode("the cat")) == "the cat"


@pytest.mark.e2e
def test_generate_command_matches_library_and_seed(run_dir):
    args = ["--workdir", str(run_dir), "--prompt", "line 3:", "--max_tokens", "12", "--seed", "5"]
    out = cli("jaxgpt.generate", *args)
    assert out.returncode == 0, out.stderr
    expected = sample_texts(load_run(run_dir), ["line 3:"], parse_args(args))
    assert out.stdout.strip() == ("line 3:" + expected[0]).strip()
    again = cli("jaxgpt.generate", *args)
    assert again.stdout == out.stdout  # same seed, same text


@pytest.mark.e2e
def test_generate_prompts_from_stdin_and_batches(run_dir):
    run = load_run(run_dir)
    args = parse_args(["--workdir", str(run_dir), "--max_tokens", "8", "--temperature", "0",
                       "--num_samples", "2"])  # fmt: skip
    texts = sample_texts(run, ["line 1:", "the cat sat on"], args)
    assert len(texts) == 4 and texts[0] == texts[1] and texts[2] == texts[3]  # greedy
    out = cli("jaxgpt.generate", "--workdir", str(run_dir), "--prompt_file", "-", "--max_tokens",
              "8", "--temperature", "0", stdin="line 1:\nthe cat sat on\n")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "line 1:" + texts[0] in out.stdout and "the cat sat on" + texts[2] in out.stdout


@pytest.mark.e2e
def test_generate_errors_are_clear(run_dir, tmp_path):
    too_long = cli("jaxgpt.generate", "--workdir", str(run_dir), "--prompt", "x" * 40)
    assert too_long.returncode != 0 and "exceeds the model's context" in too_long.stderr
    not_a_run = cli("jaxgpt.generate", "--workdir", str(tmp_path), "--prompt", "hi")
    assert not_a_run.returncode != 0 and "is not a jaxgpt workdir" in not_a_run.stderr
    assert "Traceback" not in too_long.stderr + not_a_run.stderr


def test_evaluate_own_validation_split(run_dir):
    result = evaluate(str(run_dir))
    run = load_run(run_dir)
    assert result["step"] == 30 and result["tokens"] > 0
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    # char tokenizer on ASCII: one byte per token, so bits/byte = nats/token / ln 2.
    assert result["bytes_per_token"] == pytest.approx(1.0, abs=0.01)
    assert result["bits_per_byte"] == pytest.approx(result["loss"] / math.log(2), rel=0.01)
    assert run.gpt_config.vocab_size >= run.tokenizer.vocab_size


@pytest.mark.e2e
def test_evaluate_other_text_and_command(run_dir, tmp_path):
    seen = tmp_path / "seen.txt"
    seen.write_text("".join(f"line {i % 13}: the cat sat on the mat.\n" for i in range(200)))
    noise = tmp_path / "noise.txt"
    noise.write_text("".join(np.random.default_rng(0).choice(list("qzxjkv "), 4000)))
    familiar = evaluate(str(run_dir), f"text:{seen}")
    strange = evaluate(str(run_dir), f"text:{noise}")
    assert familiar["loss"] < strange["loss"]
    out = cli("jaxgpt.evaluate", "--workdir", str(run_dir), "--sources", f"text:{seen}")
    assert out.returncode == 0, out.stderr
    assert "bits/byte" in out.stdout and f"{familiar['loss']:.4f}" in out.stdout
