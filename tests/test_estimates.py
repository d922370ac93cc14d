"""Memory estimates from shapes alone, against hand computations for one tiny model.

The model: V=64, T=16, L=2, H=2, D=32 (Q=16, F=128), biases on, float32. Its parameters:
    wte V·D = 2048, wpe T·D = 512, ln_f 2D = 64, and per layer 12D² + 13D = 12,704:
    c_attn 3D² + 3D, attn c_proj D² + D, c_fc 4D² + 4D, mlp c_proj 4D² + D, two LayerNorms 4D.
    N = 2048 + 512 + 64 + 2·12,704 = 28,032 parameters, 112,128 bytes.
With the default rules, "embed" goes over fsdp and vocab/heads/mlp over tensor; the dimensions
each mesh leaves whole are worked out next to each test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxgpt.config import load_config_file
from jaxgpt.config.model import REMAT_POLICIES, GPTConfig
from jaxgpt.config.run import DEFAULT_RULES
from jaxgpt.estimates import (
    abstract_mesh,
    abstract_state,
    activation_bytes,
    logical_split,
    shard_bytes,
    state_memory,
)
from jaxgpt.model import count_params, flops_per_token
from jaxgpt.optimizer import OptConfig

TINY = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
OPT = OptConfig()
N = 28_032
LAYER = 12_704
RULES = DEFAULT_RULES
ONE = {"data": 1, "fsdp": 1, "tensor": 1}
TP2 = {"data": 1, "fsdp": 1, "tensor": 2}


def test_rules_here_are_the_default_rules():
    """The hand computations below assume configs/base.py's rules (the default ones)."""
    base = load_config_file(Path(__file__).resolve().parent.parent / "configs" / "base.py")
    assert tuple(tuple(r) for r in base.mesh.rules) == RULES
    split = dict(RULES)
    assert split["batch"] == ("data", "fsdp") and split["embed"] == "fsdp"
    assert split["vocab"] == split["heads"] == split["mlp"] == "tensor"
    assert split["kv"] is split["pos"] is split["norm"] is None


def test_abstract_state_shapes_and_flops():
    params, logical, opt = abstract_state(TINY, OPT)
    assert count_params(params) == N
    assert logical["wte"]["embedding"] == PartitionSpec("vocab", "embed")
    assert logical["h_0"]["mlp"]["c_fc"]["kernel"] == PartitionSpec("embed", "mlp")
    # Adam keeps two moments of every parameter (plus int32 step counts).
    moments = [x for x in jax.tree.leaves(opt) if x.shape != ()]
    assert sum(x.size for x in moments) == 2 * N
    # 6N + 12·L·H·Q·T with N without positions: 6·27,520 + 12·2·2·16·16
    assert flops_per_token(TINY, N - 512) == 165_120 + 12_288
    # The remat policy and attention kernel change no shape (a cuDNN config plans on a CPU).
    other = dataclasses.replace(TINY, remat="full", attention="cudnn", loss_chunk=4)
    assert jax.tree.map(lambda x: x.shape, abstract_state(other, OPT)[0]) == jax.tree.map(
        lambda x: x.shape, params
    )


def test_state_on_one_device_is_every_byte():
    s = state_memory(TINY, OPT, (1, 1, 1), RULES)
    assert s.params == 4 * N
    assert s.opt == 2 * 4 * N + 2 * 4  # two float32 moments, two int32 counts
    assert s.gathered == 0
    # Data parallelism replicates the state: the same bytes on each device.
    assert state_memory(TINY, OPT, (4, 1, 1), RULES) == s


def test_fsdp_splits_what_has_an_embed_dimension():
    """fsdp=2: every weight with an embed axis is halved; norms, c_attn and c_fc biases
    (per layer 3D + 4D + 4D = 352, plus ln_f 64: 768 parameters) stay whole."""
    s = state_memory(TINY, OPT, (1, 2, 1), RULES)
    assert s.params == 4 * ((N - 768) // 2 + 768)  # 57,600
    assert s.opt == 2 * s.params + 8
    # Unrolled layers: every gathered weight stays live through the step, plus one layer's
    # unreduced gradients.
    assert s.gathered == 4 * (N + LAYER)
    # Scanned: one layer's weights and gradients at a time, plus the tied embedding.
    scanned = state_memory(dataclasses.replace(TINY, scan_layers=True), OPT, (1, 2, 1), RULES)
    assert scanned.params == s.params
    assert scanned.gathered == 4 * (2 * LAYER + 64 * 32)


def test_tensor_splits_vocab_heads_and_mlp():
    """tensor=2 halves wte, c_attn (kernel and bias), attn c_proj kernel, c_fc (kernel and bias)
    and mlp c_proj kernel: 1024 + 2·6256 parameters saved of 28,032."""
    s = state_memory(TINY, OPT, (1, 1, 2), RULES)
    assert s.params == 4 * (N - 1024 - 2 * 6256)  # 57,984
    assert s.gathered == 0  # no fsdp axis: nothing to gather


def test_fsdp_and_tensor_together():
    """fsdp=4 × tensor=2: per layer 1792 parameters per device (c_attn bias 48, kernel 384, attn
    c_proj 128 + 8, norms 128, c_fc 512 + 64, mlp c_proj 512 + 8), wte 2048/8, wpe 512/4, ln_f."""
    s = state_memory(TINY, OPT, (1, 4, 2), RULES)
    assert s.params == 4 * (2 * 1792 + 256 + 128 + 64)  # 16,128
    # Gathered over fsdp, still split over tensor: the tensor=2 state plus one such layer.
    assert s.gathered == 4 * (N - 1024 - 2 * 6256) + 4 * (LAYER - 6256)
    assert s.params < state_memory(TINY, OPT, (1, 2, 1), RULES).params


def test_a_dimension_the_mesh_does_not_divide_stays_whole():
    """fsdp=3 divides no embed dimension (D=32): like the trainer, nothing is split."""
    s = state_memory(TINY, OPT, (1, 3, 1), RULES)
    assert s.params == 4 * N and s.opt == 8 * N + 8


def test_shard_bytes_even_and_padded():
    mesh = abstract_mesh((1, 2, 2))
    even = NamedSharding(mesh, PartitionSpec("fsdp", "tensor"))
    assert shard_bytes((8, 32), "float32", even) == 4 * 16 * 4
    assert shard_bytes((8, 32), "bfloat16", even) == 4 * 16 * 2
    odd = NamedSharding(abstract_mesh((1, 3, 1)), PartitionSpec(None, "fsdp"))
    assert shard_bytes((10, 32), "float32", odd) == 10 * 11 * 4  # 32/3 padded up to 11
    both = NamedSharding(mesh, PartitionSpec(("fsdp", "tensor")))
    assert shard_bytes((10, 3), "float32", both) == 3 * 3 * 4  # 10 over 4 ways: 3 rows each


def test_logical_split():
    shape = {"data": 2, "fsdp": 4, "tensor": 8}
    assert logical_split(shape, RULES, "batch") == 8  # data × fsdp
    assert logical_split(shape, RULES, "act_vocab") == 8
    assert logical_split(shape, RULES, "act_seq") == 1  # mapped to None
    assert logical_split(shape, RULES, "no_such_name") == 1


# One microbatch of 2 sequences: b·T·D = 1024, b·T·F = 4096, P = b·H·T² = 1024, a = 4 bytes.
BTD, BTF, P, A = 1024, 4096, 1024, 4
UNROLLED = BTD * A * 4 + BTD * A * 4 + 2 * BTF * A + P * 4  # 69,632
LOGITS = 2 * 16 * 64 * 8  # float32 logits and their gradient
OTHER = 2 * BTD * A  # embedding and ln_f outputs


def acts(mesh=None, **changes):
    return activation_bytes(dataclasses.replace(TINY, **changes), 2, mesh or ONE, RULES)


def test_activations_without_remat_by_hand():
    a = acts()
    assert (a.saved_per_layer, a.layer_working, a.logits, a.other) == (
        UNROLLED,
        UNROLLED,
        LOGITS,
        OTHER,
    )
    assert a.total == 2 * UNROLLED + UNROLLED + LOGITS + OTHER == 233_472


def test_activations_split_over_tensor():
    """Heads, MLP and vocab activations halve with tensor=2; the residual stream does not."""
    a = acts(TP2)
    assert a.saved_per_layer == BTD * A * 4 + BTD * A * 2 + BTF * A + P * 2  # 43,008
    assert a.logits == LOGITS // 2 and a.other == OTHER


@pytest.mark.parametrize(
    ("changes", "saved"),
    [
        ({"remat": "full"}, BTD * A),  # the block input only
        ({"remat": "dots"}, BTD * A * 6 + BTF * A),  # block input + weight-matmul outputs
        ({"remat": "names"}, BTD * A + 3 * BTD * A + BTD * A),  # default names: qkv, attn_out
        ({"remat": "names", "remat_names": ("mlp_fc", "mlp_proj")}, BTD * A + BTF * A + BTD * A),
        # scanned, no remat: b·T·D·(3a+24) + 4·b·T·D·a + 6·b·T·F·a + P·(9+a)
        ({"scan_layers": True}, BTD * 36 + 4 * BTD * A + 6 * BTF * A + P * 13),
        ({"dropout": 0.1}, UNROLLED + 3 * BTD),  # three boolean masks
        ({"attention": "cudnn"}, UNROLLED - P * 4 + 2 * 2 * 16 * 4),  # log-sum-exp, no P
    ],
)
def test_activations_per_policy(changes, saved):
    a = acts(**changes)
    assert a.saved_per_layer == saved
    if "dropout" not in changes and "attention" not in changes:
        assert a.layer_working == UNROLLED  # the layer being differentiated, unrolled


def test_bfloat16_activations_keep_float32_softmax_and_logits():
    """a = 2: softmax output in float32 plus its bfloat16 cast; logits in float32 with their
    gradient plus the bfloat16 copy."""
    a = acts(dtype="bfloat16")
    assert a.saved_per_layer == BTD * 2 * 8 + 2 * BTF * 2 + P * (4 + 2)  # 38,912
    assert a.logits == 2 * 16 * 64 * (8 + 2) and a.other == 2 * BTD * 2


def test_loss_chunk_bounds_the_logits():
    assert acts(loss_chunk=4).logits == LOGITS // 4
    assert acts(loss_chunk=100).logits == LOGITS  # a chunk past the context is the context


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("remat", REMAT_POLICIES)
def test_activations_grow_with_batch_and_sequence(remat, scan):
    cfg = dataclasses.replace(TINY, remat=remat, scan_layers=scan)
    by_seqs = [activation_bytes(cfg, b, TP2, RULES) for b in (1, 2, 4)]
    assert by_seqs[0].total < by_seqs[1].total < by_seqs[2].total
    # Linear in the batch: twice the sequences, twice every kind of activation.
    assert dataclasses.astuple(by_seqs[2])[:4] == tuple(
        2 * x for x in dataclasses.astuple(by_seqs[1])[:4]
    )
    by_len = [
        activation_bytes(dataclasses.replace(cfg, block_size=t), 2, TP2, RULES).total
        for t in (16, 32, 64)
    ]
    assert by_len[0] < by_len[1] < by_len[2]
    # Attention probabilities grow as T², so without flash attention more than linearly.
    assert by_len[2] > 4 * by_len[0]


def test_gathered_bytes_keep_an_undivided_vocab_whole():
    """wte [V, D] with tensor=2: V=64 splits over tensor (32 rows a device), V=65 cannot and the
    trainer keeps it whole (fit_to_shapes), so its FSDP-gathered copy holds all 65 rows."""

    def gathered(vocab: int) -> int:
        model = GPTConfig(vocab_size=vocab, block_size=16, n_layer=2, n_head=2, n_embd=32)
        return state_memory(model, OptConfig(), (1, 2, 2), RULES).gathered

    assert gathered(65) - gathered(64) == (65 - 32) * 32 * 4
