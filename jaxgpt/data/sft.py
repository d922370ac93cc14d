"""Supervised fine-tuning data: JSONL records with a prompt and a completion.

Each record becomes one example, prompt tokens + completion tokens + EOT, stored in uint32 token
shards with bit 31 set on the prompt tokens (the tokens the loss must not count), and an offsets
file per split (`{split}-examples.npy`, int64, examples + 1 entries). At train time an example
fills one row of block_size+1 tokens: longer ones lose the start of their prompt (the completion
is what is learned), shorter ones are padded with EOT that does not count. Rows reach the loss as
negative ids -(t+1) for uncounted targets (see state.split_targets).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxgpt.config import is_remote
from jaxgpt.config.data import DataConfig
from jaxgpt.data import sources as sources_lib
from jaxgpt.data import staging
from jaxgpt.data.inputs import CorruptInputError, corrupt, input_files, reject
from jaxgpt.data.pipeline import TrainBatches, process_rows
from jaxgpt.data.readers import open_input
from jaxgpt.data.shards import ShardWriter
from jaxgpt.data.tokenizer import make_tokenizer

PROMPT_BIT = np.uint32(1 << 31)


def read_examples(
    source: sources_lib.Source,
    stats: sources_lib.ReadStats,
    strict: bool,
    prompt_field: str,
    completion_field: str,
) -> Iterator[tuple[str, str]]:
    """(prompt, completion) per JSONL line; bad lines are counted with file:line (or fail)."""
    if source.kind != "jsonl":
        raise ValueError(
            f"data.format='sft' reads JSONL records, not {source.spec!r}; give "
            "data.sources=jsonl:PATH with one {prompt, completion} object per line"
        )
    for path in input_files(source, stats):
        with open_input(path) as stream:
            try:
                for lineno, line in enumerate(stream, 1):
                    if not line.strip():
                        continue
                    where = f"{path}:{lineno}"
                    try:
                        record = json.loads(line.decode("utf-8", errors="replace"))
                    except json.JSONDecodeError as e:
                        reject(stats, strict, where, f"invalid JSON ({e.msg})", "bad_json_lines")
                        continue
                    fields = (prompt_field, completion_field)
                    if not isinstance(record, dict) or not all(
                        isinstance(record.get(f), str) for f in fields
                    ):
                        reason = f"needs string fields {prompt_field!r} and {completion_field!r}"
                        reject(stats, strict, where, reason, "missing_field_lines")
                        continue
                    prompt, completion = record[prompt_field], record[completion_field]
                    if not completion.strip():
                        stats.skip("empty_completion")
                        continue
                    stats.add(source, prompt + completion)
                    yield prompt, completion
            except CorruptInputError as e:
                corrupt(e, stats, strict)


def example_key(prompt: str, completion: str) -> bytes:
    """The example's identity, for deduplication and for its split."""
    return hashlib.sha1(json.dumps([prompt, completion]).encode()).digest()


def split_of(prompt: str, completion: str, val_fraction: float) -> str:
    """val or train, by the example's hash: stable under reordering and appending."""
    digest = example_key(prompt, completion)
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def encode_example(tokenizer, prompt: str, completion: str) -> np.ndarray:
    """uint32 tokens of one example, prompt tokens flagged with PROMPT_BIT."""
    p = np.asarray(tokenizer.encode(prompt) if prompt else [], np.uint32)
    c = np.asarray([*tokenizer.encode(completion), tokenizer.eot_id], np.uint32)
    return np.concatenate([p | PROMPT_BIT, c])


def to_signed(tokens: np.ndarray) -> np.ndarray:
    """Stored uint32 tokens → int32 with uncounted (prompt) tokens as -(t+1)."""
    tokens = np.asarray(tokens, np.uint32)
    flagged = (tokens & PROMPT_BIT) != 0
    ids = (tokens & ~PROMPT_BIT).astype(np.int32)
    return np.where(flagged, -ids - 1, ids).astype(np.int32)


def example_row(tokens: np.ndarray, seq_len: int, eot_id: int) -> np.ndarray:
    """One example as an int32 row of seq_len+1: the last seq_len+1 tokens if longer, else
    padded after the end with uncounted EOT."""
    signed = to_signed(tokens)[-(seq_len + 1) :]
    row = np.full(seq_len + 1, -eot_id - 1, np.int32)
    row[: len(signed)] = signed
    return row


class Examples:
    """A split's examples: offsets into its token shards."""

    def __init__(self, tokens, offsets: np.ndarray):
        self.tokens, self.offsets = tokens, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> np.ndarray:
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens.window(start, stop - start)

    def rows(self, ids, seq_len: int, eot_id: int) -> np.ndarray:
        """example_row of each example, read together (one round of ranged reads from a
        bucket); only an example's last seq_len+1 tokens are read, the ones a row keeps."""
        ids = np.asarray(ids, np.int64)
        stops = self.offsets[ids + 1]
        starts = np.maximum(self.offsets[ids], stops - (seq_len + 1))
        pieces = self.tokens.ranges(starts, stops - starts)
        return np.stack([example_row(p, seq_len, eot_id) for p in pieces])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def load_examples(info, split: str) -> Examples:
    offsets = info.path / f"{split}-examples.npy"
    if is_remote(offsets):  # np.load needs a seekable file: the whole (small) object
        return Examples(info.tokens(split), np.load(io.BytesIO(offsets.read_bytes())))
    return Examples(info.tokens(split), np.load(offsets))


class SFTBatches(TrainBatches):
    """Training batches of whole examples, one per row, in a per-epoch permutation (same
    determinism as TrainBatches: a pure function of seed, step and process)."""

    def __init__(
        self,
        examples: Examples,
        eot_id: int,
        batch_size: int,
        seq_len: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if not len(examples):
            raise ValueError("the training split holds no examples")
        self.examples, self.eot_id = examples, eot_id
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.n_windows = len(examples)
        self.local_rows = process_rows(batch_size, process_index, process_count)

    def local_batch(self, step: int) -> np.ndarray:
        ids = self.windows(step)[self.local_rows]
        return self.examples.rows(ids, self.seq_len, self.eot_id)


def eval_rows(
    examples: Examples, eot_id: int, seq_len: int, n_tokens: int, batch_size: int
) -> np.ndarray:
    """Validation examples (up to about n_tokens of rows) as int32 [N, batch_size, seq_len+1];
    the last batch is filled with rows that count nothing."""
    if not len(examples):
        raise ValueError("the validation split holds no examples; raise data.val_fraction")
    n = min(len(examples), max(1, n_tokens // seq_len))
    rows = list(examples.rows(np.arange(n), seq_len, eot_id))
    empty = np.full(seq_len + 1, -eot_id - 1, np.int32)
    rows += [empty] * (-len(rows) % batch_size)
    return np.stack(rows).reshape(-1, batch_size, seq_len + 1)


def build_sft(cfg: DataConfig, tmp: Path, verbose: bool) -> dict:
    """Read, deduplicate, split, tokenize and write an SFT data dir's contents into tmp;
    returns the metadata fields that differ from a text data dir."""
    stats = sources_lib.ReadStats()
    examples, duplicates = read_splits(cfg, stats, verbose)
    tokenizer = make_tokenizer(cfg.tokenizer, [p + c for p, c in examples["train"]])
    staging.write_file(tmp / type(tokenizer).filename, tokenizer.proto)
    shard_tokens = max(int(cfg.shard_mb * 1e6) // 4, 1)  # uint32: 4 bytes a token
    splits = {
        split: write_split(tmp, split, items, tokenizer, shard_tokens)
        for split, items in examples.items()
    }
    return {
        "tokenizer": tokenizer,
        "dtype": "uint32",
        "splits": splits,
        "read": stats,
        "report": sft_report(stats, duplicates, splits, tokenizer),
    }


def read_splits(
    cfg: DataConfig, stats: sources_lib.ReadStats, verbose: bool
) -> tuple[dict[str, list[tuple[str, str]]], int]:
    """Every source's (prompt, completion) examples by split, and how many exact duplicates
    were dropped; fails unless both splits hold some."""
    seen: set[bytes] = set()
    duplicates = 0
    examples: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    bar = tqdm(desc="read", unit=" examples", disable=not verbose, dynamic_ncols=True)
    for source in sources_lib.parse_sources(cfg.sources):
        for prompt, completion in read_examples(
            source, stats, cfg.strict, cfg.prompt_field, cfg.completion_field
        ):
            key = example_key(prompt, completion)
            if cfg.dedup.exact and key in seen:
                duplicates += 1
                continue
            seen.add(key)
            examples[split_of(prompt, completion, cfg.val_fraction)].append((prompt, completion))
            bar.update(1)
    bar.close()
    if not examples["train"] or not examples["val"]:
        raise ValueError(
            f"data.sources={cfg.sources!r} gave {len(examples['train'])} training and "
            f"{len(examples['val'])} validation examples ({stats.problem_count} bad lines"
            + (f", first: {stats.problems[0]}" if stats.problems else "")
            + "); SFT needs both: add records or change data.val_fraction"
        )
    return examples, duplicates


def write_split(
    tmp: Path, split: str, items: list[tuple[str, str]], tokenizer, shard_tokens: int
) -> dict:
    """Encode one split's examples into token shards and `{split}-examples.npy`; returns the
    split's metadata."""
    offsets = np.zeros(len(items) + 1, np.int64)
    completion_tokens = 0
    with ShardWriter(tmp, split, np.uint32, shard_tokens) as writer:
        for i, (prompt, completion) in enumerate(items):
            tokens = encode_example(tokenizer, prompt, completion)
            writer.write(tokens)
            offsets[i + 1] = offsets[i] + len(tokens)
            completion_tokens += int(np.sum((tokens & PROMPT_BIT) == 0))
        shards = writer.close()
    npy = io.BytesIO()  # np.save to a real file writes around it, unsynced and unnamed on error
    np.save(npy, offsets)
    staging.write_file(tmp / f"{split}-examples.npy", npy.getvalue())
    lengths = np.diff(offsets)
    return {
        "documents": len(items),
        "bytes": sum(len((p + c).encode()) for p, c in items),
        "tokens": int(offsets[-1]),
        "completion_tokens": completion_tokens,
        "example_tokens": {
            "median": int(np.median(lengths)),
            "p99": int(np.percentile(lengths, 99)),
            "max": int(lengths.max()),
        },
        "shards": shards,
    }


def sft_report(
    stats: sources_lib.ReadStats, duplicates: int, splits: dict[str, dict], tokenizer
) -> str:
    """The human-readable summary printed by prepare and kept in the data dir."""
    report = [
        "── sft data report " + "─" * 42,
        f"read         {stats.documents:,} examples from {stats.files:,} files; "
        f"{duplicates:,} exact duplicates removed",
    ]
    for name in ("bad_json_lines", "missing_field_lines", "corrupt_files"):
        if getattr(stats, name):
            report.append(f"  {name.replace('_', ' ')}: {getattr(stats, name)}")
    report += [f"  ! {p}" for p in stats.problems]
    for split, info in splits.items():
        t = info["example_tokens"]
        report.append(
            f"{split:<12} {info['documents']:,} examples, {info['tokens']:,} tokens "
            f"({info['completion_tokens']:,} completion); tokens per example: median "
            f"{t['median']}, p99 {t['p99']}, max {t['max']}"
        )
    report.append(f"tokenizer    {type(tokenizer).filename}, vocab {tokenizer.vocab_size:,}")
    return "\n".join(report)
