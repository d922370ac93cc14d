"""Command: export a training run as a Hugging Face folder (GPT-2, Llama or Qwen3) or an ONNX model.

`python -m jaxgpt.export --workdir runs/tiny --out runs/tiny/hf` writes a folder that
`transformers.AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load
offline: config.json, model.safetensors, generation_config.json, tokenizer.json and
tokenizer_config.json. With `--format onnx` the folder holds model.onnx (input_ids,
attention_mask, position_ids and past key/values → logits and present key/values: a KV cache in
the layout Optimum expects), config.json and the same tokenizer files; that path needs the
[onnx] extra, and `python -m jaxgpt.generate --onnx FOLDER` samples from it. The work is
done by jaxgpt.interop (hf_export, onnx); this file only parses flags and prints.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from jaxgpt import config as config_lib
from jaxgpt import storage
from jaxgpt.interop.hf_export import export_hf
from jaxgpt.interop.onnx import export_onnx  # torch and onnx load only when it runs
from jaxgpt.storage import StorageError


def _parser() -> argparse.ArgumentParser:
    parser = config_lib.make_parser(
        "export",
        "Export a jaxgpt training run as a Hugging Face folder (GPT-2, Llama or Qwen3) or ONNX.",
    )
    parser.add_argument("--workdir", required=True, help="training run directory")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument(
        "--format", default="hf", choices=("hf", "onnx"), help="onnx needs the [onnx] extra"
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--step",
        type=int,
        default=None,
        help="checkpoint step (default: the best params if the run kept them, else the latest)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = config_lib.parse_args(_parser(), argv)
    try:
        message = _export(args)
    except (FileNotFoundError, ValueError, ModuleNotFoundError, StorageError) as e:
        sys.exit(f"error: {e}")
    print(message)


def _export(args: argparse.Namespace) -> str:
    """Export into --out; a bucket --out is written locally first, then uploaded (safetensors
    and ONNX write local files), so the bucket only ever gets finished files."""
    remote = config_lib.is_remote(args.out)
    if remote:
        if args.out.rstrip("/") == str(args.workdir).rstrip("/"):
            raise ValueError("--out must not be the workdir: its config.json would be overwritten")
        storage.check_writable(config_lib.location(args.out, "--out"), "--out")
    with tempfile.TemporaryDirectory(prefix="jaxgpt-export-") as scratch:
        out = Path(scratch) if remote else args.out
        if args.format == "onnx":
            path, diff = export_onnx(args.workdir, out, args.dtype, args.step)
            done = f"(onnxruntime vs jaxgpt: max |logit diff| {diff:.1e}) and tokenizer"
        else:
            path = export_hf(args.workdir, out, args.dtype, args.step)
            done = "(load with transformers.AutoModelForCausalLM.from_pretrained)"
        if remote:
            storage.upload_tree(Path(scratch), config_lib.location(args.out, "--out"))
            inner = Path(path).relative_to(scratch)
            path = args.out if inner == Path(".") else f"{args.out.rstrip('/')}/{inner}"
    return f"wrote {path} {done}"


if __name__ == "__main__":
    main()
