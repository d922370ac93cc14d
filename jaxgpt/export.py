"""Command: export a training run as a Hugging Face GPT-2 folder or an ONNX model.

`python -m jaxgpt.export --workdir runs/tiny --out runs/tiny/hf` writes a folder that
`transformers.AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load
offline: config.json, model.safetensors, generation_config.json, tokenizer.json and
tokenizer_config.json. With `--format onnx` the folder holds model.onnx (input_ids → logits,
dynamic batch and sequence), config.json and the same tokenizer files; that path needs the
[onnx] extra. The work is done by jaxgpt.interop (hf_export, onnx); this file only parses flags
and prints.
"""

from __future__ import annotations

import argparse
import sys

from jaxgpt import config as config_lib
from jaxgpt.interop.hf_export import export_hf
from jaxgpt.interop.onnx import export_onnx  # torch and onnx load only when it runs


def _parser() -> argparse.ArgumentParser:
    parser = config_lib.make_parser(
        "export", "Export a jaxgpt training run as a Hugging Face GPT-2 folder or ONNX model."
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
    if args.format == "onnx":
        try:
            path, diff = export_onnx(args.workdir, args.out, args.dtype, args.step)
        except (FileNotFoundError, ValueError, ModuleNotFoundError) as e:
            sys.exit(f"error: {e}")
        print(f"wrote {path} (onnxruntime vs jaxgpt: max |logit diff| {diff:.1e}) and tokenizer")
        return
    try:
        out = export_hf(args.workdir, args.out, args.dtype, args.step)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")


if __name__ == "__main__":
    main()
