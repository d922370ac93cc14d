"""Text from an exported ONNX folder: a numpy generation loop over onnxruntime with the KV cache.

`python -m jaxgpt.generate --onnx exported/tiny-onnx --prompt "..."` runs it; it needs the
folder alone (model.onnx, config.json, tokenizer.json) and onnxruntime, no jax params and no
torch. The loop is the one Optimum's ORTModelForCausalLM runs, written out: prompts of
different lengths are padded on the left (attention_mask 0 there, position_ids = the running
count of real tokens − 1); a prefill with empty past tensors reads the prompts; then each step
feeds one token per row with the present tensors of the step before as past. Past the context,
rows slide as jaxgpt's own sampler does (decode.window: keep the last half context, read it
again from position 0). `use_cache=False` reads the whole text again at every token, as the
graphs exported before the cache had to: a baseline for benchmarks/onnx_generate.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from jaxgpt.decode.window import slide
from jaxgpt.interop.onnx import MODEL_FILE, cache_shape, session


@dataclasses.dataclass(frozen=True)
class OnnxLM:
    """An exported folder under onnxruntime, with what the loop needs from its config.json."""

    sess: Any
    past: list[str]  # past_key_values.{i}.key/.value, in the graph's order
    kv_heads: int
    head_dim: int
    max_seq: int  # the context: positions past it have no embedding (GPT-2) or were not trained
    eot_id: int  # -1: none
    vocab_limit: int  # ids at or past it are padding rows of the embedding, never drawn

    @property
    def outputs(self) -> list[str]:
        return ["logits", *[n.replace("past_key_values", "present") for n in self.past]]


def load_onnx(folder: str | Path, threads: int = 0) -> OnnxLM:
    """Open an export folder (jaxgpt.export --format onnx); threads 0 = onnxruntime's default."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{folder} is not an ONNX export: {config_path} is missing (write one with "
            "`python -m jaxgpt.export --format onnx`)"
        )
    config = json.loads(config_path.read_text())
    about = config.get("jaxgpt", {})
    onnx = about.get("onnx", {})
    model_path = folder / onnx.get("file", MODEL_FILE)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} is missing: export the run again")
    sess = session(model_path, threads)
    past, kv_heads, head_dim = cache_shape(sess)
    if not past:
        raise ValueError(
            f"{model_path} has no KV cache inputs (past_key_values.*): it was exported by an "
            "older jaxgpt; export the run again with `python -m jaxgpt.export --format onnx`"
        )
    # max_seq: written by jaxgpt; a folder from elsewhere has the context in the HF fields.
    context = onnx.get("max_seq") or config.get("n_positions") or config["max_position_embeddings"]
    eot = config.get("eos_token_id")
    return OnnxLM(
        sess=sess,
        past=past,
        kv_heads=kv_heads,
        head_dim=head_dim,
        max_seq=int(context),
        eot_id=-1 if eot is None else int(eot),
        vocab_limit=int(about.get("tokenizer_vocab_size") or config["vocab_size"]),
    )


def pick(
    logits_BV: np.ndarray,
    rng: np.random.Generator,
    temperature: float,
    top_k: int,
    top_p: float,
    vocab_limit: int,
) -> np.ndarray:
    """Next token per row: argmax at temperature 0, else a draw from the softmax restricted to
    the top_k tokens (0 = all) and to the smallest set reaching probability top_p (1 = all)."""
    logits_BV = logits_BV[:, :vocab_limit].astype(np.float64)
    if temperature <= 0:
        return logits_BV.argmax(-1)
    logits_BV = logits_BV / temperature
    V = logits_BV.shape[-1]
    if 0 < top_k < V:
        kth_B1 = np.partition(logits_BV, V - top_k, axis=-1)[:, V - top_k, None]
        logits_BV = np.where(logits_BV < kth_B1, -np.inf, logits_BV)
    probs_BV = np.exp(logits_BV - logits_BV.max(-1, keepdims=True))
    probs_BV /= probs_BV.sum(-1, keepdims=True)
    if top_p < 1.0:
        sorted_BV = -np.sort(-probs_BV, axis=-1)
        # The last sorted probability kept: the first where the mass reaches top_p.
        last_B1 = np.minimum((sorted_BV.cumsum(-1) < top_p).sum(-1, keepdims=True), V - 1)
        cutoff_B1 = np.take_along_axis(sorted_BV, last_B1, axis=-1)
        probs_BV = np.where(probs_BV < cutoff_B1, 0.0, probs_BV)
        probs_BV /= probs_BV.sum(-1, keepdims=True)
    u_B1 = rng.random((len(probs_BV), 1))
    return np.minimum((probs_BV.cumsum(-1) < u_B1).sum(-1), V - 1)


def _left_padded(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows as ids [B, longest] padded on the left, and the attention mask (0 on the padding)."""
    longest = max(map(len, rows))
    ids = np.zeros((len(rows), longest), np.int64)
    mask = np.zeros((len(rows), longest), np.int64)
    for i, row in enumerate(rows):
        ids[i, longest - len(row) :] = row
        mask[i, longest - len(row) :] = 1
    return ids, mask


def _run(lm: OnnxLM, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray]):
    """One graph call: last-position logits [B, V] and the present tensors."""
    # Optimum's positions: a padded row counts only its real tokens (padding gets 1, unused).
    positions = np.where(mask == 0, 1, mask.cumsum(-1) - 1)[:, -ids.shape[1] :]
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    logits, *present = lm.sess.run(lm.outputs, {**feed, **dict(zip(lm.past, past, strict=True))})
    return logits[:, -1], present


def _prefill(lm: OnnxLM, rows: list[list[int]]):
    """Read rows from position 0 with an empty past: (last logits, mask, present)."""
    ids, mask = _left_padded(rows)
    empty = np.zeros((len(rows), lm.kv_heads, 0, lm.head_dim), np.float32)
    logits, present = _run(lm, ids, mask, [empty] * len(lm.past))
    return logits, mask, present


def _check(lm: OnnxLM, prompts: list[list[int]]) -> None:
    if not prompts or not all(prompts):
        raise ValueError("every prompt needs at least one token (use the end-of-text id)")
    longest = max(map(len, prompts))
    if longest > lm.max_seq:
        raise ValueError(
            f"prompt ({longest} tokens) exceeds the model's context of {lm.max_seq} tokens: "
            "shorten the prompt (generation may run past the context, a prompt may not)"
        )


def generate(
    lm: OnnxLM,
    prompts: list[list[int]],
    n_new: int,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    use_cache: bool = True,
) -> list[list[int]]:
    """Continue each prompt (token ids) by up to n_new tokens, in one batch; a row stops after
    end-of-text (its text is cut there) and the call ends when every row has.

    Rows slide together when the longest would pass the context, as in
    jaxgpt.decode.generate.generate_batch, so greedy text equals jaxgpt's.
    """
    _check(lm, prompts)
    rng = np.random.default_rng(seed)
    context = [list(p) for p in prompts]  # what the model reads since the last slide
    texts = [[] for _ in prompts]
    logits, mask, present = _prefill(lm, context)
    done = np.zeros(len(prompts), bool)
    for i in range(n_new):
        token = pick(logits, rng, temperature, top_k, top_p, lm.vocab_limit)
        if lm.eot_id >= 0:
            token = np.where(done, lm.eot_id, token)
            done |= token == lm.eot_id
        for row, ctx, t in zip(texts, context, token.tolist(), strict=True):
            row.append(t)
            ctx.append(t)
        if i == n_new - 1 or done.all():
            break
        if max(map(len, context)) > lm.max_seq:
            context = [slide(ctx, lm.max_seq) for ctx in context]
            logits, mask, present = _prefill(lm, context)
        elif use_cache:
            mask = np.concatenate([mask, np.ones((len(mask), 1), np.int64)], axis=1)
            logits, present = _run(lm, token[:, None].astype(np.int64), mask, present)
        else:
            logits, mask, present = _prefill(lm, context)
    if lm.eot_id >= 0:
        texts = [r[: r.index(lm.eot_id) + 1] if lm.eot_id in r else r for r in texts]
    return texts


def onnx_texts(
    folder: str | Path,
    prompts: list[str],
    n_new: int,
    num_samples: int = 1,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> list[str]:
    """Continuations (text) of each prompt × num_samples, in order, from an export folder: its
    tokenizer.json encodes and decodes, end-of-text tokens are dropped from the text."""
    lm = load_onnx(folder)
    tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    encoded = [tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    eot = max(lm.eot_id, 0)
    ids = [row or [eot] for row in encoded for _ in range(num_samples)]
    out = generate(lm, ids, n_new, seed, temperature, top_k, top_p)
    return [
        tokenizer.decode([t for t in row if t != lm.eot_id], skip_special_tokens=False)
        for row in out
    ]
