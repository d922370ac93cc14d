"""Supervised fine-tuning: masked targets carry no loss and no gradient; the data path; a run
that learns a planted prompt → completion mapping."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgpt.model import GPT, GPTConfig
from jaxgpt.state import TrainState, next_token_loss, split_targets, train_step
from tests.helpers import planted_pairs, sft_config, write_jsonl

CFG = GPTConfig(vocab_size=50, block_size=12, n_layer=2, n_head=2, n_embd=16)


def masked(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Targets where mask is False become -(t+1): not trained on."""
    return np.where(mask, tokens, -tokens - 1).astype(np.int32)


def setup():
    model = GPT(CFG)
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 12), jnp.int32))["params"])
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CFG.vocab_size, (4, 13))
    mask = rng.random((4, 13)) < 0.5
    mask[:, -1] = False  # every row's last target is a prompt/pad token
    return model, params, tokens, mask


def test_split_targets_decodes_the_sign():
    _, _, tokens, mask = setup()
    inputs, targets, weights = map(np.asarray, split_targets(jnp.asarray(masked(tokens, mask))))
    np.testing.assert_array_equal(inputs, tokens[:, :-1])
    np.testing.assert_array_equal(targets, tokens[:, 1:])
    np.testing.assert_array_equal(weights, mask[:, 1:].astype(np.float32))


@pytest.mark.slow
def test_masked_targets_get_zero_loss_and_zero_gradient():
    model, params, tokens, mask = setup()
    batch = masked(tokens, mask)
    loss = next_token_loss(params, model, jnp.asarray(batch), None)
    logits = model.apply({"params": params}, jnp.asarray(tokens[:, :-1]))
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]))
    np.testing.assert_allclose(loss, ce[mask[:, 1:]].mean(), rtol=1e-6)
    # The last position is only ever a target: if it is masked, what it holds cannot matter.
    other = tokens.copy()
    other[:, -1] = (other[:, -1] + 7) % CFG.vocab_size
    grad = jax.grad(next_token_loss)
    g1 = grad(params, model, jnp.asarray(batch), None)
    g2 = grad(params, model, jnp.asarray(masked(other, mask)), None)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), g1, g2)
    # ...while an unmasked last target does change the gradient.
    unmasked = mask.copy()
    unmasked[:, -1] = True
    g3 = grad(params, model, jnp.asarray(masked(tokens, unmasked)), None)
    g4 = grad(params, model, jnp.asarray(masked(other, unmasked)), None)
    assert not np.allclose(np.asarray(g3["wte"]["embedding"]), np.asarray(g4["wte"]["embedding"]))


def test_microbatches_average_over_all_targets_of_the_batch():
    """Rows with very different numbers of targets: 2 microbatches give the 1-microbatch step."""
    model, params, tokens, mask = setup()
    mask[0, 1:] = True  # row 0: all targets; row 1: one target; others random
    mask[1, 1:] = False
    mask[1, 5] = True
    batch = jnp.asarray(masked(tokens, mask))
    tx = optax.sgd(0.1)
    state = TrainState.fresh(params, tx.init(params))
    kw = dict(model=model, tx=tx, schedule=optax.constant_schedule(0.1), dropout=False)
    s1, m1 = train_step(state, batch, jax.random.key(0), microbatches=1, **kw)
    s2, m2 = train_step(state, batch, jax.random.key(0), microbatches=2, **kw)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
        s1.params,
        s2.params,
    )


# ---------------------------------------------------------------- data and an end-to-end run


def test_sft_data_dir_flags_prompts_and_reports_bad_lines(tmp_path):
    from jaxgpt.config import run_config
    from jaxgpt.data.build import prepare_dataset
    from jaxgpt.data.sft import example_row, load_examples, to_signed

    jsonl = write_jsonl(
        tmp_path / "pairs.jsonl",
        planted_pairs(),
        ['{"prompt": "no completion"}', "{not json", '{"prompt": "x=", "completion": "   "}'],
    )
    rc = run_config(sft_config(jsonl))
    data = prepare_dataset(rc.data, tmp_path / "data", verbose=False)
    assert data.format == "sft"
    report = (tmp_path / "data" / "report.txt").read_text()
    assert f"{jsonl}:49" in report and f"{jsonl}:50" in report  # file:line of each bad line
    assert "bad json lines: 1" in report and "missing field lines: 1" in report
    train_ex, val_ex = load_examples(data, "train"), load_examples(data, "val")
    assert len(train_ex) + len(val_ex) == 48 and len(val_ex) > 0
    tok = data.tokenizer()
    ex = to_signed(train_ex.get(0))
    prompt_len = int(np.sum(ex < 0))
    text = tok.decode([-t - 1 for t in ex[:prompt_len]])
    assert text.startswith("item") and text.endswith("=")
    assert ex[-1] == tok.eot_id and (ex[prompt_len:] >= 0).all()
    # A row: the example then uncounted EOT padding; a too-long example keeps its end.
    row = example_row(train_ex.get(0), 15, tok.eot_id)
    assert (row[: len(ex)] == ex).all() and (row[len(ex) :] == -tok.eot_id - 1).all()
    short = example_row(train_ex.get(0), 3, tok.eot_id)
    assert (short == ex[-4:]).all()

    strict = run_config(sft_config(jsonl, **{"data.strict": True}))
    with pytest.raises(ValueError, match=re.escape(f"{jsonl}:49")):
        prepare_dataset(strict.data, tmp_path / "strict", verbose=False)


def test_sft_rejects_non_jsonl_sources(small_corpus, tmp_path):
    from jaxgpt.config import run_config
    from jaxgpt.data.build import prepare_dataset

    rc = run_config(sft_config(small_corpus, **{"data.sources": f"text:{small_corpus}"}))
    with pytest.raises(ValueError, match=r"data\.format='sft' reads JSONL"):
        prepare_dataset(rc.data, tmp_path / "data", verbose=False)


@pytest.mark.slow
def test_sft_run_learns_a_planted_mapping(tmp_path):
    """Trained only on completions, the model completes the training prompts from memory."""
    from jaxgpt.decode.generate import generate_batch
    from jaxgpt.run.loop import train
    from jaxgpt.workdir import load_run

    pairs = planted_pairs()
    jsonl = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    cfg = sft_config(jsonl, **{"train.steps": 400, "opt.lr": 1e-2, "opt.warmup_steps": 20})
    summary = train(cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    tok = run.tokenizer
    from jaxgpt.data.dataset import load_dataset
    from jaxgpt.data.sft import load_examples, to_signed

    train_ex = load_examples(load_dataset(tmp_path / "run" / "data"), "train")
    prompts, answers = [], []
    for i in range(len(train_ex)):
        ex = to_signed(train_ex.get(i))
        prompts.append([-t - 1 for t in ex[ex < 0]])
        answers.append(tok.decode(ex[ex >= 0][:-1].tolist()))
    out = generate_batch(
        run.model, run.params, prompts, 6, jax.random.key(0), temperature=0.0,
        vocab_limit=tok.vocab_size, eot_id=tok.eot_id,
    )  # fmt: skip
    got = [tok.decode([t for t in row if t != tok.eot_id]) for row in out]
    correct = sum(g == a for g, a in zip(got, answers, strict=True))
    assert correct >= 0.9 * len(answers), (correct, len(answers), got[:5], answers[:5])
    assert summary.final_loss < 0.1
    from jaxgpt.run.scoring import evaluate

    result = evaluate(str(tmp_path / "run"))  # the val split: completion tokens only
    assert "completion tokens" in result["data"] and result["bits_per_byte"] is None
    assert result["tokens"] == sum(
        int(np.sum(to_signed(ex.get(i)) >= 0))
        for ex in [load_examples(load_dataset(tmp_path / "run" / "data"), "val")]
        for i in range(len(ex))
    )
