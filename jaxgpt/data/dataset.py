"""A prepared data dir: its settings (DataConfig), its identity (dataset_key) and its contents.

Layout of a data dir (written by jaxgpt.data.build):
    train.jsonl, val.jsonl        cleaned, deduplicated documents, one {"text": ...} per line
    tokenizer.model | .json       SentencePiece model, or a Hugging Face tokenizer.json
    train-00000.bin, ...          token shards (uint16 or uint32), EOT after every document
    val-00000.bin, ...
    metadata.json                 sources, settings, key, tokenizer hash, counts per shard
    report.txt                    what happened, for people
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

from jaxgpt.data import sources as sources_lib
from jaxgpt.data.shards import TokenStream
from jaxgpt.data.tokenizer import load_tokenizer

FORMAT_VERSION = 3
SPLITS = ("train", "val")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Data settings; see configs/base.py for the meaning of each field."""

    sources: str = "stdlib"
    path: str = ""
    format: str = "text"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    text_split: str = "file"
    jsonl_field: str = "text"
    tfds_data_dir: str = ""
    tfds_text_field: str = "text"
    stdlib_max_mb: float = 8.0
    val_fraction: float = 0.1
    split: str = "auto"
    strict: bool = False
    shard_mb: float = 256.0
    workers: int = 0
    clean_normalization: str = "NFC"
    clean_min_chars: int = 1
    clean_max_chars: int = 10_000_000
    dedup_exact: bool = True
    dedup_near: bool = True
    dedup_threshold: float = 0.8
    tokenizer_model_type: str = "bpe"
    tokenizer_vocab_size: int = 50257
    tokenizer_train_mb: float = 20.0
    tokenizer_path: str = ""
    tokenizer_eot_token: str = ""

    def __post_init__(self):
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.split not in ("auto", "document", "tail"):
            raise ValueError(
                f"data.split={self.split!r} is not one of ('auto', 'document', 'tail')"
            )
        if self.format not in ("text", "sft"):
            raise ValueError(f"data.format={self.format!r} is not one of ('text', 'sft')")
        if self.shard_mb <= 0:
            raise ValueError(f"data.shard_mb must be positive, got {self.shard_mb}")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a prepared data dir holds (from its metadata.json)."""

    path: Path
    vocab_size: int
    eot_id: int
    dtype: str
    tokenizer_file: str
    shards: dict[str, list[dict]]
    documents: dict[str, int]
    eot_token: str = ""
    format: str = "text"  # "sft": examples with uncounted prompt tokens (data/sft.py)

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.tokenizer_file

    @property
    def train_tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards["train"])

    @property
    def val_tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards["val"])

    def tokens(self, split: str) -> TokenStream:
        """The split's token stream, memory-mapped across its shards."""
        return TokenStream([self.path / s["file"] for s in self.shards[split]], self.dtype)

    def tokenizer(self):
        return load_tokenizer(self.tokenizer_path, self.eot_token)


def source_fingerprint(cfg: DataConfig) -> list:
    """Paths, sizes and mtimes of every input, so edited inputs trigger a rebuild."""
    prints: list = []
    for source in sources_lib.parse_sources(cfg.sources):
        if source.kind == "stdlib":
            prints.append(["stdlib", sys.version])
        elif source.kind == "tfds":
            data_dir = cfg.tfds_data_dir or os.environ.get("TFDS_DATA_DIR", "")
            prints.append(["tfds", source.path, data_dir])
        else:
            for f in sources_lib.source_files(source):
                st = f.stat()
                prints.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    if cfg.tokenizer_path:
        digest = hashlib.sha256(Path(cfg.tokenizer_path).read_bytes()).hexdigest()
        prints.append(["tokenizer", digest])
    return prints


def dataset_key(cfg: DataConfig) -> str:
    """Hash of everything that decides a data dir's contents (not where it lives)."""
    settings = dataclasses.asdict(cfg)
    for where_or_how in ("path", "workers"):
        settings.pop(where_or_how)
    blob = json.dumps([FORMAT_VERSION, settings, source_fingerprint(cfg)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_metadata(path: str | Path) -> dict | None:
    meta_path = Path(path) / "metadata.json"
    if not meta_path.is_file():
        return None
    return json.loads(meta_path.read_text())


def load_dataset(path: str | Path) -> DatasetInfo:
    """Open a prepared data dir; a dir without metadata.json is not a finished dataset."""
    path = Path(path)
    meta = read_metadata(path)
    if meta is None:
        raise FileNotFoundError(
            f"{path} is not a prepared data dir ({path / 'metadata.json'} is missing); "
            "run python -m jaxgpt.prepare"
        )
    return DatasetInfo(
        path=path,
        vocab_size=meta["vocab_size"],
        eot_id=meta["eot_id"],
        dtype=meta["dtype"],
        tokenizer_file=meta["tokenizer_file"],
        shards={split: meta["splits"][split]["shards"] for split in SPLITS},
        documents={split: meta["splits"][split]["documents"] for split in SPLITS},
        eot_token=meta["config"].get("tokenizer_eot_token", ""),
        format=meta.get("format", "text"),
    )


def is_current(path: str | Path, cfg: DataConfig) -> bool:
    meta = read_metadata(path)
    return meta is not None and meta.get("key") == dataset_key(cfg)
