"""The model to serve, from a training workdir or an exported Hugging Face GPT-2 folder."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from jaxgpt import storage
from jaxgpt.config import AnyPath, absolute, location
from jaxgpt.data.tokenizer import load_tokenizer
from jaxgpt.interop.hf import import_hf
from jaxgpt.model import GPT
from jaxgpt.workdir import load_run


@dataclasses.dataclass
class ServedModel:
    """Everything the server needs from a model directory."""

    name: str
    model: GPT
    params: Any
    tokenizer: Any

    @property
    def context(self) -> int:
        return self.model.config.block_size

    @functools.cached_property
    def decode_piece(self) -> Callable[[Iterable[int]], str]:
        """tokenizer.decode that remembers the text of single tokens: logprobs decode each
        token and alternative on its own, and an echoed prompt has thousands of them."""
        decode = self.tokenizer.decode
        one = functools.lru_cache(maxsize=1 << 17)(lambda token: decode([token]))

        def piece(ids: Iterable[int]) -> str:
            ids = list(ids)
            return one(ids[0]) if len(ids) == 1 else decode(ids)

        return piece


def check_model_dir(path: str | AnyPath) -> str:
    """ "workdir" or "hf" for a directory we can serve; a clear error otherwise (cheap: no
    weights are read, so the command can fail before it starts listening)."""
    path = location(path, "--workdir")
    storage.check_readable(path, "model directory")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist; give a training workdir or an HF folder")
    if (path / "checkpoints").is_dir():
        return "workdir"
    if (path / "config.json").is_file() and any(
        (path / f).is_file()
        for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    ):
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(
                f"{path} has no tokenizer.json; serve a folder written by `python -m "
                "jaxgpt.export` (or add the model's tokenizer.json)"
            )
        return "hf"
    raise FileNotFoundError(
        f"{path} is neither a jaxgpt workdir (no checkpoints/) nor a Hugging Face model folder "
        "(no config.json + model.safetensors)"
    )


def _hf_eot_token(path: Path) -> str:
    """The end-of-text token's name, from tokenizer_config.json (export writes it there)."""
    config_file = path / "tokenizer_config.json"
    if not config_file.is_file():
        return ""
    eos = json.loads(config_file.read_text()).get("eos_token", "")
    return eos.get("content", "") if isinstance(eos, dict) else (eos or "")


def load_model(
    path: str | AnyPath, step: int | None = None, name: str | None = None
) -> ServedModel:
    """Load weights and tokenizer; the served name defaults to the directory's name."""
    path = location(path, "--workdir")
    kind = check_model_dir(path)
    name = name or absolute(path).name
    if kind == "workdir":
        run = load_run(path, step)
        return ServedModel(name, run.model, run.params, run.tokenizer)
    if step is not None:
        raise ValueError("--step applies to training workdirs; an HF folder holds one checkpoint")
    path = storage.local_folder(path, "models")  # safetensors are opened as local files
    config, params = import_hf(path, dropout=0.0)
    tokenizer = load_tokenizer(path / "tokenizer.json", _hf_eot_token(path))
    return ServedModel(name, GPT(config), params, tokenizer)
