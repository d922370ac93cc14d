"""Data settings: the `data` section of a config (with its clean, dedup and tokenizer parts)."""

from __future__ import annotations

import dataclasses
import importlib.util
import re

from jaxgpt.config.locations import check_location

NORMALIZATIONS = ("NFC", "NFKC", "none")
TOKENIZER_TYPES = ("bpe", "unigram", "char")
MAX_SHINGLE_SIZE = 8  # word positions jaxgpt.data.dedup has a multiplier for
SPLIT_MODES = ("auto", "document", "tail")
FORMATS = ("text", "sft")
ENGINES = ("local", "ray")
WIKI_PARSERS = ("fast", "mwparserfromhell")  # data.wiki_parser
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}")
# "" (start Ray here), "auto" (the cluster this machine is in), HOST:PORT, or ray://HOST:PORT
RAY_ADDRESS = re.compile(r"(auto|(ray://)?[\w.\-\[\]:]+:\d+)")


@dataclasses.dataclass(frozen=True)
class CleanConfig:
    """How documents are cleaned and filtered; every extra filter defaults to keeping text."""

    normalization: str = "NFC"  # unicodedata form: NFC | NFKC | none
    min_chars: int = 1  # drop documents shorter than this after cleaning
    max_chars: int = 10_000_000  # drop (not truncate) documents longer than this after cleaning
    collapse_spaces: bool = False  # collapse space/tab runs inside a line (indentation kept)
    strip_trailing_whitespace: bool = True  # strip whitespace at the end of every line
    max_blank_lines: int = 2  # longer runs of blank lines shrink to this many; -1 keeps all
    strip_blank_edges: bool = True  # drop blank lines at the start and end of a document
    min_words: int = 0  # drop documents with fewer whitespace-separated words
    max_line_chars: int = 0  # drop documents with a longer line (minified code, blobs); 0: off
    max_replacement_fraction: float = 1.0  # drop if more of the chars are U+FFFD (bad decoding)

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"data.clean.normalization={self.normalization!r} is not one of {NORMALIZATIONS}"
            )
        if self.min_chars < 0 or self.max_chars < self.min_chars:
            raise ValueError(
                "data.clean: need 0 <= min_chars <= max_chars, "
                f"got {self.min_chars}, {self.max_chars}"
            )
        if self.max_blank_lines < -1:
            raise ValueError(
                f"data.clean.max_blank_lines must be >= -1, got {self.max_blank_lines}"
            )
        if self.min_words < 0 or self.max_line_chars < 0:
            raise ValueError("data.clean.min_words and data.clean.max_line_chars must be >= 0")
        if not 0.0 <= self.max_replacement_fraction <= 1.0:
            raise ValueError(
                "data.clean.max_replacement_fraction must be in [0, 1], "
                f"got {self.max_replacement_fraction}"
            )


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """Quality filters for web text (jaxgpt/data/quality.py); each one off by default."""

    gopher_repetition: bool = False  # drop text with repeated lines, paragraphs or n-grams
    gopher_quality: bool = False  # drop by word count, word length, symbols, bullets, stop words
    c4: bool = False  # remove C4's bad lines; drop "lorem ipsum", "{", < 5 sentences
    fineweb: bool = False  # drop by FineWeb's line punctuation, short lines, repeats, newlines
    language: bool = False  # drop text whose detected language is not in `languages`
    languages: str = "en"  # comma-separated ISO 639-1 codes kept by the language filter
    max_rank: int = 1200  # language filter: drop above this out-of-place rank (unsure)

    @property
    def enabled(self) -> bool:
        return any((self.gopher_repetition, self.gopher_quality, self.c4, self.fineweb,
                    self.language))  # fmt: skip

    @property
    def language_codes(self) -> tuple[str, ...]:
        return tuple(c.strip().lower() for c in self.languages.split(",") if c.strip())

    def __post_init__(self):
        bad = [c for c in self.language_codes if not LANGUAGE_CODE.fullmatch(c)]
        if bad or not self.language_codes:
            raise ValueError(
                f"data.quality.languages={self.languages!r} must be comma-separated ISO 639-1 "
                'codes such as "en" or "en,de,fr"'
            )
        if self.max_rank <= 0:
            raise ValueError(f"data.quality.max_rank must be positive, got {self.max_rank}")
        if self.language and importlib.util.find_spec("resiliparse") is None:
            raise ImportError(
                "data.quality.language needs Resiliparse, which is not installed here: "
                "pip install 'jaxgpt[web]'  (or: pip install \"resiliparse>=2,<3\")"
            )


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    """Which duplicates to remove and how near counts as near."""

    exact: bool = True  # drop copies equal after casefolding and collapsing whitespace
    near: bool = True  # drop documents similar to an earlier kept one (MinHash LSH)
    threshold: float = 0.8  # estimated Jaccard similarity of word shingles that counts as near
    num_perm: int = 128  # MinHash permutations: more is more accurate and slower
    shingle_size: int = 5  # words per shingle
    seed: int = 1  # MinHash permutation seed; fixed so the kept set is reproducible

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"data.dedup.threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 2:
            raise ValueError(f"data.dedup.num_perm must be >= 2, got {self.num_perm}")
        if not 1 <= self.shingle_size <= MAX_SHINGLE_SIZE:
            raise ValueError(
                f"data.dedup.shingle_size must be in [1, {MAX_SHINGLE_SIZE}], "
                f"got {self.shingle_size}"
            )


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """The tokenizer a data dir is encoded with: trained here, or an existing one (path)."""

    model_type: str = "bpe"  # SentencePiece model trained when path is "": bpe | unigram | char
    vocab_size: int = 50257  # target vocabulary size, special tokens included (char: 0 = exact)
    train_mb: float = 20.0  # megabytes of training text sampled to train it
    path: str = ""  # an existing SentencePiece .model or HF tokenizer.json
    eot_token: str = ""  # tokenizer.json: end-of-text token ("" = find a usual one)

    def __post_init__(self):
        if self.model_type not in TOKENIZER_TYPES:
            raise ValueError(
                f"data.tokenizer.model_type={self.model_type!r} is not one of {TOKENIZER_TYPES}"
            )
        if self.vocab_size < 0:
            raise ValueError(f"data.tokenizer.vocab_size must be >= 0, got {self.vocab_size}")
        check_location(self.path, "data.tokenizer.path")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Data settings; see configs/base.py for the meaning of each field."""

    sources: str = "stdlib"
    format: str = "text"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    path: str = ""
    text_split: str = "file"
    jsonl_field: str = "text"
    tfds_data_dir: str = ""
    tfds_text_field: str = "text"
    parquet_column: str = "text"
    hf_split: str = "train"
    hf_field: str = "text"
    wiki_parser: str = "fast"
    detect_encoding: bool = False
    stdlib_max_mb: float = 8.0
    val_fraction: float = 0.1
    split: str = "auto"
    strict: bool = False
    shard_mb: float = 256.0
    workers: int = 0
    engine: str = "local"
    ray_address: str = ""
    clean: CleanConfig = dataclasses.field(default_factory=CleanConfig)
    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    dedup: DedupConfig = dataclasses.field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)

    def __post_init__(self):
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.split not in SPLIT_MODES:
            raise ValueError(f"data.split={self.split!r} is not one of {SPLIT_MODES}")
        if self.format not in FORMATS:
            raise ValueError(f"data.format={self.format!r} is not one of {FORMATS}")
        if self.shard_mb <= 0:
            raise ValueError(f"data.shard_mb must be positive, got {self.shard_mb}")
        check_location(self.path, "data.path")
        check_location(self.tfds_data_dir, "data.tfds_data_dir", remote_ok=False)
        self._check_engine()
        if self.wiki_parser not in WIKI_PARSERS:
            raise ValueError(f"data.wiki_parser={self.wiki_parser!r} is not one of {WIKI_PARSERS}")
        for key in ("parquet_column", "hf_split", "hf_field"):
            if not getattr(self, key):
                raise ValueError(f"data.{key} is empty: name the column, split or field to read")

    def _check_engine(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"data.engine={self.engine!r} is not one of {ENGINES}")
        if self.ray_address and not RAY_ADDRESS.fullmatch(self.ray_address):
            raise ValueError(
                f'data.ray_address={self.ray_address!r} is not "" (start Ray on this machine), '
                '"auto" (the cluster this machine belongs to), HOST:PORT or ray://HOST:PORT'
            )
        if self.ray_address and self.engine != "ray":
            raise ValueError(
                f"data.ray_address={self.ray_address!r} is set but data.engine={self.engine!r}: "
                "set data.engine=ray to prepare on that cluster, or clear data.ray_address"
            )
