"""A training run as an ONNX model that onnxruntime runs: `--format onnx` of jaxgpt.export.

Route: jaxgpt params → the Hugging Face state dict of jaxgpt.interop.hf → `transformers`'
GPT2LMHeadModel, LlamaForCausalLM or Qwen3ForCausalLM in PyTorch →
`torch.onnx.export(dynamo=True)`. The graph has a KV cache, with the names and layout that
onnxruntime users and Optimum expect:

    input_ids        int64   [batch, seq]
    attention_mask   int64   [batch, total]          total = past + seq; 0 marks left padding
    position_ids     int64   [batch, seq]
    past_key_values.{i}.key / .value   float32 [batch, kv_heads, past, head_dim]   (i < layers)
  → logits           float32 [batch, seq, vocab]
    present.{i}.key / .value           float32 [batch, kv_heads, past + seq, head_dim]

Every axis but kv_heads, head_dim and vocab is dynamic; past may be 0, so a full forward (and
a prefill) feeds empty past tensors. The tokenizer files of the Hugging Face export are written
next to it, so a user needs no jaxgpt to tokenize.

torch, transformers, onnx and onnxruntime are imported only inside the functions below, only
when they run: they are optional (the [onnx] extra) and slow to import.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.interop.hf import hf_config, transformers_model
from jaxgpt.interop.hf_export import open_for_export, write_json
from jaxgpt.interop.hf_tokenizer import write_hf_tokenizer
from jaxgpt.model import GPT, GPTConfig

MODEL_FILE = "model.onnx"
# A protobuf file holds at most 2 GiB: larger models keep their weights in model.onnx.data.
_SINGLE_FILE_LIMIT = 1 << 30
# The opset the exporter's translation table targets (torch ≥ 2.5); onnxruntime ≥ 1.18 runs it.
OPSET = 18
# The [onnx] extra: each module's pip package has the same name.
_NEEDS = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")
# The graph's inputs before the past tensors (past_names).
INPUTS = ("input_ids", "attention_mask", "position_ids")


def require_onnx_packages() -> None:
    """Fail early, naming the install command, when a package of the [onnx] extra is missing."""
    missing = [name for name in _NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(
            f'ONNX export needs {", ".join(missing)}: run `pip install -e ".[onnx]"` in the '
            "jaxgpt checkout"
        )


def torch_model(params: Any, cfg: GPTConfig) -> Any:
    """The transformers model (float32, eval mode: GPT-2, Llama or Qwen3, by the config) that
    computes what jaxgpt's params do."""
    return transformers_model(params, cfg)


def past_names(n_layer: int) -> list[str]:
    """The graph's past inputs in order (layer 0 key, layer 0 value, ...): Optimum finds its
    cache inputs by these names and feeds them in this order."""
    return [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    return [name.replace("past_key_values", "present") for name in past_names(n_layer)]


def _with_cache(model: Any, n_layer: int) -> Any:
    """A module (input_ids, attention_mask, position_ids, *past) → (logits, *present): the
    transformers model fed a DynamicCache built from the flat past tensors."""
    import torch  # lazy: optional [onnx] extra, slow to import
    from transformers.cache_utils import DynamicCache  # lazy: as torch

    class WithCache(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=self.inner.config)
            for i in range(n_layer):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            layers = out.past_key_values.layers
            return (out.logits, *[t for layer in layers for t in (layer.keys, layer.values)])

    return WithCache(model).eval()


def _example(cfg: GPTConfig) -> tuple[Any, ...]:
    """Traced inputs: every dynamic axis above 1 (torch.export would specialize an axis traced
    at 1), past + seq within the context."""
    import torch  # lazy: optional [onnx] extra, slow to import

    batch, seq = 2, max(2, min(5, cfg.block_size // 2))
    past = max(2, min(3, cfg.block_size - seq))
    ids = torch.zeros((batch, seq), dtype=torch.long)
    mask = torch.ones((batch, past + seq), dtype=torch.long)
    positions = torch.arange(past, past + seq).repeat(batch, 1)
    kv = torch.zeros((batch, cfg.kv_heads, past, cfg.head_dim))
    return (ids, mask, positions, *[kv.clone() for _ in range(2 * cfg.n_layer)])


def to_onnx(params: Any, cfg: GPTConfig, path: str | Path) -> Path:
    """Write params as an ONNX graph with a KV cache (I/O in the module docstring)."""
    require_onnx_packages()
    import torch  # lazy: optional [onnx] extra, slow to import

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _with_cache(torch_model(params, cfg), cfg.n_layer)
    Dim = torch.export.Dim
    batch, seq = Dim("batch"), Dim("seq", max=cfg.block_size)
    # torch.export refuses `seq + past` as an input's size: the mask's length is its own Dim.
    past = Dim("past", min=0)
    dynamic = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: Dim("total")},
        "position_ids": {0: batch, 1: seq},
        "past": tuple({0: batch, 2: past} for _ in range(2 * cfg.n_layer)),  # a list is refused
    }
    n_bytes = 4 * sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.onnx.export(
            model,
            _example(cfg),
            path,
            input_names=[*INPUTS, *past_names(cfg.n_layer)],
            output_names=["logits", *present_names(cfg.n_layer)],
            dynamic_shapes=dynamic,
            opset_version=OPSET,
            dynamo=True,  # the TorchScript exporter fails on transformers 5 (aten::diff)
            # The dynamo exporter writes external data by default; one file while it fits.
            external_data=n_bytes > _SINGLE_FILE_LIMIT,
            verbose=False,
        )
    return path


def session(path: str | Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session for an exported graph (threads 0 = onnxruntime's default)."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise ModuleNotFoundError(
            "running an ONNX export needs onnxruntime: run `pip install onnxruntime` (or `pip "
            'install -e ".[onnx]"` in the jaxgpt checkout)'
        )
    import onnxruntime as ort  # lazy: optional [onnx] extra, slow to import

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cache_shape(sess: Any) -> tuple[list[str], int, int]:
    """(past input names, kv_heads, head_dim) of a session's graph; no names for a graph
    exported without a cache (jaxgpt before the cache: input_ids → logits)."""
    past = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    if not past:
        return [], 0, 0
    return [i.name for i in past], int(past[0].shape[1]), int(past[0].shape[3])


def full_forward_feed(sess: Any, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The inputs of one full forward over tokens [batch, seq]: no padding, empty past (what
    Optimum feeds at step 0). A graph without a cache gets input_ids alone."""
    tokens = np.asarray(tokens, np.int64)
    names, heads, head_dim = cache_shape(sess)
    if not names:
        return {"input_ids": tokens}
    batch, seq = tokens.shape
    empty = np.zeros((batch, heads, 0, head_dim), np.float32)
    return {
        "input_ids": tokens,
        "attention_mask": np.ones((batch, seq), np.int64),
        "position_ids": np.tile(np.arange(seq, dtype=np.int64), (batch, 1)),
        **{name: empty for name in names},
    }


def onnx_logits(path: str | Path, tokens: np.ndarray) -> np.ndarray:
    """Run an exported model under onnxruntime (CPU) on int token ids [batch, seq]: one full
    forward (empty past)."""
    sess = session(path)
    return sess.run(["logits"], full_forward_feed(sess, tokens))[0]


def cached_logits(path: str | Path, tokens: np.ndarray, prefill: int) -> np.ndarray:
    """Logits [batch, seq, vocab] computed as a generation loop does: prefill the first
    `prefill` tokens with an empty past, then feed the rest one token at a time with the
    present tensors of the step before as past."""
    sess = session(path)
    tokens = np.asarray(tokens, np.int64)
    names, _, _ = cache_shape(sess)
    if not names:
        raise ValueError(f"{path} has no past_key_values inputs: export it again for a KV cache")
    outputs = ["logits", *[n.replace("past_key_values", "present") for n in names]]
    logits, *present = sess.run(outputs, full_forward_feed(sess, tokens[:, :prefill]))
    pieces = [logits]
    for t in range(prefill, tokens.shape[1]):
        feed = {
            "input_ids": tokens[:, t : t + 1],
            "attention_mask": np.ones((tokens.shape[0], t + 1), np.int64),
            "position_ids": np.full((tokens.shape[0], 1), t, np.int64),
            **dict(zip(names, present, strict=True)),
        }
        logits, *present = sess.run(outputs, feed)
        pieces.append(logits)
    return np.concatenate(pieces, axis=1)


def check_against_jaxgpt(path: Path, params: Any, cfg: GPTConfig, seed: int = 0) -> float:
    """Max |logit difference| between onnxruntime and jaxgpt's full forward on a random
    [2, block_size] batch, computed both as one full forward and as a prefill of up to 8 tokens
    (empty past) then up to 4 one-token cached steps (jaxgpt computing in float32, as the
    exported graph does)."""
    cfg = dataclasses.replace(cfg, dtype="float32", param_dtype="float32", dropout=0.0)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, cfg.block_size))
    # No end-of-text inside: the graph has no document masking (model.doc_mask), so it gives
    # jaxgpt's logits on text of one document. (getattr: configs from before doc_mask lack it.)
    eot = getattr(cfg, "eot_id", -1)
    tokens = np.where(tokens == eot, (eot + 1) % cfg.vocab_size, tokens)
    ours = np.asarray(GPT(cfg).apply({"params": params}, jnp.asarray(tokens, jnp.int32)))
    worst = float(np.abs(onnx_logits(path, tokens) - ours).max())
    prefill = max(1, min(8, cfg.block_size - 4))
    n = min(prefill + 4, cfg.block_size)
    cached = cached_logits(path, tokens[:, :n], prefill)
    return max(worst, float(np.abs(cached - ours[:, :n]).max()))


def onnx_config(
    cfg: GPTConfig, eot_id: int, tokenizer_vocab_size: int, step: int, dtype: str = "float32"
) -> dict[str, Any]:
    """config.json of an ONNX folder: the Hugging Face export's (both rope keys for Llama and
    Qwen3: runtimes read one or the other), so Optimum and AutoTokenizer read it, plus what a
    runtime needs that the graph does not say: the longest input, the cache's shape, and which
    logits are padding rows past the tokenizer (never to be sampled)."""
    config = {**hf_config(cfg, bos_token_id=eot_id, eos_token_id=eot_id), "dtype": dtype}
    config["jaxgpt"] = {
        "step": step,
        "onnx": {
            "file": MODEL_FILE,
            "opset": OPSET,
            "max_seq": cfg.block_size,
            "kv_cache": True,
            "layers": cfg.n_layer,
            "kv_heads": cfg.kv_heads,
            "head_dim": cfg.head_dim,
        },
        "tokenizer_vocab_size": tokenizer_vocab_size,
    }
    return config


def export_onnx(
    workdir: str | Path, out_dir: str | Path, dtype: str = "float32", step: int | None = None
) -> tuple[Path, float]:
    """Write a run's checkpoint as out_dir/model.onnx plus tokenizer and config files.

    Args:
        workdir: a jaxgpt run directory (checkpoints/, config.json, tokenizer).
        out_dir: the folder to write (created; files in it are replaced).
        dtype: "float32" only: onnxruntime's CPU kernels have no bfloat16 matmuls.
        step: the checkpoint step; None = the best params if kept, else the latest.

    Returns:
        The model file's path and the max |logit difference| against jaxgpt (a self-check
        under onnxruntime on one random batch of full context length, as one forward and as
        a prefill followed by cached one-token steps).
    """
    if dtype != "float32":
        raise ValueError(
            f"ONNX export is float32 only (got {dtype!r}): onnxruntime's CPU kernels lack "
            "bfloat16; drop --dtype, or export --format hf for bfloat16 weights"
        )
    require_onnx_packages()
    cfg, tokenizer_path, tokenizer, params, step = open_for_export(workdir, out_dir, step)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = to_onnx(params, cfg, out_dir / MODEL_FILE)
    config = onnx_config(cfg, tokenizer.eot_id, tokenizer.vocab_size, step, dtype)
    write_json(out_dir / "config.json", config)
    write_hf_tokenizer(tokenizer_path, out_dir, tokenizer.eot_id, cfg.block_size)
    return path, check_against_jaxgpt(path, params, cfg)
