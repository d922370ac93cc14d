"""SentencePiece tokenizer: trained on the corpus (bpe, unigram or char) with byte fallback."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

MODEL_TYPES = ("bpe", "unigram", "char")
UNK_ID, BOS_ID, EOT_ID = 0, 1, 2
N_BYTE_PIECES = 256
# unk, bos, eos(=end of text) and the newline piece come on top of the learned pieces.
N_SPECIAL = 4


class Tokenizer:
    """Encode/decode text; EOT (SentencePiece's eos) separates documents in token streams."""

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model {path} does not exist")
        return cls(path.read_bytes())

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.model_proto)

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
    n_chars = len(set().union(*map(set, lines)))
    minimum = n_chars + N_SPECIAL + N_BYTE_PIECES
    if model_type == "char" and not vocab_size:
        vocab_size = minimum
    elif vocab_size < minimum:
        raise ValueError(
            f"data.tokenizer.vocab_size={vocab_size} is too small: this corpus has {n_chars} "
            f"distinct characters, so at least {minimum} are needed (characters + {N_SPECIAL} "
            f"special + {N_BYTE_PIECES} byte pieces)"
        )
    writer = io.BytesIO()
    try:
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
    except RuntimeError as e:
        if "Vocabulary size too high" in str(e) or "Vocabulary size is too high" in str(e):
            raise ValueError(
                f"data.tokenizer.vocab_size={vocab_size} is too large for this corpus "
                f"({sum(map(len, lines)):,} characters of training text): {e}. "
                "Lower data.tokenizer.vocab_size or add more text."
            ) from e
        raise
    return Tokenizer(writer.getvalue())
