"""KV-cache decoding equals full forward passes; batching, greedy, sampling, scanned layers,
generation past the context through a sliding window."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.decode.cache import init_cache, set_lengths
from jaxgpt.decode.generate import generate_batch, unscan_params
from jaxgpt.decode.window import window_size
from jaxgpt.model import GPT, GPTConfig

CFG = GPTConfig(vocab_size=61, block_size=24, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture(scope="module")
def model_params():
    model = GPT(CFG)
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 24), jnp.int32))["params"])
    return model, params


def tokens(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, n).tolist()


def cached_logits(model, params, rows: list[list[int]], prefill: int) -> list[np.ndarray]:
    """Each row's logits at each of its positions: prefill the rows' first `prefill` tokens
    (shorter rows padded behind), set each row's length, then feed each row its own next token,
    one per step (a finished row is fed a filler its logits are not kept for)."""
    longest = max(map(len, rows))
    buf = np.zeros((len(rows), longest), np.int32)
    for i, r in enumerate(rows):
        buf[i, : len(r)] = r
    apply = jax.jit(lambda p, t, c: model.apply({"params": p}, t, caches=c))
    logits, caches = apply(params, buf[:, :prefill], init_cache(model.config, len(rows)))
    fill = np.minimum([len(r) for r in rows], prefill)
    caches = set_lengths(caches, fill)
    out = [[np.asarray(logits)[i, : fill[i]]] for i in range(len(rows))]
    for _ in range(prefill, longest):
        step = buf[np.arange(len(rows)), np.minimum(fill, longest - 1)][:, None]
        logits, caches = apply(params, step, caches)
        for i in range(len(rows)):
            if fill[i] < len(rows[i]):
                out[i].append(np.asarray(logits)[i])
        fill = fill + 1
    return [np.concatenate(o, axis=0) for o in out]


def test_cached_logits_equal_full_forward_at_every_position(model_params):
    model, params = model_params
    seq = tokens(20)
    full = np.asarray(model.apply({"params": params}, jnp.asarray([seq])))
    for prefill in (1, 7):
        (got,) = cached_logits(model, params, [seq], prefill)
        np.testing.assert_allclose(got, full[0], atol=1e-5)


@pytest.mark.slow
def test_padded_rows_match_decoding_alone(model_params):
    """Prompts of different lengths in one batch: each row's logits equal its own forward,
    also when shorter rows are padded in the prefill (their stale tails are never read)."""
    model, params = model_params
    rows = [tokens(18, 1), tokens(11, 2), tokens(5, 3)]
    for prefill in (5, 14):
        batched = cached_logits(model, params, rows, prefill)
        for i, row in enumerate(rows):
            alone = np.asarray(model.apply({"params": params}, jnp.asarray([row])))[0]
            np.testing.assert_allclose(batched[i], alone, atol=1e-5)


def test_chunks_written_at_each_rows_own_length_match_full_forward(model_params):
    """After a prefill, rows of different lengths take 3 tokens at once each at its own place
    (the per-row write of more than one token)."""
    model, params = model_params
    rows = [tokens(12, 4), tokens(9, 5)]
    apply = jax.jit(lambda p, t, c: model.apply({"params": p}, t, caches=c))
    buf = np.zeros((2, 9), np.int32)
    buf[0], buf[1] = rows[0][:9], rows[1][:9]
    _, caches = apply(params, buf, init_cache(model.config, 2))
    caches = set_lengths(caches, [9, 6])
    chunk = np.array([rows[0][9:12], rows[1][6:9]], np.int32)
    logits, caches = apply(params, chunk, caches)
    np.testing.assert_array_equal(caches[0].length_B, [12, 9])
    for i, (row, start) in enumerate(zip(rows, (9, 6), strict=True)):
        alone = np.asarray(model.apply({"params": params}, jnp.asarray([row])))[0]
        np.testing.assert_allclose(np.asarray(logits)[i], alone[start : start + 3], atol=1e-5)


def test_greedy_equals_argmax_rollout_with_full_forwards(model_params):
    model, params = model_params
    prompts = [tokens(6, 4), tokens(3, 5)]
    got = generate_batch(model, params, prompts, 10, jax.random.key(0), temperature=0.0)
    assert got == windowed_greedy(model, params, prompts, 10)  # within the context: no slide


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
    with pytest.raises(ValueError, match="exceeds the model's context of 24 tokens: a prompt may "
                       "be at most 24 tokens"):  # fmt: skip
        generate_batch(model, params, [tokens(5), tokens(25)], 10, jax.random.key(0))
    with pytest.raises(ValueError, match="at least one token"):
        generate_batch(model, params, [tokens(5), []], 10, jax.random.key(0))


def windowed_greedy(model, params, prompts: list[list[int]], n_new: int) -> list[list[int]]:
    """Greedy roll-out with one full forward per token and no cache, under the window rule:
    rows share a fill count (the longest row's length); when it is the context and a token is
    to be fed, every row keeps its last W - 1 tokens plus that token."""
    T, W = CFG.block_size, window_size(CFG.block_size)
    # One compiled shape: causal attention ignores the buffer's tail.
    forward = jax.jit(lambda buf: model.apply({"params": params}, buf))
    ctxs, outs = [list(p) for p in prompts], [[] for _ in prompts]
    filled = max(map(len, prompts))
    for k in range(n_new):
        if k:
            slide = filled == T
            filled = W if slide else filled + 1
            kept = [c[max(len(c) - (W - 1), 0) :] if slide else c for c in ctxs]
            ctxs = [[*c, o[-1]] for c, o in zip(kept, outs, strict=True)]
        for ctx, out in zip(ctxs, outs, strict=True):
            buf = np.zeros((1, T), np.int32)
            buf[0, : len(ctx)] = ctx
            out.append(int(np.argmax(np.asarray(forward(buf))[0, len(ctx) - 1])))
    return outs


def test_greedy_past_the_context_equals_windowed_full_forwards(model_params):
    """50 new tokens after 10 (context 24, window 12): four slides, each checked token by token
    against forwards over the window; a prompt of the whole context slides at once."""
    model, params = model_params
    for prompt in (tokens(10, 9), tokens(24, 10)):
        got = generate_batch(model, params, [prompt], 50, jax.random.key(0), temperature=0.0)
        assert got == windowed_greedy(model, params, [prompt], 50)


def test_batched_rows_of_different_lengths_slide_together(model_params):
    model, params = model_params
    prompts = [tokens(20, 11), tokens(7, 12), tokens(1, 13)]
    got = generate_batch(model, params, prompts, 40, jax.random.key(0), temperature=0.0)
    assert got == windowed_greedy(model, params, prompts, 40)
    # The longest row sets the slides, so it decodes as it does alone.
    alone = generate_batch(model, params, prompts[:1], 40, jax.random.key(0), temperature=0.0)
    assert got[0] == alone[0]


def test_sampling_past_the_context_is_reproducible_and_stops_at_eot(model_params):
    model, params = model_params
    prompts = [tokens(6, 14)] * 2
    kw = {"temperature": 1.0, "top_k": 20, "top_p": 0.9}
    a = generate_batch(model, params, prompts, 60, jax.random.key(5), **kw)
    assert a == generate_batch(model, params, prompts, 60, jax.random.key(5), **kw)
    assert len(a[0]) == 60 and a[0] != a[1]  # rows draw with their own keys
    eot = a[0][45]  # a token drawn after two slides
    cut = generate_batch(model, params, prompts[:1], 60, jax.random.key(5), eot_id=eot, **kw)
    assert cut[0] == a[0][: a[0].index(eot) + 1]


def test_filters_switched_off_and_filters_that_keep_everything_agree():
    """With no row filtering, pick_tokens skips the sort; keeping all V tokens through the
    filters must give the same greedy and sampled tokens."""
    from jaxgpt.decode.sampling import pick_tokens, row_keys, step_keys

    logits = jax.random.normal(jax.random.key(0), (6, 50)) * 3
    temperature = jnp.array([0.0, 0.5, 1.0, 1.0, 2.0, 0.0])
    for t in range(5):
        keys = step_keys(row_keys(jax.random.key(1), 6), t)
        off = pick_tokens(logits, keys, temperature, 0, 1.0, 45)
        np.testing.assert_array_equal(off, pick_tokens(logits, keys, temperature, 50, 1.0, 45))
        assert int(off.max()) < 45


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
    from jaxgpt.decode.sampling import pick_tokens, row_keys

    logits = jnp.tile(jnp.linspace(0.0, 3.0, 50)[None], (3, 1))
    picks = [
        pick_tokens(logits, row_keys(jax.random.key(s), 3), [0.0, 5.0, 5.0], [0, 1, 0], 1.0, 40)
        for s in range(20)
    ]
    picks = np.asarray(picks)
    assert (picks[:, 0] == 39).all() and (picks[:, 1] == 39).all()  # vocab_limit 40 caps argmax
    assert len(set(picks[:, 2].tolist())) > 3 and picks[:, 2].max() < 40
