"""Document masking (model.doc_mask): a document's logits are the same packed between others as
alone, for GPT-2 and Llama-style models and every CPU attention path; cached decoding with
end-of-text tokens inside the prompt equals the full forward; scanned and rematerialized layers,
gradients and a sharded train step agree; the end-of-text id resolves from the tokenizer and
bad settings fail naming the key. Tiny models made in the test; nothing is downloaded."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.config import model_config, run_config
from jaxgpt.configs import base
from jaxgpt.decode.cache import KVCache, init_cache, set_lengths
from jaxgpt.decode.generate import generate_batch, unscan_params
from jaxgpt.model import GPT, GPTConfig, doc_starts
from jaxgpt.serve.decoder import Decoder
from jaxgpt.sharding import MeshConfig
from jaxgpt.state import next_token_loss
from tests.helpers import mesh_steps, tiny_config

EOT = 3
VOCAB = 64
LLAMA = {
    "model.position": "rope", "model.norm": "rmsnorm", "model.mlp": "swiglu",
    "model.bias": False, "model.n_head": 4, "model.n_kv_head": 2,
}  # fmt: skip
FAMILIES = {
    "gpt2": {},
    "llama": LLAMA,
    "llama_qknorm_untied": {**LLAMA, "model.qk_norm": True, "model.tie_embeddings": False},
}
# Three documents; an end-of-text token opens each one but the row's first.
A, B, C = [20, 21, 22, 23], [EOT, 10, 11, 12, 13, 14], [EOT, 30, 31, 32]
# The fast subset checks GPT-2 and Llama on the CPU default path; the other variants are slow.
slow = pytest.mark.slow


def config(family: str, doc_mask: bool = True, **model) -> GPTConfig:
    """The tests' tiny run config (tests/helpers.py) with a family's switches, resolved as setup
    resolves it: vocabulary and end-of-text id from the tokenizer."""
    settings = {**FAMILIES[family], "model.doc_mask": doc_mask, "model.dropout": 0.0}
    settings.update({f"model.{k}": v for k, v in model.items()})
    rc = run_config(tiny_config(Path("corpus.txt"), **settings))
    return model_config(rc.model, VOCAB, EOT)


def init(cfg: GPTConfig, scale: float = 1.0):
    """Random params; scale > 1 sharpens attention so that what it sees matters."""
    params = GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return jax.tree.map(lambda x: x * scale, nn.unbox(params))


def logits(cfg: GPTConfig, params, rows) -> np.ndarray:
    return np.asarray(_forward(GPT(cfg), params, jnp.asarray(rows, jnp.int32)))


@functools.partial(jax.jit, static_argnums=0)
def _forward(model: GPT, params, tokens_BT: jax.Array) -> jax.Array:
    return model.apply({"params": params}, tokens_BT)


def test_documents_start_at_each_end_of_text_token():
    row = jnp.asarray([[5, 6, EOT, 7, 8, 9, EOT, 4]])
    starts = doc_starts(row, EOT, jnp.arange(8)[None])
    np.testing.assert_array_equal(starts, [[0, 0, 2, 2, 2, 2, 6, 6]])
    np.testing.assert_array_equal(jnp.arange(8) - starts, [[0, 1, 0, 1, 2, 3, 0, 1]])
    # A cached row goes on in its current document until the next end-of-text token.
    pos = jnp.asarray([[10, 11, 12]])
    got = doc_starts(jnp.asarray([[7, EOT, 8]]), EOT, pos, jnp.asarray([4]))
    np.testing.assert_array_equal(got, [[4, 11, 11]])


@pytest.mark.parametrize(
    "family, attention",
    [
        ("gpt2", "einsum"),
        ("llama", "einsum"),
        pytest.param("llama_qknorm_untied", "einsum", marks=slow),
        pytest.param("gpt2", "xla", marks=slow),  # jax.nn.dot_product_attention with a mask
        pytest.param("llama", "xla", marks=slow),
    ],
)
def test_packed_document_equals_the_document_alone(family, attention):
    """Each document's logits in a packed row equal its logits alone (float32, 1e-5), in two
    rows packed differently (the mask is per batch row)."""
    cfg = config(family, attention=attention)
    params = init(cfg, scale=4.0)
    packed = np.asarray([A + B + C, C + B + [EOT, 40, 41, 42]])
    got = logits(cfg, params, packed)
    for row, offset, doc in [(0, 0, A), (0, 4, B), (0, 10, C), (1, 0, C), (1, 4, B)]:
        alone = logits(cfg, params, [doc])[0]
        np.testing.assert_allclose(got[row, offset : offset + len(doc)], alone, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_doc_mask_changes_packed_rows_only(family):
    """With no end-of-text token a row is one document: the same logits as without doc_mask.
    A packed row's loss changes: later documents no longer see earlier ones."""
    on, off = config(family), config(family, doc_mask=False)
    params = init(on, scale=4.0)
    plain = [[*A, 40, 41, 42, 43, 44, 45]]
    np.testing.assert_allclose(logits(on, params, plain), logits(off, params, plain), atol=1e-5)
    packed = jnp.asarray([A + B + C + [EOT]], jnp.int32)
    loss_on = next_token_loss(params, GPT(on), packed, None)
    loss_off = next_token_loss(params, GPT(off), packed, None)
    assert abs(float(loss_on) - float(loss_off)) > 1e-3


def cached_steps(cfg: GPTConfig, params, rows: list[list[int]], prefill: int) -> list:
    """Each row's logits at its positions: its first `prefill` tokens (shorter rows padded
    behind) in one prefill, then its next tokens one per step."""
    longest = max(map(len, rows))
    buf = np.zeros((len(rows), longest), np.int32)
    for i, r in enumerate(rows):
        buf[i, : len(r)] = r
    model = GPT(cfg)
    apply = jax.jit(lambda p, t, c: model.apply({"params": p}, t, caches=c))
    out, caches = apply(params, buf[:, :prefill], init_cache(cfg, len(rows)))
    fill = np.minimum([len(r) for r in rows], prefill)
    caches = set_lengths(caches, fill)
    got = [[np.asarray(out)[i, : fill[i]]] for i in range(len(rows))]
    for _ in range(prefill, longest):
        step = buf[np.arange(len(rows)), np.minimum(fill, longest - 1)][:, None]
        out, caches = apply(params, step, caches)
        for i in range(len(rows)):
            if fill[i] < len(rows[i]):
                got[i].append(np.asarray(out)[i])
        fill = fill + 1
    return [np.concatenate(g, axis=0) for g in got]


@pytest.mark.parametrize(
    "family",
    ["llama", pytest.param("gpt2", marks=slow), pytest.param("llama_qknorm_untied", marks=slow)],
)
def test_cached_decode_with_end_of_text_inside_equals_the_full_forward(family):
    """Rows of different lengths with end-of-text tokens in the prompt and among the tokens fed
    one at a time: every position's logits equal the full forward's."""
    cfg = config(family)
    params = init(cfg, scale=4.0)
    rows = [[*A, *B, *C, EOT, 40], [*B, 50, 51, *C]]
    for prefill in (3, 7, 12):
        got = cached_steps(cfg, params, rows, prefill)
        for i, row in enumerate(rows):
            # 1e-4: the two paths sum in different orders (as tests/test_llama.py's decode)
            np.testing.assert_allclose(got[i], logits(cfg, params, [row])[0], atol=1e-4)


@slow
def test_greedy_generation_after_a_packed_prompt_continues_the_last_document():
    """generate_batch: a prompt that packs documents decodes as the last document alone does
    (greedy), and as the full forward predicts."""
    cfg = config("llama")
    params = init(cfg, scale=4.0)
    model = GPT(cfg)
    packed, last = A + B + C, C
    draw = lambda p: generate_batch(model, params, [p], 6, jax.random.key(0), temperature=0.0)[0]
    assert draw(packed) == draw(last)
    text = packed + draw(packed)
    predicted = np.argmax(logits(cfg, params, [text[:-1]])[0, len(packed) - 1 :], axis=-1)
    assert text[len(packed) :] == predicted.tolist()


def test_cache_keeps_document_starts_only_under_doc_mask():
    on, off = config("llama"), config("llama", doc_mask=False)
    assert KVCache.empty(on, 2, 16).start_BS.shape == (2, 16)
    assert KVCache.empty(off, 2, 16).start_BS.shape == (2, 0)


@slow
def test_scanned_and_rematerialized_layers_agree_and_gradients_are_finite():
    """scan_layers + remat pass the document starts to every layer: the same loss as the
    unrolled model (its params unscanned), and finite gradients."""
    scanned = config("llama", scan_layers=True, remat="full")
    params_scanned = init(scanned, scale=4.0)
    params, unrolled = unscan_params(params_scanned, GPT(scanned))
    batch = jnp.asarray([A + B + C + [EOT], C + B + A + [EOT]], jnp.int32)
    loss_s, grads = jax.value_and_grad(next_token_loss)(params_scanned, GPT(scanned), batch, None)
    loss_u = next_token_loss(params, unrolled, batch, None)
    assert float(loss_s) == pytest.approx(float(loss_u), abs=1e-5)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


@slow
def test_sharded_train_step_equals_one_device():
    """data×fsdp×tensor = 2×2×2 with GQA heads split over tensor: the same losses and params
    as one device (float32, 1e-5)."""
    cfg = config("llama", n_embd=32, block_size=16)
    rules = run_config(base.get_config()).mesh.rules
    # 8 token ids, so that EOT is common and documents are short
    ref_hist, ref_params, _ = mesh_steps(
        cfg, MeshConfig(1, 1, 1, rules), jax.devices()[:1], token_high=8
    )
    hist, params, _ = mesh_steps(cfg, MeshConfig(2, 2, 2, rules), jax.devices(), token_high=8)
    loss, ref_loss = [h["loss"] for h in hist], [h["loss"] for h in ref_hist]
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    diffs = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), ref_params, params)
    assert max(jax.tree.leaves(diffs)) < 1e-5


def test_end_of_text_id_resolves_from_the_tokenizer_and_bad_ones_fail():
    assert config("gpt2").eot_id == EOT
    explicit = dataclasses.replace(config("gpt2"), eot_id=EOT)
    assert model_config(explicit, VOCAB, EOT) == explicit
    with pytest.raises(ValueError, match=r"model\.eot_id=5.* tokenizer's end-of-text id is 3"):
        model_config(dataclasses.replace(explicit, eot_id=5), VOCAB, EOT)
    with pytest.raises(ValueError, match=r"model\.eot_id=64 is not a token id"):
        dataclasses.replace(explicit, eot_id=VOCAB)
    with pytest.raises(ValueError, match=r"model\.eot_id=-2"):
        dataclasses.replace(explicit, eot_id=-2)
    # No tokenizer to resolve it from: the model refuses to guess where documents end.
    unresolved = dataclasses.replace(explicit, eot_id=-1)
    assert model_config(unresolved, VOCAB) == unresolved
    with pytest.raises(ValueError, match=r"model\.doc_mask=True .* model\.eot_id is -1"):
        init(unresolved)
    # Without doc_mask the id is never read.
    init(dataclasses.replace(unresolved, doc_mask=False))


@slow
def test_a_server_slot_decodes_a_packed_prompt_as_generate_does():
    """The server's slots: a row that reuses a slot starts from its own documents, not the
    previous occupant's, and decodes greedily as generate_batch does."""
    cfg = config("llama")
    params = init(cfg, scale=4.0)
    model = GPT(cfg)
    prompt = [*A, *B, *C]
    want = generate_batch(model, params, [prompt], 6, jax.random.key(0), temperature=0.0)[0]
    decoder = Decoder(model, params, vocab_limit=cfg.vocab_size, max_batch=2)
    key, greedy = np.zeros((1, 2), np.uint32), ([0], [0.0], [0], [1.0])
    decoder.prefill([[EOT, 5, 6, 7, 8, 9, 10, 11, 12]], [0], key, *greedy)
    for _ in range(10):  # the first row's one long document fills slot 0
        decoder.step(1)
    got = [int(decoder.prefill([prompt], [0], key, *greedy)[0][0])]
    got += [int(decoder.step(1)[0][0]) for _ in range(5)]
    assert got == want
