"""KV-cache decoding equals full forward passes; batching, greedy, sampling, scanned layers."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.model import GPT, GPTConfig, init_cache
from jaxgpt.sample import generate_batch, unscan_params

CFG = GPTConfig(vocab_size=61, block_size=24, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture(scope="module")
def model_params():
    model = GPT(CFG)
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 24), jnp.int32))["params"])
    return model, params


def tokens(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, n).tolist()


def cached_logits(model, params, rows: list[list[int]], prefill: int) -> np.ndarray:
    """Logits at every position of right-aligned rows: prefill `prefill` tokens, then 1 by 1."""
    longest = max(map(len, rows))
    pad = np.array([longest - len(r) for r in rows], np.int32)
    buf = np.zeros((len(rows), longest), np.int32)
    for i, r in enumerate(rows):
        buf[i, pad[i] :] = r
    caches = init_cache(model.config, len(rows), pad)
    apply = jax.jit(lambda p, t, c: model.apply({"params": p}, t, caches=c))
    logits, caches = apply(params, buf[:, :prefill], caches)
    out = [logits]
    for t in range(prefill, longest):
        logits, caches = apply(params, buf[:, t : t + 1], caches)
        out.append(logits)
    return np.concatenate([np.asarray(x) for x in out], axis=1)


def test_cached_logits_equal_full_forward_at_every_position(model_params):
    model, params = model_params
    seq = tokens(20)
    full = np.asarray(model.apply({"params": params}, jnp.asarray([seq])))
    for prefill in (1, 7):
        np.testing.assert_allclose(cached_logits(model, params, [seq], prefill), full, atol=1e-5)


def test_padded_rows_match_decoding_alone(model_params):
    """Prompts of different lengths in one batch: each row's logits equal its own forward."""
    model, params = model_params
    rows = [tokens(18, 1), tokens(11, 2), tokens(5, 3)]
    batched = cached_logits(model, params, rows, prefill=5)
    for i, row in enumerate(rows):
        alone = np.asarray(model.apply({"params": params}, jnp.asarray([row])))[0]
        np.testing.assert_allclose(batched[i, 18 - len(row) :], alone, atol=1e-5)


def test_greedy_equals_argmax_rollout_with_full_forwards(model_params):
    model, params = model_params
    prompts = [tokens(6, 4), tokens(3, 5)]
    got = generate_batch(model, params, prompts, 10, jax.random.key(0), temperature=0.0)
    for prompt, continuation in zip(prompts, got, strict=True):
        seq = list(prompt)
        for _ in range(10):
            logits = model.apply({"params": params}, jnp.asarray([seq]))
            seq.append(int(jnp.argmax(logits[0, -1])))
        assert continuation == seq[len(prompt) :]


def test_sampling_is_reproducible_and_filters_work(model_params):
    model, params = model_params
    prompts = [tokens(4, 6)] * 3
    a = generate_batch(model, params, prompts, 12, jax.random.key(1), temperature=1.0)
    b = generate_batch(model, params, prompts, 12, jax.random.key(1), temperature=1.0)
    assert a == b
    greedy = generate_batch(model, params, prompts, 12, jax.random.key(1), temperature=0.0)
    # top_k=1 and a tiny top_p both leave only the best token: sampling becomes greedy.
    assert generate_batch(model, params, prompts, 12, jax.random.key(2), top_k=1) == greedy
    assert generate_batch(model, params, prompts, 12, jax.random.key(3), top_p=1e-6) == greedy
    limited = generate_batch(model, params, prompts, 12, jax.random.key(4), vocab_limit=10)
    assert max(max(r) for r in limited) < 10


def test_stops_at_end_of_text(model_params):
    model, params = model_params
    prompt = [tokens(4, 7)]
    free = generate_batch(model, params, prompt, 12, jax.random.key(0), temperature=0.0)[0]
    eot = free[3]  # pretend the 4th generated token is end-of-text
    cut = generate_batch(model, params, prompt, 12, jax.random.key(0), temperature=0.0, eot_id=eot)
    assert cut[0] == free[: free.index(eot) + 1]


def test_scanned_params_decode_the_same(model_params):
    model, params = model_params
    scanned_model = GPT(dataclasses.replace(CFG, scan_layers=True))
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), params["h_0"], params["h_1"])
    scanned = {k: v for k, v in params.items() if not k.startswith("h_")} | {
        "h": {"block": stacked}
    }
    back, unrolled_model = unscan_params(scanned, scanned_model)
    assert not unrolled_model.config.scan_layers
    prompts = [tokens(5, 8)]
    args = (prompts, 8, jax.random.key(0))
    assert generate_batch(scanned_model, scanned, *args) == generate_batch(model, params, *args)
    np.testing.assert_array_equal(
        back["h_1"]["mlp"]["c_fc"]["kernel"], params["h_1"]["mlp"]["c_fc"]["kernel"]
    )


def test_prompt_too_long_is_a_clear_error(model_params):
    model, params = model_params
    with pytest.raises(ValueError, match="exceeds the model's context of 24 tokens"):
        generate_batch(model, params, [tokens(20)], 10, jax.random.key(0))


def test_a_rows_sample_does_not_depend_on_its_batch(model_params):
    """Row i draws from (rng, i) alone: adding rows (another request) leaves row 0 unchanged,
    which is what lets a server batch requests and still reproduce a seed."""
    model, params = model_params
    alone = generate_batch(model, params, [tokens(5, 1)], 10, jax.random.key(7), temperature=1.0)
    batched = generate_batch(
        model, params, [tokens(5, 1), tokens(9, 2), tokens(3, 3)], 10, jax.random.key(7)
    )
    assert batched[0] == alone[0]


def test_per_row_settings_in_one_batch():
    """Greedy, top-k 1 and sampling rows side by side: each follows its own settings."""
    from jaxgpt.sample import pick_tokens, row_keys

    logits = jnp.tile(jnp.linspace(0.0, 3.0, 50)[None], (3, 1))
    picks = [
        pick_tokens(logits, row_keys(jax.random.key(s), 3), [0.0, 5.0, 5.0], [0, 1, 0], 1.0, 40)
        for s in range(20)
    ]
    picks = np.asarray(picks)
    assert (picks[:, 0] == 39).all() and (picks[:, 1] == 39).all()  # vocab_limit 40 caps argmax
    assert len(set(picks[:, 2].tolist())) > 3 and picks[:, 2].max() < 40
