"""A training run as an ONNX model that onnxruntime runs: `--format onnx` of jaxgpt.export.

Route: jaxgpt params → the Hugging Face state dict of jaxgpt.interop.hf → `transformers`'
GPT2LMHeadModel in PyTorch → `torch.onnx.export(dynamo=True)`. The graph takes `input_ids`
(int64 [batch, seq], both dynamic, seq ≤ block_size) and returns `logits` (float32
[batch, seq, vocab]); it has no KV cache (each call is a full forward). The tokenizer files of the
Hugging Face export are written next to it, so a user needs no jaxgpt to tokenize.

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


def _logits_only(model: Any) -> Any:
    """A module whose one input is input_ids and one output the logits (no cache, no mask)."""
    import torch  # lazy: optional [onnx] extra, slow to import

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, use_cache=False).logits

    return LogitsOnly(model).eval()


def to_onnx(params: Any, cfg: GPTConfig, path: str | Path) -> Path:
    """Write params as an ONNX graph input_ids [batch, seq] → logits [batch, seq, vocab]."""
    require_onnx_packages()
    import torch  # lazy: optional [onnx] extra, slow to import

    path = Path(path)
    model = _logits_only(torch_model(params, cfg))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=cfg.block_size)
    # Example sizes above 1 on both axes: torch.export would specialize an axis traced at 1.
    example = torch.zeros((2, min(8, cfg.block_size)), dtype=torch.long)
    n_bytes = 4 * sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            path,
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}},
            opset_version=OPSET,
            dynamo=True,  # the TorchScript exporter fails on transformers 5 (aten::diff)
            external_data=n_bytes > _SINGLE_FILE_LIMIT,
            verbose=False,
        )
    return path


def onnx_logits(path: str | Path, tokens: np.ndarray) -> np.ndarray:
    """Run an exported model under onnxruntime (CPU) on int token ids [batch, seq]."""
    import onnxruntime as ort  # lazy: optional [onnx] extra, slow to import

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input_ids": np.asarray(tokens, np.int64)})[0]


def check_against_jaxgpt(path: Path, params: Any, cfg: GPTConfig, seed: int = 0) -> float:
    """Max |logit difference| between onnxruntime and jaxgpt on a random [2, block_size] batch
    (jaxgpt computing in float32, as the exported graph does)."""
    cfg = dataclasses.replace(cfg, dtype="float32", param_dtype="float32", dropout=0.0)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, cfg.block_size))
    ours = np.asarray(GPT(cfg).apply({"params": params}, jnp.asarray(tokens, jnp.int32)))
    return float(np.abs(onnx_logits(path, tokens) - ours).max())


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
        under onnxruntime on one random batch of full context length).
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
    eot = tokenizer.eot_id
    config = {**hf_config(cfg, bos_token_id=eot, eos_token_id=eot), "dtype": dtype}
    # What a runtime needs to know that the graph does not say: the longest input, the stop
    # token, and which logits are padding rows past the tokenizer (never to be sampled).
    config["jaxgpt"] = {
        "step": step,
        "onnx": {"file": MODEL_FILE, "opset": OPSET, "max_seq": cfg.block_size},
        "tokenizer_vocab_size": tokenizer.vocab_size,
    }
    write_json(out_dir / "config.json", config)
    write_hf_tokenizer(tokenizer_path, out_dir, eot, cfg.block_size)
    return path, check_against_jaxgpt(path, params, cfg)
