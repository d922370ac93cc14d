"""Tests for jaxgpt/data: sources, tokenizer, prepared data dirs and the batch pipeline."""

import threading
import time

import numpy as np
import pytest
from data_inputs import write_docs

from jaxgpt.data import sources as sources_lib
from jaxgpt.data.pipeline import TrainBatches, eval_windows, prefetch
from jaxgpt.data.tokenizer import (
    N_BYTE_PIECES,
    N_SPECIAL,
    UNK_ID,
    Tokenizer,
    train_tokenizer,
)

# Indentation, tabs, blank lines, CRLF, trailing spaces, unicode, characters never seen in
# training (€, 🙂, ∮) and text that looks like the special pieces.
ROUND_TRIP = (
    "def g(y):\n        if y:\n\t\treturn 'naïve' + \"東京\"\n\n\n  trailing  \n"
    "€🙂 ∮ zebra QX\t\r\nend </s> <unk> <s>\n"
)


# ---------------------------------------------------------------- sources


def test_parse_sources_ok(small_corpus):
    """Kinds and paths parse; spaces and empty items are ignored."""
    got = sources_lib.parse_sources(f" text:{small_corpus} , stdlib ,")
    assert got == [sources_lib.Source("text", str(small_corpus)), sources_lib.Source("stdlib")]


def test_parse_sources_unknown_kind_named():
    """An unknown kind is a ValueError naming it and listing the known kinds."""
    with pytest.raises(ValueError, match=r"'jsonlines'.*known kinds.*stdlib.*text"):
        sources_lib.parse_sources("jsonlines:/tmp/x.jsonl")


def test_parse_sources_missing_path_named(tmp_path):
    """A path that does not exist is a FileNotFoundError naming it."""
    missing = tmp_path / "nowhere" / "corpus.txt"
    with pytest.raises(FileNotFoundError, match=r"nowhere/corpus\.txt"):
        sources_lib.parse_sources(f"text:{missing}")


@pytest.mark.parametrize("spec", ["text", "text:", "", " , "])
def test_parse_sources_needs_path_and_something(spec):
    """A text source without a path, or an empty spec, is a ValueError."""
    with pytest.raises(ValueError, match=r"data\.sources"):
        sources_lib.parse_sources(spec)


def read(spec: str, **kwargs) -> tuple[list[str], sources_lib.ReadStats]:
    stats = sources_lib.ReadStats()
    docs = list(sources_lib.iter_documents(sources_lib.parse_sources(spec), stats, **kwargs))
    return docs, stats


def test_text_split_file_and_blank_line(tmp_path):
    """'file' yields whole files in sorted order; 'blank_line' yields blank-line blocks."""
    folder = write_docs(tmp_path / "docs", ["a one\na two\n\nb one\n", "c one\n\n\n\nd one"])
    (folder / "image.png").write_bytes(b"\x89PNG not text")
    docs, stats = read(f"text:{folder}", text_split="file")
    assert docs == ["a one\na two\n\nb one\n", "c one\n\n\n\nd one"]
    assert stats.files == 2 and stats.documents == 2
    assert stats.bytes == sum(len(d.encode()) for d in docs)
    blocks, stats = read(f"text:{folder}", text_split="blank_line")
    assert [b.strip() for b in blocks] == ["a one\na two", "b one", "c one", "d one"]
    assert stats.documents == 4
    with pytest.raises(ValueError, match="text_split"):
        read(f"text:{folder}", text_split="paragraph")


def test_text_source_glob(tmp_path):
    """A glob selects matching files only."""
    folder = write_docs(tmp_path / "docs", ["first", "second", "third"])
    docs, _ = read(f"text:{folder}/doc_00[02].txt")
    assert docs == ["first", "third"]


def test_stdlib_corpus_respects_size_cap():
    """The stdlib source yields Python modules and stops once stdlib_max_mb is read."""
    files = sources_lib.stdlib_files()
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    assert not any({"test", "tests", "site-packages"} & set(f.parts) for f in files)
    docs, stats = read("stdlib", stdlib_max_mb=0.3)
    assert stats.documents == len(docs) == stats.files
    assert 0 < len(docs) < len(files)
    assert stats.bytes >= 0.3e6  # the cap is reached ...
    assert stats.bytes - len(docs[-1].encode()) < 0.3e6  # ... and only the last file crosses it
    for i, doc in enumerate(docs[:20]):
        compile(doc, f"stdlib doc {i}", "exec")  # real Python source
    bigger, _ = read("stdlib", stdlib_max_mb=0.6)
    assert bigger[: len(docs)] == docs and len(bigger) > len(docs)


def test_bad_utf8_counted_or_strict(tmp_path):
    """Invalid UTF-8 is replaced and counted; strict=True raises naming the file."""
    folder = write_docs(tmp_path / "docs", ["fine text\n"])
    (folder / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    docs, stats = read(f"text:{folder}")
    assert stats.bad_utf8_files == 1
    assert "caf\ufffd au lait\n" in docs
    with pytest.raises(ValueError, match=r"latin1\.txt"):
        read(f"text:{folder}", strict=True)


# ---------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def training_docs() -> list[str]:
    """Shakespeare plus a little code and unicode: what a tokenizer test trains on."""
    text = sources_lib.SHAKESPEARE  # shipped with the package
    code = "def f(x):\n    return x  # café\n\tindented with a tab\nnaïve résumé 東京\n"
    return [text.read_text()[:200_000], *[code] * 10]


def distinct_chars(docs: list[str]) -> int:
    return len(set("".join(docs)) - {"\n"})


@pytest.mark.parametrize(("model_type", "vocab"), [("bpe", 600), ("unigram", 600), ("char", 0)])
def test_tokenizer_round_trip(training_docs, model_type, vocab, tmp_path):
    """decode(encode(x)) == x exactly; unseen characters use byte pieces, never <unk>."""
    tok = train_tokenizer(training_docs, vocab, model_type)
    if vocab:
        assert tok.vocab_size == vocab
    ids = tok.encode(ROUND_TRIP)
    assert tok.decode(ids) == ROUND_TRIP
    assert UNK_ID not in ids
    assert tok.eot_id not in ids  # "</s>" in text is text, not the document separator
    pieces = [tok.sp.id_to_piece(i) for i in tok.encode("🙂")]
    assert pieces == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
    for doc in training_docs[:2]:
        assert tok.decode(tok.encode(doc)) == doc
    assert tok.encode_batch(["ab", ROUND_TRIP]) == [tok.encode("ab"), ids]
    # Saved and loaded, it is the same tokenizer.
    tok.save(tmp_path / "t.model")
    assert Tokenizer.load(tmp_path / "t.model").encode(ROUND_TRIP) == ids


def test_char_tokenizer_one_token_per_character(shakespeare):
    """A char tokenizer on Shakespeare has exactly its characters + specials + bytes."""
    text = shakespeare.read_text()
    tok = train_tokenizer([text], 0, "char")
    assert tok.vocab_size == distinct_chars([text]) + N_SPECIAL + N_BYTE_PIECES
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("model_type", ["bpe", "unigram", "char"])
def test_tokenizer_vocab_too_small(training_docs, model_type):
    """A vocabulary below characters + specials + bytes names the minimum, for every type."""
    minimum = distinct_chars(training_docs) + N_SPECIAL + N_BYTE_PIECES
    with pytest.raises(ValueError, match=rf"too small.*at least {minimum}"):
        train_tokenizer(training_docs, 100, model_type)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_tokenizer_vocab_too_large(training_docs, model_type):
    """A vocabulary the corpus cannot fill is a ValueError saying to lower it."""
    with pytest.raises(
        ValueError,
        match=r"too large.*at most \d+ pieces.*Set data\.tokenizer\.vocab_size to \d+ or less",
    ):
        train_tokenizer(training_docs[:1], 60_000, model_type)


def test_tokenizer_bad_inputs(tmp_path):
    """Unknown model type, empty text and a missing model file give clear errors."""
    with pytest.raises(ValueError, match="model_type"):
        train_tokenizer(["some text"], 400, "wordpiece")
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer(["", "\n\n"], 400, "bpe")
    with pytest.raises(FileNotFoundError, match=r"missing\.model"):
        Tokenizer.load(tmp_path / "missing.model")


# ---------------------------------------------------------------- batches


TOKENS = np.arange(5000, dtype=np.uint16)


def test_train_batches_deterministic_windows():
    """batch(step) is a pure function of (seed, step): contiguous int32 windows of T+1."""
    batches = TrainBatches(TOKENS, batch_size=8, seq_len=16, seed=3)
    a = batches.local_batch(5)
    assert a.shape == (8, 17) and a.dtype == np.int32
    np.testing.assert_array_equal(np.diff(a, axis=1), 1)  # windows of consecutive tokens
    assert a.max() < len(TOKENS)
    np.testing.assert_array_equal(a, TrainBatches(TOKENS, 8, 16, seed=3).local_batch(5))
    assert not np.array_equal(a, batches.local_batch(6))
    assert not np.array_equal(a, TrainBatches(TOKENS, 8, 16, seed=4).local_batch(5))
    # Random access: asking for an earlier step later gives the same answer.
    b = batches.local_batch(0)
    np.testing.assert_array_equal(batches.local_batch(5), a)
    np.testing.assert_array_equal(batches.local_batch(0), b)


def test_train_batches_cover_every_window_each_epoch():
    """One epoch of steps visits every non-overlapping window exactly once, last one included."""
    tokens = np.arange(16 * 40 + 1, dtype=np.uint16)  # exactly 40 windows of 16+1
    batches = TrainBatches(tokens, batch_size=8, seq_len=16, seed=0)
    assert batches.n_windows == 40
    seen = np.concatenate([batches.local_batch(s)[:, 0] for s in range(5)])
    assert sorted(seen.tolist()) == list(range(0, 640, 16))
    # The next epoch is a different order of the same windows.
    nxt = np.concatenate([batches.local_batch(s)[:, 0] for s in range(5, 10)])
    assert sorted(nxt.tolist()) == sorted(seen.tolist()) and nxt.tolist() != seen.tolist()


@pytest.mark.parametrize("process_count", [2, 4])
def test_train_batches_process_shares(process_count):
    """Each process gets disjoint rows; together they are exactly the global batch."""
    whole = TrainBatches(TOKENS, batch_size=8, seq_len=16, seed=1).local_batch(7)
    shares = [
        TrainBatches(TOKENS, 8, 16, seed=1, process_index=p, process_count=process_count)
        for p in range(process_count)
    ]
    parts = [s.local_batch(7) for s in shares]
    assert all(p.shape == (8 // process_count, 17) for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    with pytest.raises(ValueError, match="divisible"):
        TrainBatches(TOKENS, batch_size=6, seq_len=16, seed=1, process_count=4)


def test_eval_windows():
    """Eval windows are fixed, evenly spread, [N, B, T+1], from the first to the last start."""
    w = eval_windows(TOKENS, seq_len=16, n_tokens=16 * 4 * 5, batch_size=4)
    assert w.shape == (5, 4, 17) and w.dtype == np.int32
    np.testing.assert_array_equal(w, eval_windows(TOKENS, 16, 16 * 4 * 5, 4))
    flat = w.reshape(-1, 17)
    assert flat[0, 0] == 0 and flat[-1, -1] == len(TOKENS) - 1
    np.testing.assert_array_equal(np.diff(flat, axis=1), 1)
    assert (np.diff(flat[:, 0]) > 0).all()
    # Fewer tokens than one batch still gives one batch.
    assert eval_windows(TOKENS, 16, n_tokens=10, batch_size=4).shape == (1, 4, 17)


def test_split_shorter_than_a_window():
    """A split with fewer than block_size+1 tokens raises naming the split and the fix."""
    short = np.arange(16, dtype=np.uint16)
    with pytest.raises(ValueError, match=r"train split has 16 tokens.*block_size\+1 = 17"):
        TrainBatches(short, batch_size=2, seq_len=16, seed=0)
    with pytest.raises(ValueError, match=r"val split .*block_size"):
        eval_windows(short, seq_len=16, n_tokens=100, batch_size=2)
    exact = np.arange(17, dtype=np.uint16)  # exactly one window is enough
    assert TrainBatches(exact, 2, 16, seed=0).local_batch(0).shape == (2, 17)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "prefetch"]


def test_prefetch_in_order():
    """prefetch yields produce(step) for every step, in order."""

    def produce(step):
        time.sleep(0.001 * (step % 3))
        return step * step

    assert list(prefetch(produce, range(3, 40), depth=3)) == [s * s for s in range(3, 40)]


def test_prefetch_reraises_producer_error():
    """An exception in the producer reaches the consumer after the items before it."""

    def produce(step):
        if step == 4:
            raise RuntimeError("bad shard at step 4")
        return step

    got = []
    with pytest.raises(RuntimeError, match="bad shard at step 4"):
        for item in prefetch(produce, range(10)):
            got.append(item)
    assert got == [0, 1, 2, 3]


def test_prefetch_stops_when_consumer_stops():
    """Leaving the loop early stops the background thread instead of producing every step."""
    produced = []

    def produce(step):
        produced.append(step)
        return step

    before = set(prefetch_threads())
    for item in prefetch(produce, range(10_000), depth=2):
        if item == 2:
            break
    for t in set(prefetch_threads()) - before:
        t.join(timeout=5)
        assert not t.is_alive()
    assert len(produced) < 10
