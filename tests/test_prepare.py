"""Prepared data dirs: contents, JSONL ⇄ shards agreement, caching, crashes, bad input, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_inputs import decoded_documents, jsonl_texts, write_docs

from jaxgpt.config.data import TokenizerConfig
from jaxgpt.data.build import prepare_dataset, split_documents
from jaxgpt.data.clean import CleanConfig, clean_text
from jaxgpt.data.dataset import DataConfig, dataset_key, load_dataset
from jaxgpt.data.pipeline import TrainBatches, device_batches

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def docs_dir(tmp_path, shakespeare) -> Path:
    """Twelve distinct documents: slices of Shakespeare and some code with unicode."""
    text = shakespeare.read_text()
    texts = [text[i * 3000 : (i + 1) * 3000] for i in range(10)]
    texts += ["def f():\n\treturn 'naïve 東京'\n", "x = 1  # ünïcödé\n"]
    return write_docs(tmp_path / "docs", texts)


@pytest.fixture
def many_docs(tmp_path, shakespeare) -> Path:
    """150 documents (enough for the hash split) with 10 exact and 5 near duplicates planted."""
    text = shakespeare.read_text()
    texts = [text[i * 2000 : i * 2000 + 1500] for i in range(150)]
    texts += texts[:10]  # exact copies
    for i in range(20, 25):  # a word changed here and there: near copies
        words = texts[i].split(" ")
        words[len(words) // 2] = "zounds"
        texts.append(" ".join(words))
    return write_docs(tmp_path / "many", texts)


def data_config(docs: Path, **overrides) -> DataConfig:
    settings = dict(sources=f"text:{docs}", tokenizer=TokenizerConfig("char", 0), workers=1)
    return DataConfig(**{**settings, **overrides})


@pytest.mark.parametrize("model_type", ["char", "bpe"])
def test_tail_split_contents(docs_dir, tmp_path, model_type):
    """Few documents: each one's tail is held out; JSONL, shards and sources all agree."""
    vocab = 0 if model_type == "char" else 400
    cfg = data_config(docs_dir, tokenizer=TokenizerConfig(model_type, vocab))
    out = tmp_path / "data"
    info = prepare_dataset(cfg, out, verbose=False)
    names = {p.name for p in out.iterdir()}
    assert names == {
        "tokenizer.model", "train.jsonl", "val.jsonl", "train-00000.bin", "val-00000.bin",
        "metadata.json", "report.txt",
    }  # fmt: skip
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["key"] == dataset_key(cfg) and info.dtype == "uint16"
    texts = [clean_text(p.read_text(), CleanConfig()) for p in sorted(docs_dir.glob("*.txt"))]
    train, val = jsonl_texts(out / "train.jsonl"), jsonl_texts(out / "val.jsonl")
    assert [a + b for a, b in zip(train, val, strict=True)] == texts
    assert decoded_documents(info, "train") == train and decoded_documents(info, "val") == val
    assert meta["splits"]["train"]["documents"] == len(texts)
    assert len(info.tokens("train")) == info.train_tokens == meta["splits"]["train"]["tokens"]
    assert info.tokens("train").read_all().max() < info.vocab_size
    if model_type == "bpe":
        assert info.vocab_size == 400
    report = (out / "report.txt").read_text()
    assert "12 documents" in report and "bytes/token" in report
    assert load_dataset(out) == info


def test_document_split_dedup_and_report(many_docs, tmp_path):
    """Many documents: whole documents split by hash; planted duplicates removed and counted."""
    cfg = data_config(many_docs, val_fraction=0.2, shard_mb=0.05)
    info = prepare_dataset(cfg, tmp_path / "data", verbose=False)
    meta = json.loads((info.path / "metadata.json").read_text())
    assert meta["dedup"]["exact_duplicates"] == 10
    assert meta["dedup"]["near_duplicates"] == 5
    train = jsonl_texts(info.path / "train.jsonl")
    val = jsonl_texts(info.path / "val.jsonl")
    assert len(train) + len(val) == 150 and 10 < len(val) < 50
    assert not set(train) & set(val)
    # Small shards: several files, read back as one stream that still decodes document-exactly.
    assert len(meta["splits"]["train"]["shards"]) > 1
    assert decoded_documents(info, "train") == train and decoded_documents(info, "val") == val
    report = (info.path / "report.txt").read_text()
    assert "10 exact and 5 near duplicates" in report


def test_split_is_deterministic_and_order_free():
    docs = [f"document number {i} " * 20 for i in range(300)]
    a = list(split_documents(docs, 0.1, "document"))
    b = list(split_documents(list(reversed(docs)), 0.1, "document"))
    assert sorted(a) == sorted(b)
    val = [t for s, t in a if s == "val"]
    assert 10 < len(val) < 60


def test_reuses_and_rebuilds(docs_dir, tmp_path):
    """Same inputs and settings → nothing rebuilt; a changed setting or edited input → rebuilt."""
    out = tmp_path / "data"
    cfg = data_config(docs_dir)
    first = prepare_dataset(cfg, out, verbose=False)
    mtime = (out / "train-00000.bin").stat().st_mtime_ns
    time.sleep(0.01)
    assert prepare_dataset(cfg, out, verbose=False) == first
    assert (out / "train-00000.bin").stat().st_mtime_ns == mtime
    assert dataset_key(data_config(docs_dir, path="/elsewhere", workers=3)) == dataset_key(cfg)
    changed = data_config(docs_dir, val_fraction=0.3)
    rebuilt = prepare_dataset(changed, out, verbose=False)
    assert rebuilt.val_tokens > first.val_tokens
    (docs_dir / "doc_000.txt").write_text("a brand new first document\n" * 50)
    edited = prepare_dataset(changed, out, verbose=False)
    assert any("a brand new first document" in t for t in decoded_documents(edited, "train"))


def test_leftover_tmp_dir_and_missing_metadata(docs_dir, tmp_path):
    """A half-written '*.tmp-*' dir is never loaded (and is removed); a dir without
    metadata.json is rebuilt. More such cases: test_prepare_faults.py."""
    cfg = data_config(docs_dir)
    out = tmp_path / "data"
    crashed = tmp_path / f"data.tmp-{dataset_key(cfg)}-999"
    crashed.mkdir()
    (crashed / "metadata.json").write_text(json.dumps({"key": dataset_key(cfg)}))
    with pytest.raises(FileNotFoundError, match="not a prepared data dir"):
        load_dataset(out)
    info = prepare_dataset(cfg, out, verbose=False)
    assert info.train_tokens > 0 and not crashed.exists()  # nobody held it: removed
    (out / "metadata.json").unlink()
    assert prepare_dataset(cfg, out, verbose=False) == info


def test_failed_build_leaves_nothing(docs_dir, tmp_path):
    """A build that fails (here: vocabulary too large) leaves no data dir and no temp dir."""
    cfg = data_config(docs_dir, tokenizer=TokenizerConfig("bpe", 100_000))
    with pytest.raises(ValueError, match=r"too large .* at most \d+"):
        prepare_dataset(cfg, tmp_path / "data", verbose=False)
    assert list(tmp_path.iterdir()) == [docs_dir]


def test_empty_after_filtering_explains_why(tmp_path):
    folder = write_docs(tmp_path / "docs", ["   \n", "\n\n", "tiny"])
    with pytest.raises(ValueError, match="left 0 training") as err:
        prepare_dataset(
            data_config(folder, clean=CleanConfig(min_chars=10)), tmp_path / "data", verbose=False
        )
    assert "too_short" in str(err.value) or "empty" in str(err.value)


def test_parallel_encoding_matches_in_process(many_docs, tmp_path, monkeypatch):
    """Worker processes produce byte-identical shards to in-process encoding."""
    import jaxgpt.data.build as build

    monkeypatch.setattr(build, "IN_PROCESS_BYTES", 0)
    monkeypatch.setattr(build, "ENCODE_CHUNK_BYTES", 20_000)
    one = prepare_dataset(data_config(many_docs, workers=1), tmp_path / "one", verbose=False)
    two = prepare_dataset(data_config(many_docs, workers=2), tmp_path / "two", verbose=False)
    for split in ("train", "val"):
        np.testing.assert_array_equal(one.tokens(split).read_all(), two.tokens(split).read_all())


def test_device_batches_equal_the_pure_function(many_docs, tmp_path):
    """The loop's input yields exactly local_batch(step) for each step, in order, from any
    start, through the device copy it is given."""
    info = prepare_dataset(data_config(many_docs), tmp_path / "data", verbose=False)
    batches = TrainBatches(info.tokens("train"), batch_size=4, seq_len=32, seed=7)
    got = list(device_batches(batches, 3, 9, lambda b: b.copy()))
    assert len(got) == 6
    for step, batch in zip(range(3, 9), got, strict=True):
        np.testing.assert_array_equal(batch, batches.local_batch(step))


@pytest.mark.e2e
def test_prepare_cli(docs_dir, tmp_path):
    """python -m jaxgpt.prepare builds the data dir; a second run reuses it."""
    out = tmp_path / "cli-data"
    args = [
        sys.executable, "-m", "jaxgpt.prepare", "--config", "configs/tiny.py",
        f"--config.data.sources=text:{docs_dir}", f"--config.data.path={out}",
        "--config.data.tokenizer.model_type=char", "--config.data.tokenizer.vocab_size=0",
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": ""}
    run = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "data report" in run.stdout and (out / "metadata.json").is_file()
    missing = subprocess.run(
        [*args[:5], "--config.data.sources=jsonl:/no/such/*.jsonl", f"--config.data.path={out}2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing.returncode != 0 and "/no/such/*.jsonl" in missing.stderr
    assert "Traceback" not in missing.stderr
