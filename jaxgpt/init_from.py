"""Start a run from existing weights: `--config.init_from=hf:PATH` or `workdir:PATH`.

hf:PATH is a Hugging Face GPT-2, Llama or Qwen3 folder (config.json, model.safetensors, a
sharded safetensors index or pytorch_model.bin, tokenizer.json); workdir:PATH is another jaxgpt
run (its latest checkpoint's params). The source decides the architecture (layers, heads, width,
vocabulary, and the switches: positions, norm, MLP, key/value heads, tied head, QK-norm) and the
tokenizer; the run's config keeps everything else (dropout, remat, dtypes, optimizer, data). The
context may be shortened (a learned position table is cut), never lengthened.

Only the params are taken; the optimizer state starts fresh at step 0. A run that already has
its own checkpoint resumes from that instead, so a preempted fine-tuning run continues normally.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from tokenizers import Tokenizer

from jaxgpt import storage
from jaxgpt.checkpoint import shapes_by_path
from jaxgpt.config import AnyPath, check_location, is_remote, location
from jaxgpt.data.tokenizer import load_tokenizer
from jaxgpt.interop.hf import gpt_config_from_hf, import_hf
from jaxgpt.model import GPTConfig
from jaxgpt.state import Trainer, TrainState
from jaxgpt.workdir import restore_params, workdir_config

ARCHITECTURE = (
    "vocab_size", "n_layer", "n_head", "n_embd", "bias",
    # the switches (model.py's docstring): the weights were trained with them
    "position", "rope_theta", "norm", "norm_eps", "mlp", "mlp_hidden", "n_kv_head",
    "tie_embeddings", "qk_norm",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Source:
    """Where initial weights come from, and what they imply for the run's config."""

    kind: str  # "hf" | "workdir"
    path: AnyPath
    architecture: dict[str, Any]  # GPTConfig fields fixed by the weights
    block_size: int  # positions the weights know
    tokenizer_path: Path
    eot_token: str = ""

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.path}"


def resolve(spec: str) -> Source:
    """Read the source's config (not its weights yet); errors say what is wrong and what to do."""
    if spec == "?":
        raise ValueError(
            "this config starts from existing weights: set --config.init_from=hf:PATH (a "
            "Hugging Face GPT-2, Llama or Qwen3 folder) or --config.init_from=workdir:PATH (a "
            "jaxgpt run)"
        )
    kind, sep, path_text = spec.partition(":")
    if not sep or kind not in ("hf", "workdir") or not path_text:
        raise ValueError(
            f"init_from={spec!r}: expected hf:PATH (a Hugging Face GPT-2, Llama or Qwen3 "
            "folder) or workdir:PATH (a jaxgpt run)"
        )
    check_location(path_text, "init_from")
    path = location(
        path_text if is_remote(path_text) else Path(path_text).expanduser(), "init_from"
    )
    storage.check_readable(path, "init_from")
    if not path.is_dir():
        raise FileNotFoundError(f"init_from={spec!r}: {path} is not a directory")
    if kind == "hf":  # safetensors and tokenizers open local files: fetch a bucket's folder
        return _resolve_hf(storage.local_folder(path, "models"))
    return _resolve_workdir(path)


def _resolve_hf(path: Path) -> Source:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"init_from=hf:{path}: no config.json there, so it is not a Hugging Face model folder"
        )
    try:
        cfg = gpt_config_from_hf(json.loads(config_file.read_text()))
    except ValueError as e:
        raise ValueError(
            f"init_from=hf:{path} is not a GPT-2, Llama or Qwen3 model jaxgpt can load: {e}"
        ) from e
    tokenizer = path / "tokenizer.json"
    if not tokenizer.is_file():
        raise FileNotFoundError(
            f"init_from=hf:{path} has no tokenizer.json. Write one with transformers: "
            f"AutoTokenizer.from_pretrained('{path}').save_pretrained('{path}')"
        )
    eot = ""
    generation = path / "generation_config.json"
    if generation.is_file():  # the id names the token; the tokenizer maps it back to text
        eos = json.loads(generation.read_text()).get("eos_token_id")
        if isinstance(eos, int):
            eot = Tokenizer.from_file(str(tokenizer)).id_to_token(eos) or ""
    return Source(
        "hf", path, {k: getattr(cfg, k) for k in ARCHITECTURE}, cfg.block_size, tokenizer, eot
    )


def _resolve_workdir(path: Path) -> Source:
    cfg, config = workdir_config(path)
    tokenizer = next(
        (path / n for n in ("tokenizer.model", "tokenizer.json") if (path / n).is_file()), None
    )
    if tokenizer is None:
        raise FileNotFoundError(f"init_from=workdir:{path} has no tokenizer.model or .json")
    tokenizer = storage.local_file(tokenizer, "tokenizers")
    eot = config.get("data", {}).get("tokenizer", {}).get("eot_token", "")
    return Source(
        "workdir",
        path,
        {k: getattr(cfg, k) for k in ARCHITECTURE},
        cfg.block_size,
        tokenizer,
        eot,
    )


def apply_to_config(config: ml_collections.ConfigDict, source: Source) -> list[str]:
    """Make the config describe the source's model and tokenizer; returns notes for the user.

    The model's shape comes from the weights. The tokenizer is the source's unless the config
    names one, which must then have the same vocabulary size (else ids would mean other tokens).
    """
    notes = []
    for key, value in source.architecture.items():
        if config.model[key] != value and not (key == "vocab_size" and config.model[key] == 0):
            notes.append(f"model.{key}: {config.model[key]} → {value} (from {source.spec})")
        config.model[key] = value
    if config.model.block_size > source.block_size:
        notes.append(
            f"model.block_size: {config.model.block_size} → {source.block_size} "
            f"(the weights know {source.block_size} positions)"
        )
        config.model.block_size = source.block_size
    tokenizer = config.data.tokenizer
    if not tokenizer.path:
        tokenizer.path = str(source.tokenizer_path)
        tokenizer.eot_token = tokenizer.eot_token or source.eot_token
    elif Path(tokenizer.path).resolve() != source.tokenizer_path.resolve():
        own = load_tokenizer(source.tokenizer_path, source.eot_token).vocab_size
        given = load_tokenizer(tokenizer.path, tokenizer.eot_token).vocab_size
        if own != given:
            raise ValueError(
                f"data.tokenizer.path={tokenizer.path} has {given} tokens, but the tokenizer of "
                f"{source.spec} has {own}: the model's embeddings belong to its own tokenizer. "
                "Leave data.tokenizer.path empty to use it."
            )
    return notes


def load_params(source: Source, cfg: GPTConfig) -> dict[str, Any]:
    """The source's params as numpy, in cfg's layout (scanned or not), dtype and context."""
    if source.kind == "hf":
        _, params = import_hf(source.path)
    else:
        params, _ = restore_params(source.path)
    params = _unrolled(params) if "h" in params else params
    params = jax.tree.map(np.asarray, params)
    if "wpe" in params:  # learned positions; rotary ones need no table
        params["wpe"]["embedding"] = params["wpe"]["embedding"][: cfg.block_size]
    if cfg.scan_layers:
        params = _stacked(params, cfg.n_layer)
    return jax.tree.map(lambda a: np.asarray(a, cfg.weight_dtype), params)


def _unrolled(params: dict[str, Any]) -> dict[str, Any]:
    """Scanned layers (h/block, stacked on axis 0) as h_0 .. h_{L-1}."""
    stacked = params["h"]["block"]
    n_layer = jax.tree.leaves(stacked)[0].shape[0]
    out = {k: v for k, v in params.items() if k != "h"}
    for i in range(n_layer):
        out[f"h_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return out


def _stacked(params: dict[str, Any], n_layer: int) -> dict[str, Any]:
    layers = [params[f"h_{i}"] for i in range(n_layer)]
    out = {k: v for k, v in params.items() if not k.startswith("h_")}
    out["h"] = {"block": jax.tree.map(lambda *xs: np.stack(xs), *layers)}
    return out


def check_shapes(params: dict[str, Any], expected: Any, source: Source) -> None:
    """Every array present with the model's shape, or an error listing the differences."""
    have, want = shapes_by_path(params), shapes_by_path(expected)
    problems = [
        f"  {key}: weights {have.get(key)}, model {want.get(key)}"
        for key in sorted(set(have) | set(want))
        if have.get(key) != want.get(key)
    ]
    if problems:
        raise ValueError(
            f"the weights of {source.spec} do not fit the model ({len(problems)} arrays):\n"
            + "\n".join(problems[:10])
        )


def initial_state(
    trainer: Trainer, tx: optax.GradientTransformation, params: dict[str, Any]
) -> TrainState:
    """A step-0 train state holding `params`, placed straight into the trainer's shardings.

    Each process holds the full numpy params and hands every device just its own slice, so
    nothing is gathered or replicated on the way in.
    """
    shardings = trainer.state_shardings.params
    arrays = jax.tree.map(
        lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index, x=x: x[index]),
        params,
        shardings,
    )

    def fresh(p):
        return TrainState.fresh(p, tx.init(p))

    with jax.set_mesh(trainer.mesh):
        return jax.jit(fresh, out_shardings=trainer.state_shardings)(arrays)
