"""End-to-end tests of prepare_dataset/build_dataset: mixed sources, existing tokenizers,
determinism, uint32 shards and resumable, process-sharded training batches.

Every input is built here (nothing is downloaded): a text folder, a .jsonl.gz with bad lines, a
hand-written MediaWiki export, a WET file written with warcio, and tokenizers trained in the test.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from data_inputs import (
    WIKI_TEXTS,
    decoded_documents,
    jsonl_texts,
    wiki_xml,
    write_docs,
    write_wet,
)

from jaxgpt.config.data import TokenizerConfig
from jaxgpt.data.build import build_dataset, prepare_dataset
from jaxgpt.data.clean import CleanConfig, clean_text
from jaxgpt.data.dataset import DataConfig, is_current, key_settings, load_dataset
from jaxgpt.data.pipeline import TrainBatches
from jaxgpt.data.shards import ShardWriter, TokenStream, token_dtype
from jaxgpt.data.tokenizer import train_tokenizer

_WORD_LIST = (
    "the of and river stone light harbor window morning silver garden quiet letter engine "
    "mountain paper story winter voice market bridge candle forest signal copper orchard "
    "thunder lantern meadow compass velvet anchor naïve café 東京 jalapeño über déjà"
)
WORDS = _WORD_LIST.split()


def prose(seed: int, n_words: int) -> str:
    """Deterministic pseudo-random text: word 5-grams rarely repeat across seeds."""
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(n_words)]
    for i in range(11, n_words, 12):
        words[i] += "." if i % 5 else ".\n"
    return " ".join(words).replace("\n ", "\n")


def assert_shards_match_jsonl(info) -> None:
    for split in ("train", "val"):
        assert decoded_documents(info, split) == jsonl_texts(info.path / f"{split}.jsonl"), split


# ---------------------------------------------------------------- inputs of every kind

WIKI_MARKUP = ("{{", "}}", "[[", "]]", "'''", "''", "<ref", "==", "__TOC__", "Category:", "{|")


DUP_PARAGRAPH = "The Quick brown fox\njumps over the lazy dog, and the dog does not mind at all."
DUP_VARIANT = (
    "  the quick   BROWN fox jumps over THE lazy dog,\tand the dog does not mind at ALL.  "
)
LONG_DOC = prose(1, 300)


def near_copy(text: str) -> str:
    """text with two words (far apart) replaced."""
    words = text.split(" ")
    words[40], words[220] = "zounds", "gadzooks"
    return " ".join(words)


CODE_DOC = "def greet(name):\n    # naïve 東京\n    return f'hello {name}'\n"
JSONL_GOOD = [prose(10 + i, 40 + 10 * i) for i in range(3)]
JSONL_LINES = [  # (raw line, kept text or None, counter, reason)
    (json.dumps({"text": JSONL_GOOD[0], "id": 1}).encode(), JSONL_GOOD[0], None, None),
    (json.dumps({"text": DUP_VARIANT}).encode(), DUP_VARIANT, None, None),
    (b'{"text": "unterminated', None, "bad_json_lines", "invalid JSON"),
    (json.dumps({"text": JSONL_GOOD[1]}).encode(), JSONL_GOOD[1], None, None),
    (b'{"body": "the text is under another field"}', None, "missing_field_lines", "no 'text'"),
    (b'{"text": "caf\xe9 au lait, served with toast"}', None, "bad_utf8_lines", "not valid UTF-8"),
    (b'["a", "list", "not", "an", "object"]', None, "bad_json_lines", "not a JSON object"),
    (json.dumps({"text": JSONL_GOOD[2]}, ensure_ascii=False).encode(), JSONL_GOOD[2], None, None),
]
BAD_UTF8_TEXT = "caf\ufffd au lait, served with toast"
WET_RECORDS = [
    ("https://example.com/a", prose(20, 60) + "\n"),
    ("https://example.org/near", near_copy(LONG_DOC) + "\n"),
    ("https://example.net/c", "Zweite Seite: naïve 東京\nmit zwei Zeilen.\n"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """One input of each kind, with planted bad lines, an exact and a near duplicate."""
    root = tmp_path_factory.mktemp("inputs")
    text = root / "text"
    text.mkdir()
    (text / "a_paragraph.txt").write_text(DUP_PARAGRAPH + "\n")
    (text / "b_long.txt").write_text(LONG_DOC + "\n")
    (text / "c_code.md").write_text(CODE_DOC)
    jsonl = root / "docs.jsonl.gz"
    jsonl.write_bytes(gzip.compress(b"".join(line + b"\n" for line, *_ in JSONL_LINES)))
    wiki = root / "enwiki-pages.xml"
    wiki.write_bytes(wiki_xml())
    wet = write_wet(root / "crawl.warc.wet.gz", WET_RECORDS)
    return {"root": root, "text": text, "jsonl": jsonl, "wiki": wiki, "wet": wet}


def mixed_spec(corpus: dict[str, Path]) -> str:
    return ",".join(f"{kind}:{corpus[kind]}" for kind in ("text", "jsonl", "wiki", "wet"))


def mixed_config(corpus: dict[str, Path], **overrides) -> DataConfig:
    settings = dict(
        sources=mixed_spec(corpus),
        tokenizer=TokenizerConfig(model_type="char", vocab_size=0),
        workers=1,
    )
    return DataConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def mixed(corpus, tmp_path_factory):
    """The mixed corpus prepared once (char tokenizer): its DatasetInfo and metadata."""
    out = tmp_path_factory.mktemp("mixed") / "data"
    info = prepare_dataset(mixed_config(corpus), out, verbose=False)
    return info, json.loads((out / "metadata.json").read_text())


# ---------------------------------------------------------------- 1. mixed sources


def expected_documents() -> list[str]:
    """What survives reading, cleaning and dedup, in spec order (text, jsonl, wiki, wet)."""
    kept = [DUP_PARAGRAPH, LONG_DOC, CODE_DOC]  # text files, sorted by name
    kept += [JSONL_GOOD[0], JSONL_GOOD[1], BAD_UTF8_TEXT, JSONL_GOOD[2]]  # DUP_VARIANT: exact dup
    kept += WIKI_TEXTS
    kept += [WET_RECORDS[0][1], WET_RECORDS[2][1]]  # the near copy of LONG_DOC is dropped
    return [clean_text(doc, CleanConfig()) for doc in kept]


def test_mixed_sources_counts_and_dedup(corpus, mixed):
    """Per-source document counts, skipped wiki pages, and both planted duplicates removed."""
    _, meta = mixed
    read = meta["read"]
    assert read["docs_by_source"] == {
        f"text:{corpus['text']}": 3,
        f"jsonl:{corpus['jsonl']}": 5,  # 4 good lines + the repaired bad-UTF-8 line
        f"wiki:{corpus['wiki']}": 2,  # redirect, Talk page and empty stub skipped
        f"wet:{corpus['wet']}": 3,
    }
    assert read["documents"] == 13 and read["files"] == 6
    assert read["skipped"] == {"wiki_redirect": 1, "wiki_namespace": 1, "empty": 1}
    assert meta["dedup"]["documents_in"] == 13
    assert meta["dedup"]["exact_duplicates"] == 1 and meta["dedup"]["near_duplicates"] == 1
    assert meta["dedup"]["documents_out"] == 11


def test_mixed_sources_bad_lines_reported(corpus, mixed):
    """Bad JSONL lines are counted by kind and listed as file:line in metadata and report.txt."""
    info, meta = mixed
    read = meta["read"]
    assert read["bad_json_lines"] == 2
    assert read["missing_field_lines"] == 1
    assert read["bad_utf8_lines"] == 1
    bad = [(n, reason) for n, (_, _, counter, reason) in enumerate(JSONL_LINES, 1) if counter]
    assert read["problem_count"] == len(read["problems"]) == len(bad)
    for problem, (lineno, reason) in zip(read["problems"], bad, strict=True):
        assert problem.startswith(f"{corpus['jsonl']}:{lineno}: {reason}"), problem
    report = (info.path / "report.txt").read_text()
    for problem in read["problems"]:
        assert problem in report
    for counter, n in (("bad_json_lines", 2), ("missing_field_lines", 1), ("bad_utf8_lines", 1)):
        assert re.search(counter.replace("_", "[ _]") + rf":?\s+{n}\b", report), counter
    assert "1 exact and 1 near duplicates removed; 11 documents left" in report


def test_mixed_sources_jsonl_and_shards_agree(mixed):
    """JSONL holds the cleaned, deduplicated documents (no wikitext); shards decode to it."""
    info, meta = mixed
    train = jsonl_texts(info.path / "train.jsonl")
    val = jsonl_texts(info.path / "val.jsonl")
    # Under 100 documents: the tail of every document is held out, in order.
    assert [a + b for a, b in zip(train, val, strict=True)] == expected_documents()
    assert meta["splits"]["train"]["documents"] == len(train) == 11
    for text in train + val:
        for markup in WIKI_MARKUP:
            assert markup not in text, markup
    assert_shards_match_jsonl(info)
    for split in ("train", "val"):
        assert len(info.tokens(split)) == meta["splits"][split]["tokens"]


def test_mixed_sources_strict_fails_cleanly(corpus, tmp_path):
    """strict=True fails at the first bad JSONL line (path:lineno) and leaves nothing behind."""
    out = tmp_path / "data"
    first_bad = next(n for n, (_, _, counter, _) in enumerate(JSONL_LINES, 1) if counter)
    with pytest.raises(ValueError, match=re.escape(f"{corpus['jsonl']}:{first_bad}: invalid JSON")):
        prepare_dataset(mixed_config(corpus, strict=True), out, verbose=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 2-3. existing tokenizers

TOKENIZER_DOCS = [prose(100 + i, 80) for i in range(12)] + [
    CODE_DOC,
    "\tTabs\tand  double  spaces, Ünïcödé 東京 🙂 and emoji.\n\n  Indented second line.",
]


def train_hf_tokenizer(path: Path, texts: list[str], special: list[str]) -> Path:
    """A tiny byte-level BPE trained with the tokenizers library, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tk.save(str(path))
    return path


@pytest.fixture
def docs_dir(tmp_path) -> Path:
    return write_docs(tmp_path / "docs", TOKENIZER_DOCS)


def text_config(docs: Path, tok_path: Path, eot_token: str = "", **overrides) -> DataConfig:
    """Text documents encoded with an existing tokenizer file."""
    tokenizer = TokenizerConfig(path=str(tok_path), eot_token=eot_token)
    return DataConfig(sources=f"text:{docs}", workers=1, tokenizer=tokenizer, **overrides)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hf_tokenizer_json(docs_dir, tmp_path):
    """A Hugging Face tokenizer.json is used as given; ids decode to the JSONL exactly."""
    from tokenizers import Tokenizer

    tok_path = train_hf_tokenizer(tmp_path / "tok" / "tokenizer.json", TOKENIZER_DOCS,
                                  ["<|endoftext|>"])  # fmt: skip
    info = prepare_dataset(text_config(docs_dir, tok_path), tmp_path / "data", verbose=False)
    meta = json.loads((info.path / "metadata.json").read_text())
    assert meta["tokenizer_file"] == info.tokenizer_file == "tokenizer.json"
    assert (info.path / "tokenizer.json").read_bytes() == tok_path.read_bytes()
    assert meta["tokenizer_sha256"] == sha256(tok_path)
    assert not (info.path / "tokenizer.model").exists()
    hf = Tokenizer.from_file(str(tok_path))
    assert info.eot_id == meta["eot_id"] == hf.token_to_id("<|endoftext|>")
    assert info.vocab_size == hf.get_vocab_size(with_added_tokens=True)
    assert info.tokenizer().eot_id == info.eot_id
    assert_shards_match_jsonl(info)
    first = jsonl_texts(info.path / "train.jsonl")[0]
    ids = hf.encode(first, add_special_tokens=False).ids
    assert info.tokens("train").read_all()[: len(ids) + 1].tolist() == [*ids, info.eot_id]


def test_hf_tokenizer_without_eot(docs_dir, tmp_path):
    """No end-of-text token: a ValueError naming data.tokenizer.eot_token, and nothing left."""
    tok_path = train_hf_tokenizer(tmp_path / "tok" / "tokenizer.json", TOKENIZER_DOCS, [])
    out = tmp_path / "data"
    with pytest.raises(ValueError, match=r"data\.tokenizer\.eot_token"):
        prepare_dataset(text_config(docs_dir, tok_path), out, verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "tok"]


@pytest.mark.parametrize("special", [["<|doc|>"], ["</s>", "<|doc|>"]])
def test_hf_tokenizer_custom_eot_token(docs_dir, tmp_path, special):
    """data.tokenizer.eot_token names the separator; the data dir's tokenizer then uses the same id
    (with "</s>" also present, a by-name search would silently pick the wrong one)."""
    from tokenizers import Tokenizer

    tok_path = train_hf_tokenizer(tmp_path / "tok" / "tokenizer.json", TOKENIZER_DOCS, special)
    cfg = text_config(docs_dir, tok_path, eot_token="<|doc|>")
    info = prepare_dataset(cfg, tmp_path / "data", verbose=False)
    doc_id = Tokenizer.from_file(str(tok_path)).token_to_id("<|doc|>")
    assert info.eot_id == doc_id
    stream = info.tokens("train").read_all()
    assert np.count_nonzero(stream == doc_id) == info.documents["train"]
    # What train.py (and decoded_documents) do: load the tokenizer back from the data dir.
    assert info.tokenizer().eot_id == info.eot_id
    assert_shards_match_jsonl(info)
    # A data dir prepared before the config was nested keeps its settings flat; it still opens
    # with the same end-of-text token, and is still current for the same settings.
    meta_path = info.path / "metadata.json"
    meta = json.loads(meta_path.read_text())
    assert meta["config"]["tokenizer"]["eot_token"] == "<|doc|>"
    meta["config"] = key_settings(cfg)
    assert meta["config"]["tokenizer_eot_token"] == "<|doc|>"
    meta_path.write_text(json.dumps(meta))
    assert load_dataset(info.path).tokenizer().eot_id == doc_id and is_current(info.path, cfg)


SPECIAL_DOC = "A note on tokenizers: GPT-2 ends a document with <|endoftext|> and T5 with </s>."


@pytest.mark.parametrize("kind", ["sentencepiece", "tokenizer.json"])
def test_special_token_text_inside_a_document(tmp_path, kind):
    """A document that merely mentions the EOT token's text is not split by it."""
    docs = write_docs(tmp_path / "docs", [*TOKENIZER_DOCS, SPECIAL_DOC])
    if kind == "sentencepiece":
        tok_path = tmp_path / "tok" / "tokenizer.model"
        tok_path.parent.mkdir()
        train_tokenizer(TOKENIZER_DOCS, vocab_size=320).save(tok_path)
    else:
        tok_path = train_hf_tokenizer(tmp_path / "tok" / "tokenizer.json", TOKENIZER_DOCS,
                                      ["<|endoftext|>", "</s>"])  # fmt: skip
    info = prepare_dataset(text_config(docs, tok_path), tmp_path / "data", verbose=False)
    for split in ("train", "val"):
        stream = info.tokens(split).read_all()
        assert np.count_nonzero(stream == info.eot_id) == info.documents[split], split
    assert_shards_match_jsonl(info)


def test_hf_tokenizer_with_sparse_ids(docs_dir, tmp_path):
    """A tokenizer.json whose ids have gaps: vocab_size covers the largest id, which is stored
    without wrapping (uint32 here), so the shards still decode to the JSONL."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab["e"] = 70_000  # e.g. a vocabulary trimmed of unused entries keeps the old ids
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(["<|endoftext|>"])
    tok_path = tmp_path / "tok" / "tokenizer.json"
    tok_path.parent.mkdir()
    tk.save(str(tok_path))
    info = prepare_dataset(text_config(docs_dir, tok_path), tmp_path / "data", verbose=False)
    stream = info.tokens("train").read_all()
    assert info.vocab_size > 70_000 and info.dtype == "uint32"
    assert stream.max() == 70_000 < info.vocab_size
    assert_shards_match_jsonl(info)


def test_sentencepiece_model_used_as_is(docs_dir, tmp_path):
    """An existing SentencePiece .model is copied unchanged (same sha256) and used for ids."""
    import sentencepiece as spm

    model = train_tokenizer([prose(7, 400), CODE_DOC], vocab_size=320, model_type="bpe")
    tok_path = tmp_path / "tok" / "custom.model"
    tok_path.parent.mkdir()
    model.save(tok_path)
    info = prepare_dataset(text_config(docs_dir, tok_path), tmp_path / "data", verbose=False)
    meta = json.loads((info.path / "metadata.json").read_text())
    assert meta["tokenizer_file"] == "tokenizer.model"
    assert meta["tokenizer_sha256"] == sha256(tok_path) == sha256(info.path / "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(tok_path))
    assert info.vocab_size == sp.vocab_size() == 320 and info.eot_id == sp.eos_id()
    assert_shards_match_jsonl(info)
    first = jsonl_texts(info.path / "train.jsonl")[0]
    ids = sp.encode(first)
    assert info.tokens("train").read_all()[: len(ids) + 1].tolist() == [*ids, sp.eos_id()]


# ---------------------------------------------------------------- 4. determinism


def test_build_is_deterministic(corpus, tmp_path):
    """The same inputs built twice (BPE tokenizer) give byte-identical shards, JSONL, tokenizer."""
    cfg = mixed_config(corpus, tokenizer=TokenizerConfig("bpe", 360), shard_mb=0.001)
    one = build_dataset(cfg, tmp_path / "one", verbose=False)
    two = build_dataset(cfg, tmp_path / "two", verbose=False)
    names = sorted(p.name for p in one.path.iterdir())
    assert names == sorted(p.name for p in two.path.iterdir())
    assert len([n for n in names if n.startswith("train-")]) > 1  # several shards compared
    for name in names:
        if name not in ("metadata.json", "report.txt"):
            assert (one.path / name).read_bytes() == (two.path / name).read_bytes(), name
    meta_one, meta_two = (json.loads((d.path / "metadata.json").read_text()) for d in (one, two))
    for meta in (meta_one, meta_two):  # build times differ run to run
        meta.pop("seconds"), meta.pop("timings")
    assert meta_one == meta_two


# ---------------------------------------------------------------- 5. uint32 shards


def test_token_dtype_boundary():
    """uint16 holds ids up to 65535 (vocab 65536); one more entry needs uint32."""
    assert token_dtype(256) == np.uint16
    assert token_dtype(2**16) == np.uint16
    assert token_dtype(2**16 + 1) == np.uint32
    assert token_dtype(200_000) == np.uint32


def test_uint32_shards_and_windows_across_files(tmp_path):
    """Ids above 65535 survive ShardWriter/TokenStream; windows cross shard boundaries."""
    rng = np.random.default_rng(0)
    pieces = [rng.integers(65_536, 200_000, size=n, dtype=np.uint32) for n in (5, 17, 1, 0, 30)]
    tokens = np.concatenate(pieces)
    writer = ShardWriter(tmp_path, "train", token_dtype(200_000), shard_tokens=11)
    for piece in pieces:
        writer.write(piece)
    shards = writer.close()
    assert [s["tokens"] for s in shards] == [11, 11, 11, 11, 9]
    assert [s["file"] for s in shards] == [f"train-{i:05d}.bin" for i in range(5)]
    for s in shards:
        assert (tmp_path / s["file"]).stat().st_size == 4 * s["tokens"]
    stream = TokenStream([tmp_path / s["file"] for s in shards], "uint32")
    assert len(stream) == len(tokens)
    np.testing.assert_array_equal(stream.read_all(), tokens)
    for start in range(len(tokens)):
        for length in (1, 10, 11, 12, 23, len(tokens) - start):
            if start + length <= len(tokens):
                window = stream.window(start, length)
                assert window.dtype == np.uint32
                np.testing.assert_array_equal(window, tokens[start : start + length])


def big_vocab_tokenizer(path: Path, n_unused: int = 70_000) -> Path:
    """A byte-level tokenizer.json whose every byte id is above 65535 (no training needed)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {f"<unused{i}>": i for i in range(n_unused)}
    for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        vocab[char] = n_unused + i
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(["<|endoftext|>"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tk.save(str(path))
    return path


def test_uint32_dataset_end_to_end(docs_dir, tmp_path):
    """A vocabulary over 65536 gives uint32 shards that still decode to the JSONL exactly."""
    tok_path = big_vocab_tokenizer(tmp_path / "tok" / "tokenizer.json")
    cfg = text_config(docs_dir, tok_path, shard_mb=0.01)
    info = prepare_dataset(cfg, tmp_path / "data", verbose=False)
    assert info.dtype == "uint32" and info.vocab_size == 70_257
    assert len(info.shards["train"]) > 1
    for s in info.shards["train"]:
        assert (info.path / s["file"]).stat().st_size == 4 * s["tokens"]
    stream = info.tokens("train").read_all()
    assert stream.dtype == np.uint32 and stream.min() >= 70_000
    assert_shards_match_jsonl(info)


# ---------------------------------------------------------------- 6. input pipeline


@pytest.mark.parametrize("past_epochs", [0, 1])
def test_train_batches_resume_equal(mixed, past_epochs):
    """Steps k..k+20 of a fresh TrainBatches (a restart) equal an uninterrupted run's."""
    info, _ = mixed
    seq_len, batch_size, seed = 16, 8, 3
    original = TrainBatches(info.tokens("train"), batch_size, seq_len, seed)
    steps_per_epoch = original.n_windows / batch_size
    assert steps_per_epoch > 20
    k = int((past_epochs + 1) * steps_per_epoch) - 7  # the range crosses an epoch boundary
    assert int(original.epoch(k)) == past_epochs and int(original.epoch(k + 20)) > past_epochs
    seen = {step: original.local_batch(step) for step in range(k + 21)}
    restarted = TrainBatches(load_dataset(info.path).tokens("train"), batch_size, seq_len, seed)
    for step in range(k, k + 21):
        np.testing.assert_array_equal(restarted.local_batch(step), seen[step])
    first = original.local_batch(0)
    assert first.shape == (batch_size, seq_len + 1) and first.dtype == np.int32


def test_train_batches_processes_split_an_epoch(mixed):
    """Two processes' rows are disjoint and together cover every window of an epoch once."""
    info, _ = mixed
    seq_len, batch_size, seed = 16, 8, 5
    stream = info.tokens("train")
    whole = TrainBatches(stream, batch_size, seq_len, seed)
    procs = [TrainBatches(stream, batch_size, seq_len, seed, p, 2) for p in range(2)]
    n = whole.n_windows
    owned: list[list[int]] = [[], []]
    for step in range(-(-n // batch_size)):  # every step that holds a window of epoch 0
        global_ids = whole.windows(step)
        for p, proc in enumerate(procs):
            rows = proc.local_batch(step)
            ids = global_ids[p * batch_size // 2 : (p + 1) * batch_size // 2]
            assert rows.shape == (batch_size // 2, seq_len + 1)
            for row, window, slot in zip(rows, ids, range(batch_size // 2), strict=True):
                np.testing.assert_array_equal(
                    row, stream.window(int(window) * seq_len, seq_len + 1)
                )
                if step * batch_size + p * batch_size // 2 + slot < n:  # still epoch 0
                    owned[p].append(int(window))
    assert not set(owned[0]) & set(owned[1])
    assert sorted(owned[0] + owned[1]) == list(range(n))
