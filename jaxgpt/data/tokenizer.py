"""SentencePiece tokenizer: trained on the corpus (bpe, unigram or char) with byte fallback."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator

import sentencepiece as spm

from jaxgpt.config import AnyPath, location
from jaxgpt.config.data import TOKENIZER_TYPES, TokenizerConfig

MODEL_TYPES = TOKENIZER_TYPES
UNK_ID, BOS_ID, EOT_ID = 0, 1, 2
N_BYTE_PIECES = 256
# unk, bos, eos(=end of text) and the newline piece come on top of the learned pieces.
N_SPECIAL = 4


class Tokenizer:
    """SentencePiece tokenizer; EOT (SentencePiece's eos) separates documents in token streams."""

    filename = "tokenizer.model"

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def load(cls, path: str | AnyPath) -> Tokenizer:
        path = location(path, "tokenizer")
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model {path} does not exist")
        return cls(path.read_bytes())

    def save(self, path: str | AnyPath) -> None:
        location(path, "tokenizer").write_bytes(self.model_proto)

    @property
    def proto(self) -> bytes:
        """The serialized model, for hashing and for shipping to worker processes."""
        return self.model_proto

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    @property
    def eot_id(self) -> int:
        return self.sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


def _sentences(docs: Iterable[str], max_bytes: int) -> Iterator[str]:
    # SentencePiece trains on lines; newline itself is a user-defined piece so it encodes as one
    # token rather than as a byte.
    seen = 0
    for doc in docs:
        for line in doc.split("\n"):
            if line:
                seen += len(line.encode()) + 1
                yield line
            if seen >= max_bytes:
                return


def train_tokenizer(
    docs: Iterable[str], vocab_size: int, model_type: str = "bpe", max_bytes: int = 20_000_000
) -> Tokenizer:
    """Train a SentencePiece model on (up to max_bytes of) docs.

    Text is kept exactly (identity normalization, no dummy prefix, whitespace kept) so that
    decode(encode(text)) == text for any input, code and indentation included; characters outside
    the vocabulary fall back to UTF-8 bytes instead of <unk>. For model_type "char", vocab_size 0
    means exactly the characters seen.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"data.tokenizer.model_type={model_type!r} is not one of {MODEL_TYPES}")
    lines = list(_sentences(docs, max_bytes))
    if not lines:
        raise ValueError("no text to train the tokenizer on (all documents are empty)")
    vocab_size = _checked_vocab_size(lines, vocab_size, model_type)
    try:
        model_proto = _train_sentencepiece(lines, vocab_size, model_type)
    except RuntimeError as e:
        if "Vocabulary size too high" in str(e) or "Vocabulary size is too high" in str(e):
            raise _vocab_too_large(e, vocab_size, lines) from e
        raise
    return Tokenizer(model_proto)


def _checked_vocab_size(lines: list[str], vocab_size: int, model_type: str) -> int:
    """vocab_size, or for "char" with 0 the exact size; fails when it cannot hold every
    character seen plus the special and byte pieces."""
    n_chars = len(set().union(*map(set, lines)))
    minimum = n_chars + N_SPECIAL + N_BYTE_PIECES
    if model_type == "char" and not vocab_size:
        return minimum
    if vocab_size < minimum:
        raise ValueError(
            f"data.tokenizer.vocab_size={vocab_size} is too small: this corpus has {n_chars} "
            f"distinct characters, so at least {minimum} are needed (characters + {N_SPECIAL} "
            f"special + {N_BYTE_PIECES} byte pieces)"
        )
    return vocab_size


def _train_sentencepiece(lines: list[str], vocab_size: int, model_type: str) -> bytes:
    """The serialized SentencePiece model, with the options that keep text exact."""
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=writer,
        model_type=model_type,
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0 if model_type == "char" else 0.9995,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        user_defined_symbols=["\n"],
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOT_ID,
        pad_id=-1,
        max_sentence_length=16384,
        num_threads=2,
        hard_vocab_limit=model_type != "char",
        minloglevel=2,
    )
    return writer.getvalue()


def _vocab_too_large(e: RuntimeError, vocab_size: int, lines: list[str]) -> ValueError:
    """SentencePiece's "vocabulary size too high" as a message that names the flag to change
    and, when SentencePiece says it, the largest size this corpus allows."""
    largest = re.search(r"<= (\d+)", str(e))
    limit = f"at most {largest.group(1)}" if largest else "fewer"
    return ValueError(
        f"data.tokenizer.vocab_size={vocab_size} is too large for this corpus: {limit} "
        f"pieces can be learned from its {sum(map(len, lines)):,} characters of "
        f"training text. Set data.tokenizer.vocab_size to {limit.removeprefix('at most ')}"
        " or less, or add more text."
    )


EOT_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")


class HFTokenizer:
    """A Hugging Face tokenizer.json (e.g. GPT-2's byte-level BPE) behind the same interface."""

    filename = "tokenizer.json"

    def __init__(self, json_text: str, eot_token: str = ""):
        from tokenizers import Tokenizer as HFBackend

        self.json_text = json_text
        self.eot_token = eot_token
        self.tk = HFBackend.from_str(json_text)
        names = (eot_token,) if eot_token else EOT_NAMES
        ids = [self.tk.token_to_id(n) for n in names]
        found = [i for i in ids if i is not None]
        if not found:
            raise ValueError(
                f"tokenizer.json has no end-of-text token (looked for {names}); "
                "name it with data.tokenizer.eot_token"
            )
        self._eot = found[0]
        # Text that merely spells a special token (a document quoting "<|endoftext|>") must stay
        # text: only the pipeline inserts EOT, between documents.
        self.tk.encode_special_tokens = True

    @classmethod
    def load(cls, path: str | AnyPath, eot_token: str = "") -> HFTokenizer:
        path = location(path, "tokenizer")
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        return cls(path.read_bytes().decode("utf-8"), eot_token)

    def save(self, path: str | AnyPath) -> None:
        location(path, "tokenizer").write_bytes(self.json_text.encode("utf-8"))

    @property
    def proto(self) -> bytes:
        return self.json_text.encode()

    @property
    def vocab_size(self) -> int:
        # Largest id + 1, not the entry count: ids may have gaps, and tables are indexed by id.
        return max(self.tk.get_vocab(with_added_tokens=True).values()) + 1

    @property
    def eot_id(self) -> int:
        return self._eot

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=False)


def load_tokenizer(path: str | AnyPath, eot_token: str = "") -> Tokenizer | HFTokenizer:
    """tokenizer.json → Hugging Face tokenizers; anything else → SentencePiece model. A gs:// or
    s3:// path is read from its bucket."""
    if str(path).endswith(".json"):
        return HFTokenizer.load(path, eot_token)
    return Tokenizer.load(path)


def tokenizer_from_bytes(
    filename: str, data: bytes, eot_token: str = ""
) -> Tokenizer | HFTokenizer:
    """Rebuild a tokenizer in a worker process from its file name and bytes."""
    if filename.endswith(".json"):
        return HFTokenizer(data.decode(), eot_token)
    return Tokenizer(data)


def make_tokenizer(cfg: TokenizerConfig, sample: Iterable[str]) -> Tokenizer | HFTokenizer:
    """The data dir's tokenizer: the one at cfg.path, else one trained on `sample`."""
    if cfg.path:
        return load_tokenizer(cfg.path, cfg.eot_token)
    return train_tokenizer(sample, cfg.vocab_size, cfg.model_type, int(cfg.train_mb * 1e6))
