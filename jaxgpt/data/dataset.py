"""A prepared data dir: its settings (DataConfig), its identity (dataset_key) and its contents.

Layout of a data dir (written by jaxgpt.data.build):
    train.jsonl, val.jsonl        cleaned, deduplicated documents, one {"text": ...} per line
    tokenizer.model | .json       SentencePiece model, or a Hugging Face tokenizer.json
    train-00000.bin, ...          token shards (uint16 or uint32), EOT after every document
    val-00000.bin, ...
    metadata.json                 sources, settings, key, tokenizer hash, counts per shard, and
                                  the size of every file above ("files"): written last, it marks
                                  the dir complete
    report.txt                    what happened, for people

A data dir may also be a gs:// or s3:// prefix (data/remote.py): the same objects, listed
rather than stat'ed, and read by byte ranges.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from jaxgpt.config import AnyPath, is_remote, location
from jaxgpt.config.data import DataConfig
from jaxgpt.data import inputs, remote
from jaxgpt.data import sources as sources_lib
from jaxgpt.data.shards import TokenStream
from jaxgpt.data.tokenizer import tokenizer_from_bytes

FORMAT_VERSION = 3
SPLITS = ("train", "val")
# The knobs of clean/dedup/tokenizer that data dirs were keyed by before those sections were
# nested, under their old flat names; later knobs join the key only when set off their default.
KEYED_SECTIONS = {
    "clean": ("normalization", "min_chars", "max_chars"),
    "dedup": ("exact", "near", "threshold"),
    "tokenizer": ("model_type", "vocab_size", "train_mb", "path", "eot_token"),
    "quality": (),  # data.quality: each filter joins the key when switched on
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a prepared data dir holds (from its metadata.json)."""

    path: AnyPath  # pathlib.Path, or etils.epath.Path for a bucket
    vocab_size: int
    eot_id: int
    dtype: str
    tokenizer_file: str
    shards: dict[str, list[dict]]
    documents: dict[str, int]
    eot_token: str = ""
    format: str = "text"  # "sft": examples with uncounted prompt tokens (data/sft.py)

    @property
    def tokenizer_path(self) -> AnyPath:
        return self.path / self.tokenizer_file

    @property
    def train_tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards["train"])

    @property
    def val_tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards["val"])

    def tokens(self, split: str) -> TokenStream:
        """The split's token stream: memory-mapped local shards, or ranged reads of bucket ones
        (sized from metadata.json, so opening it makes no request)."""
        shards = self.shards[split]
        files = [self.path / s["file"] for s in shards]
        return TokenStream(files, self.dtype, [s["tokens"] for s in shards])

    def tokenizer(self):
        data = self.tokenizer_path.read_bytes()
        return tokenizer_from_bytes(self.tokenizer_file, data, self.eot_token)


def source_fingerprint(cfg: DataConfig) -> list:
    """Paths, sizes and mtimes (bucket objects: generation or ETag) of every input, so edited
    inputs trigger a rebuild."""
    prints: list = []
    for source in sources_lib.parse_sources(cfg.sources):
        if source.kind == "stdlib":
            prints.append(["stdlib", sys.version])
        elif source.kind == "shakespeare":
            digest = hashlib.sha256(sources_lib.SHAKESPEARE.read_bytes()).hexdigest()
            prints.append(["shakespeare", digest])
        elif source.kind == "tfds":
            data_dir = cfg.tfds_data_dir or os.environ.get("TFDS_DATA_DIR", "")
            prints.append(["tfds", source.path, data_dir])
        else:
            prints.extend(inputs.file_fingerprints(source))
    if cfg.tokenizer.path:
        digest = hashlib.sha256(_tokenizer_bytes(cfg.tokenizer.path)).hexdigest()
        prints.append(["tokenizer", digest])
    return prints


def _tokenizer_bytes(path: str) -> bytes:
    tokenizer = location(path, "data.tokenizer.path")
    if not is_remote(tokenizer):
        return tokenizer.read_bytes()
    data = remote.read_object(tokenizer)
    if data is None:
        raise FileNotFoundError(f"data.tokenizer.path={path} does not exist")
    return data


def dataset_key(cfg: DataConfig) -> str:
    """Hash of everything that decides a data dir's contents (not where it lives)."""
    settings = key_settings(cfg)
    blob = json.dumps([FORMAT_VERSION, settings, source_fingerprint(cfg)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Where and how fast the data is prepared, not what it is: never part of the key.
NOT_KEYED = ("path", "workers", "engine", "ray_address")
# Top-level knobs added after data dirs were keyed: they join the key only when set off their
# default, so a data dir prepared before they existed is still current.
NEWER_FIELDS = ("parquet_column", "hf_split", "hf_field", "wiki_parser", "detect_encoding")


def key_settings(cfg: DataConfig) -> dict:
    """The settings a data dir's key hashes, flat as before the config was nested, so a data
    dir prepared then from the same settings is still current."""
    sections = {f: getattr(cfg, f) for f in KEYED_SECTIONS}
    settings = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in (*sections, *NOT_KEYED)
        and not (f.name in NEWER_FIELDS and getattr(cfg, f.name) == f.default)
    }
    for name, section in sections.items():
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if f.name in KEYED_SECTIONS[name] or value != f.default:
                settings[f"{name}_{f.name}"] = value
    return settings


def read_metadata(path: str | AnyPath) -> dict | None:
    meta_path = location(path, "data.path") / "metadata.json"
    if is_remote(meta_path):
        data = remote.read_object(meta_path)
    else:
        data = meta_path.read_bytes() if meta_path.is_file() else None
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as e:
        raise ValueError(
            f"{meta_path} is not valid JSON ({e}): a copy that did not finish? "
            "Rebuild the data dir with python -m jaxgpt.prepare"
        ) from None


def missing_part(path: AnyPath, meta: dict) -> str | None:
    """A file of the data dir that is missing or not the size metadata.json says (None: all
    there). Dirs from before the "files" list are checked by their shards' token counts. A
    bucket's sizes come from one listing."""
    sizes = meta.get("files")
    if sizes is None:
        itemsize = np.dtype(meta["dtype"]).itemsize
        shards = [s for split in SPLITS for s in meta["splits"][split]["shards"]]
        sizes = {s["file"]: s["tokens"] * itemsize for s in shards}
    present = remote.object_sizes(path) if is_remote(path) else _LocalSizes(path)
    for name, size in sizes.items():
        found = present.get(name)
        if found is None:
            return f"{name} is missing"
        if found != size:
            return f"{name} is {found:,} bytes, metadata.json says {size:,}"
    return None


class _LocalSizes:
    """A local dir's file sizes, looked up one file at a time (the dict interface of
    remote.object_sizes)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def get(self, name: str) -> int | None:
        f = self.path / name
        return f.stat().st_size if f.is_file() else None


def load_dataset(path: str | AnyPath) -> DatasetInfo:
    """Open a prepared data dir (local or in a bucket); a dir without metadata.json, or missing
    part of what it lists, is not a finished dataset."""
    path = location(path, "data.path")
    meta = read_metadata(path)
    if meta is None:
        raise FileNotFoundError(
            f"{path} is not a prepared data dir ({path / 'metadata.json'} is missing); "
            "run python -m jaxgpt.prepare"
        )
    problem = missing_part(path, meta)
    if problem:
        raise FileNotFoundError(
            f"{path} is an incomplete data dir ({problem}); rebuild it with python -m "
            "jaxgpt.prepare"
        )
    return DatasetInfo(
        path=path,
        vocab_size=meta["vocab_size"],
        eot_id=meta["eot_id"],
        dtype=meta["dtype"],
        tokenizer_file=meta["tokenizer_file"],
        shards={split: meta["splits"][split]["shards"] for split in SPLITS},
        documents={split: meta["splits"][split]["documents"] for split in SPLITS},
        eot_token=_eot_token(meta["config"]),
        format=meta.get("format", "text"),
    )


def _eot_token(settings: dict) -> str:
    """data.tokenizer.eot_token from a metadata.json's config, nested (now) or flat (before)."""
    if isinstance(settings.get("tokenizer"), dict):
        return settings["tokenizer"].get("eot_token", "")
    return settings.get("tokenizer_eot_token", "")


def stale_reason(path: str | AnyPath, cfg: DataConfig) -> str | None:
    """Why the data dir at path is not the one cfg describes, complete; None when it is."""
    path = location(path, "data.path")
    if not (remote.object_sizes(path) if is_remote(path) else path.exists()):
        return f"{path} does not exist"
    try:
        meta = read_metadata(path)
    except ValueError:
        return f"{path / 'metadata.json'} is not valid JSON (a copy that did not finish?)"
    if meta is None:
        return f"{path} has no metadata.json (a build or copy that did not finish)"
    if meta.get("key") != dataset_key(cfg):
        return f"{path} was built from other inputs or settings"
    problem = missing_part(path, meta)
    return f"{path} is incomplete ({problem})" if problem else None


def is_current(path: str | AnyPath, cfg: DataConfig) -> bool:
    return stale_reason(path, cfg) is None
