"""Turn sources into a prepared data dir: tokenizer.model, train.bin, val.bin, metadata.json.

A data dir is keyed by a hash of its sources and settings: preparing again with unchanged inputs
does nothing, a change rebuilds. It is written under a temporary name and renamed when complete,
so a half-written dir is never taken for a finished one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxgpt.data import sources as sources_lib
from jaxgpt.data.tokenizer import Tokenizer, train_tokenizer

FORMAT_VERSION = 2
ENCODE_CHUNK = 256  # documents encoded per call (SentencePiece releases the GIL inside)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Data settings; see configs/base.py for the meaning of each field."""

    sources: str = "stdlib"
    path: str = ""
    text_split: str = "file"
    stdlib_max_mb: float = 8.0
    val_fraction: float = 0.1
    strict: bool = False
    tokenizer_model_type: str = "bpe"
    tokenizer_vocab_size: int = 50257
    tokenizer_train_mb: float = 20.0
    tokenizer_path: str = ""

    def __post_init__(self):
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a prepared data dir holds."""

    path: Path
    vocab_size: int
    eot_id: int
    dtype: str
    train_tokens: int
    val_tokens: int
    documents: int

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.model"

    def tokens(self, split: str) -> np.ndarray:
        """The split's token stream, memory-mapped (nothing is read until used)."""
        return np.memmap(self.path / f"{split}.bin", dtype=self.dtype, mode="r")


def _source_fingerprint(cfg: DataConfig) -> list:
    """Paths, sizes and mtimes of every input file, so edited inputs trigger a rebuild."""
    prints: list = []
    for source in sources_lib.parse_sources(cfg.sources):
        if source.kind == "stdlib":
            prints.append(["stdlib", sys.version])
            continue
        for f in sources_lib.expand_files(source.path):
            st = f.stat()
            prints.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    if cfg.tokenizer_path:
        prints.append(
            ["tokenizer", hashlib.sha256(Path(cfg.tokenizer_path).read_bytes()).hexdigest()]
        )
    return prints


def dataset_key(cfg: DataConfig) -> str:
    settings = dataclasses.asdict(cfg)
    settings.pop("path")  # where the dir lives does not change what is in it
    blob = json.dumps([FORMAT_VERSION, settings, _source_fingerprint(cfg)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_dataset(path: str | Path) -> DatasetInfo:
    path = Path(path)
    meta_path = path / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a prepared data dir ({meta_path} is missing)")
    meta = json.loads(meta_path.read_text())
    return DatasetInfo(
        path=path,
        vocab_size=meta["vocab_size"],
        eot_id=meta["eot_id"],
        dtype=meta["dtype"],
        train_tokens=meta["splits"]["train"]["tokens"],
        val_tokens=meta["splits"]["val"]["tokens"],
        documents=meta["documents"],
    )


def prepare_dataset(cfg: DataConfig, out_dir: str | Path, verbose: bool = True) -> DatasetInfo:
    """Build (or reuse, when its key matches) the prepared data dir at out_dir."""
    out_dir = Path(out_dir)
    key = dataset_key(cfg)
    meta_path = out_dir / "metadata.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
        return load_dataset(out_dir)
    log = print if verbose else (lambda *a, **k: None)
    start = time.time()
    stats = sources_lib.ReadStats()
    docs = list(
        sources_lib.iter_documents(
            sources_lib.parse_sources(cfg.sources),
            stats,
            text_split=cfg.text_split,
            strict=cfg.strict,
            stdlib_max_mb=cfg.stdlib_max_mb,
        )
    )
    # Order documents by content hash so the held-out tail is a random sample of documents, not
    # whatever sorts last (e.g. the stdlib's codec tables). One document keeps its own order.
    docs = sorted((d for d in docs if d.strip()), key=lambda d: hashlib.sha1(d.encode()).digest())
    if not docs:
        raise ValueError(f"data.sources={cfg.sources!r} gave no non-empty documents ({stats})")
    log(f"data: read {len(docs):,} documents, {stats.bytes / 1e6:.1f} MB from {cfg.sources}")
    if cfg.tokenizer_path:
        tokenizer = Tokenizer.load(cfg.tokenizer_path)
    else:
        log(
            f"data: training a SentencePiece {cfg.tokenizer_model_type} tokenizer "
            f"(vocab {cfg.tokenizer_vocab_size or 'auto'})"
        )
        tokenizer = train_tokenizer(
            docs,
            cfg.tokenizer_vocab_size,
            cfg.tokenizer_model_type,
            max_bytes=int(cfg.tokenizer_train_mb * 1e6),
        )
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    pieces = []
    for i in tqdm(
        range(0, len(docs), ENCODE_CHUNK), desc="encode", unit="chunk", disable=not verbose
    ):
        for ids in tokenizer.encode_batch(docs[i : i + ENCODE_CHUNK]):
            ids.append(tokenizer.eot_id)
            pieces.append(np.asarray(ids, dtype=dtype))
    stream = np.concatenate(pieces)
    n_val = max(int(len(stream) * cfg.val_fraction), 1)
    splits = {"train": stream[:-n_val], "val": stream[-n_val:]}

    tmp = out_dir.with_name(out_dir.name + f".tmp-{key}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer.save(tmp / "tokenizer.model")
    for name, tokens in splits.items():
        tokens.tofile(tmp / f"{name}.bin")
    meta = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "config": dataclasses.asdict(cfg),
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": np.dtype(dtype).name,
        "documents": len(docs),
        "input_bytes": stats.bytes,
        "files": stats.files,
        "bad_utf8_files": stats.bad_utf8_files,
        "bytes_per_token": round(stats.bytes / max(len(stream), 1), 3),
        "tokenizer_sha256": hashlib.sha256(tokenizer.model_proto).hexdigest(),
        "splits": {name: {"tokens": len(t)} for name, t in splits.items()},
    }
    (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    log(
        f"data: {len(stream):,} tokens ({meta['bytes_per_token']} bytes/token, "
        f"vocab {tokenizer.vocab_size}) → {out_dir} in {time.time() - start:.1f}s"
    )
    if stats.bad_utf8_files:
        log(f"data: {stats.bad_utf8_files} file(s) had invalid UTF-8; bad bytes were replaced")
    return load_dataset(out_dir)
