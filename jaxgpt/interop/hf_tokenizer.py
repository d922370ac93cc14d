"""Our tokenizers as Hugging Face tokenizer folders that `AutoTokenizer` loads offline.

A SentencePiece model (identity normalization, no dummy prefix, byte fallback, "\\n" as a
user-defined piece) becomes a `tokenizers` pipeline that gives the same ids: spaces → "▁",
no pre-tokenization, a BPE (merges ranked by SentencePiece's piece scores), Unigram (the same
scores) or char (BPE without merges) model with byte fallback, and user-defined pieces as added
tokens. A tokenizer.json is copied as it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

# sentencepiece_model.proto: TrainerSpec.ModelType and SentencePiece.Type.
_UNIGRAM, _BPE, _WORD, _CHAR = 1, 2, 3, 4
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
# Unigram's lattice would match control and byte pieces spelled out in text ("<s>", "<0x41>"),
# which SentencePiece never does: they get a score that loses to any segmentation of known
# characters. (Renaming them is no way out: added tokens would then get new ids, and byte
# fallback looks byte pieces up by name.)
_NEVER = -1e9
_SPACE = "▁"


def _proto(model_bytes: bytes):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto


def _check_supported(proto) -> None:
    """Refuse settings the pipeline below does not reproduce, instead of tokenizing differently."""
    norm, trainer = proto.normalizer_spec, proto.trainer_spec
    problems = []
    if norm.name not in ("identity", "") or norm.precompiled_charsmap:
        problems.append(f"normalization {norm.name!r} (only identity is converted)")
    if norm.add_dummy_prefix:
        problems.append("add_dummy_prefix=True")
    if norm.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces=True")
    if not norm.escape_whitespaces:
        problems.append("escape_whitespaces=False")
    if trainer.treat_whitespace_as_suffix:
        problems.append("treat_whitespace_as_suffix=True")
    if trainer.model_type not in (_UNIGRAM, _BPE, _CHAR):
        problems.append(f"model_type {trainer.model_type} (only unigram, bpe and char)")
    if problems:
        raise ValueError(
            "cannot convert this SentencePiece model to a Hugging Face tokenizer exactly: "
            + "; ".join(problems)
        )


def _bpe_merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """Every split of a normal piece into two normal pieces, ranked by the merged piece's score.

    SentencePiece's BPE encoder repeatedly joins the adjacent pair whose concatenation is the
    highest-scoring piece; ranking merges by that score makes `tokenizers`' BPE do the same.
    """
    normal = {p: i for i, (p, _, kind) in enumerate(pieces) if kind == _NORMAL}
    ranked = []
    for piece, i in normal.items():
        score = pieces[i][1]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, i, normal[left], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def sentencepiece_to_tokenizers(model_bytes: bytes) -> Tokenizer:
    """A `tokenizers.Tokenizer` that encodes and decodes like the SentencePiece model."""
    proto = _proto(model_bytes)
    _check_supported(proto)
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    model_type = proto.trainer_spec.model_type
    unk = next((p for p, _, kind in pieces if kind == _UNKNOWN), None)
    if model_type == _UNIGRAM:
        vocab = [(p, s if kind in (_NORMAL, _USER_DEFINED) else _NEVER) for p, s, kind in pieces]
        unk_id = next(i for i, (_, _, kind) in enumerate(pieces) if kind == _UNKNOWN)
        model = models.Unigram(vocab, unk_id=unk_id, byte_fallback=proto.trainer_spec.byte_fallback)
    else:
        vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
        merges = _bpe_merges(pieces) if model_type == _BPE else []
        model = models.BPE(
            vocab,
            merges,
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=proto.trainer_spec.byte_fallback,
        )
    tk = Tokenizer(model)
    tk.normalizer = normalizers.Replace(" ", _SPACE)
    tk.decoder = decoders.Sequence(
        [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    # User-defined pieces are matched in the text before segmentation, as SentencePiece does;
    # control pieces are registered as special so decoding can skip them.
    tk.add_tokens(
        [
            AddedToken(p, special=False, normalized=False)
            for p, _, kind in pieces
            if kind == _USER_DEFINED
        ]
    )
    tk.add_special_tokens(
        [
            AddedToken(p, special=True, normalized=False)
            for p, _, kind in pieces
            if kind in (_CONTROL, _UNKNOWN)
        ]
    )
    return tk


def write_hf_tokenizer(
    source: str | Path, out_dir: str | Path, eot_id: int, model_max_length: int
) -> None:
    """Write tokenizer.json + tokenizer_config.json for our tokenizer.model or tokenizer.json."""
    source, out_dir = Path(source), Path(out_dir)
    if source.suffix == ".json":
        shutil.copyfile(source, out_dir / "tokenizer.json")
        eot = Tokenizer.from_file(str(source)).id_to_token(eot_id)
        unk = eot  # GPT-2's convention: one end-of-text token for everything
    else:
        data = source.read_bytes()
        sentencepiece_to_tokenizers(data).save(str(out_dir / "tokenizer.json"))
        proto = _proto(data)
        eot = proto.pieces[eot_id].piece
        unk_id = proto.trainer_spec.unk_id
        unk = proto.pieces[unk_id].piece if unk_id >= 0 else None
    # Documents in our token streams start after an EOT (SentencePiece's <s> never occurs in
    # them), so EOT is the bos token too, as in GPT-2.
    specials = {"bos_token": eot, "eos_token": eot, "unk_token": unk}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{k: v for k, v in specials.items() if v is not None},
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        # Our token streams hold EOT only between documents: text that spells a special token
        # ("</s>", "<|endoftext|>") was encoded as ordinary text, and must be here too.
        "split_special_tokens": True,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
