"""A training run as a Hugging Face folder that `transformers` loads offline: GPT-2, Llama or
Qwen3, whichever architecture computes what the model's switches do (interop.hf.hf_family).

`export_hf(workdir, out)` writes config.json, model.safetensors, generation_config.json,
tokenizer.json and tokenizer_config.json; `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load them. `open_for_export` is the workdir side that every
export format (this one and jaxgpt.interop.onnx) starts from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxgpt import storage
from jaxgpt.config import AnyPath, absolute, location
from jaxgpt.data.tokenizer import load_tokenizer
from jaxgpt.interop.hf import hf_config, params_to_hf
from jaxgpt.interop.hf_tokenizer import write_hf_tokenizer
from jaxgpt.model import DTYPES, GPTConfig
from jaxgpt.workdir import restore_params, workdir_config


def _workdir_tokenizer(workdir: AnyPath, run: dict[str, Any]) -> tuple[Path, Any]:
    for name in ("tokenizer.model", "tokenizer.json"):
        if (workdir / name).is_file():
            eot_token = run.get("data", {}).get("tokenizer", {}).get("eot_token", "")
            local = storage.local_file(workdir / name, "tokenizers")  # export copies it by name
            return local, load_tokenizer(local, eot_token)
    raise FileNotFoundError(f"{workdir} has no tokenizer.model or tokenizer.json")


def open_for_export(
    workdir: str | AnyPath, out_dir: str | Path, step: int | None
) -> tuple[GPTConfig, Path, Any, dict[str, Any], int]:
    """What every export writes from: (GPTConfig, tokenizer path, tokenizer, params, step)."""
    workdir = location(workdir, "--workdir")
    if str(absolute(location(out_dir, "--out"))) == str(absolute(workdir)):
        raise ValueError("--out must not be the workdir: its config.json would be overwritten")
    cfg, run = workdir_config(workdir)
    tokenizer_path, tokenizer = _workdir_tokenizer(workdir, run)
    params, step = restore_params(workdir, step)
    return cfg, tokenizer_path, tokenizer, params, step


def export_hf(
    workdir: str | Path, out_dir: str | Path, dtype: str = "float32", step: int | None = None
) -> Path:
    """Write a training run's checkpoint as a Hugging Face folder (GPT2LMHeadModel,
    LlamaForCausalLM or Qwen3ForCausalLM, by the model's switches).

    Args:
        workdir: a jaxgpt run directory (checkpoints/, config.json, tokenizer).
        out_dir: the folder to write (created; files in it are replaced).
        dtype: "float32" or "bfloat16" weights.
        step: the checkpoint step; None = the best params if kept, else the latest.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    from safetensors.numpy import save_file  # lazy: it comes with the optional transformers

    cfg, tokenizer_path, tokenizer, params, step = open_for_export(workdir, out_dir, step)
    out_dir = Path(out_dir)
    # The restored tree is checked against cfg here: a config.json from another run fails.
    tensors = params_to_hf(params, cfg)
    np_dtype = np.dtype(DTYPES[dtype])
    tensors = {k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in tensors.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    eot = tokenizer.eot_id
    # Documents in our token streams start after an EOT, so EOT also serves as bos.
    config = {**hf_config(cfg, bos_token_id=eot, eos_token_id=eot), "dtype": dtype}
    config["jaxgpt"] = {"step": step}  # which checkpoint this is
    write_json(out_dir / "config.json", config)
    generation = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}
    if tokenizer.vocab_size < cfg.vocab_size:
        # Rows past the tokenizer only pad the table; jaxgpt's sampler never picks them either.
        generation["suppress_tokens"] = list(range(tokenizer.vocab_size, cfg.vocab_size))
    write_json(out_dir / "generation_config.json", generation)
    write_hf_tokenizer(tokenizer_path, out_dir, eot, cfg.block_size)
    return out_dir


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Indented JSON with a final newline, as `transformers` writes its own files."""
    path.write_text(json.dumps(data, indent=2) + "\n")
