"""Tests for the parquet: and hf: source kinds, mixtures (kind:path@weight), and the training
pipeline's O(1)-memory window order (pipeline.WindowOrder).

Every input is built here in tmp_path with pyarrow or `datasets` (nothing is downloaded; the
Hugging Face cache is a folder of this test), bucket inputs on the loopback servers of
tests/storage_servers.py.
"""

import dataclasses
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_inputs import decoded_documents, jsonl_texts

from jaxgpt import storage
from jaxgpt.config import DataConfig, DedupConfig, TokenizerConfig
from jaxgpt.data import inputs
from jaxgpt.data import sources as sources_lib
from jaxgpt.data.build import prepare_dataset
from jaxgpt.data.dataset import dataset_key
from jaxgpt.data.pipeline import TrainBatches, WindowOrder

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards hex kings by a river".split()


def texts(n: int, tag: str) -> list[str]:
    """n distinct documents of a few words each, tagged with their source."""
    return [
        f"{tag} {i}: " + " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(5 + i % 4))
        for i in range(n)
    ]


def read(spec: str, **options) -> tuple[list[str], sources_lib.ReadStats]:
    stats = sources_lib.ReadStats()
    docs = list(sources_lib.iter_documents(sources_lib.parse_sources(spec), stats, **options))
    return docs, stats


def write_parquet(path: Path, columns: dict, row_group_size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


# ---------------------------------------------------------------- parquet


def test_parquet_reads_the_text_column_in_order(tmp_path):
    """Files in sorted order, rows in order across row groups; nulls and empty texts counted."""
    first, second = texts(150, "a"), texts(40, "b")
    write_parquet(tmp_path / "pq" / "part-0.parquet", {"body": first, "id": range(150)})
    write_parquet(
        tmp_path / "pq" / "part-1.parquet",
        {"body": [*second, None, "  "], "id": range(42)},
    )
    docs, stats = read(f"parquet:{tmp_path}/pq/*.parquet", parquet_column="body")
    assert docs == first + second
    assert stats.files == 2 and stats.documents == 190 and stats.input_bytes > 0
    assert stats.null_texts == 1 and stats.skipped == {"empty": 1}
    assert stats.problems == [f"{tmp_path}/pq/part-1.parquet: row 40: 'body' is null"]
    # A folder takes its .parquet files; the default column is "text".
    write_parquet(tmp_path / "dir" / "x.parquet", {"text": ["one doc"]})
    (tmp_path / "dir" / "notes.txt").write_text("not parquet")
    assert read(f"parquet:{tmp_path}/dir")[0] == ["one doc"]
    with pytest.raises(ValueError, match=r"row 40: 'body' is null \(data.strict=True\)"):
        read(f"parquet:{tmp_path}/pq/*.parquet", parquet_column="body", strict=True)


def test_parquet_binary_column_and_bad_utf8(tmp_path):
    write_parquet(tmp_path / "b.parquet", {"text": [b"caf\xc3\xa9", b"bad \xff byte"]})
    docs, stats = read(f"parquet:{tmp_path}/b.parquet")
    assert docs == ["café", "bad \ufffd byte"] and stats.bad_utf8_records == 1


def test_parquet_without_the_column_names_file_and_columns(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", {"content": ["x"], "url": ["u"]})
    with pytest.raises(ValueError, match=r"p\.parquet has no column 'text'.*\['content', 'url'\]"):
        read(f"parquet:{path}")
    with pytest.raises(ValueError, match=r"column 'url' .*holds int64, not text"):
        write_parquet(path, {"content": ["x"], "url": [3]})
        read(f"parquet:{path}", parquet_column="url")


def test_parquet_corrupt_file_is_counted_or_fails_strict(tmp_path):
    good = write_parquet(tmp_path / "a.parquet", {"text": ["kept"]})
    (tmp_path / "b.parquet").write_bytes(good.read_bytes()[:-20])  # footer cut off
    docs, stats = read(f"parquet:{tmp_path}/*.parquet")
    assert docs == ["kept"] and stats.corrupt_files == 1
    assert "b.parquet: not a Parquet file" in stats.problems[0]
    with pytest.raises(ValueError, match=r"b\.parquet: not a Parquet file"):
        read(f"parquet:{tmp_path}/*.parquet", strict=True)


def test_parquet_memory_stays_one_batch(tmp_path):
    """A 24 MB column read row group by row group: Arrow holds about 3 MB at any time (the
    whole column would be 24 MB)."""
    docs = [f"{i} " + "x" * 1200 for i in range(20_000)]
    path = write_parquet(tmp_path / "big.parquet", {"text": docs}, row_group_size=500)
    stats, peak, count = sources_lib.ReadStats(), 0, 0
    for _ in sources_lib.READERS["parquet"](sources_lib.Source("parquet", str(path)), stats, False):
        count += 1
        if count % 100 == 0:
            peak = max(peak, pa.total_allocated_bytes())
    assert count == 20_000 and stats.bytes > 24e6
    assert peak < 6e6, f"Arrow held {peak / 1e6:.1f} MB while reading"


def test_parquet_in_a_bucket(bucket, tmp_path):
    url, _ = bucket
    fs, key = storage.filesystem(url)
    local = tmp_path / "local"
    for f in range(2):
        path = write_parquet(local / f"part-{f}.parquet", {"text": texts(70, f"p{f}")})
        fs.pipe_file(f"{key}/pq/part-{f}.parquet", path.read_bytes())
    fs.pipe_file(f"{key}/pq/readme.md", b"skipped: not parquet")
    from_bucket, stats = read(f"parquet:{url}/pq")
    assert from_bucket == read(f"parquet:{local}/*.parquet")[0]
    assert stats.files == 2 and len(from_bucket) == 140
    prints = inputs.file_fingerprints(sources_lib.Source("parquet", f"{url}/pq/*.parquet"))
    assert [p[0].rsplit("/", 1)[1] for p in prints] == ["part-0.parquet", "part-1.parquet"]
    with pytest.raises(ValueError, match=r"part-0\.parquet has no column 'body'.*\['text'\]"):
        read(f"parquet:{url}/pq/*.parquet", parquet_column="body")


def test_hf_saved_dataset_in_a_bucket(bucket, saved_dict):
    url, _ = bucket
    fs, key = storage.filesystem(url)
    for f in sorted(saved_dict.rglob("*")):
        if f.is_file():
            fs.pipe_file(f"{key}/saved/{f.relative_to(saved_dict)}", f.read_bytes())
    docs, stats = read(f"hf:{url}/saved", hf_split="validation")
    assert docs == texts(5, "v") and stats.files == 1
    prints = inputs.file_fingerprints(sources_lib.Source("hf", f"{url}/saved"))
    assert len(prints) == 7  # dataset_dict.json and each split's .arrow, state and info


# ---------------------------------------------------------------- hf


@pytest.fixture
def saved_dict(tmp_path) -> Path:
    """A DatasetDict with train and validation splits, saved with save_to_disk."""
    datasets = pytest.importorskip("datasets")
    train = datasets.Dataset.from_dict({"text": texts(30, "t"), "n": list(range(30))})
    val = datasets.Dataset.from_dict({"text": texts(5, "v"), "n": list(range(5))})
    path = tmp_path / "saved"
    datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(str(path))
    return path


def test_hf_saved_dataset_dict(saved_dict):
    docs, stats = read(f"hf:{saved_dict}")
    assert docs == texts(30, "t") and stats.files == 1 and stats.input_bytes > 0
    val, _ = read(f"hf:{saved_dict}", hf_split="validation")
    assert val == texts(5, "v")
    with pytest.raises(ValueError, match=r"no split 'test'.*splits are \['train', 'validation'\]"):
        read(f"hf:{saved_dict}", hf_split="test")
    with pytest.raises(ValueError, match=r"no column 'body' \(data.hf_field\).*'text', 'n'"):
        read(f"hf:{saved_dict}", hf_field="body")
    with pytest.raises(ValueError, match=r"column 'n' \(data.hf_field\) holds int64, not text"):
        read(f"hf:{saved_dict}", hf_field="n")


def test_hf_saved_single_dataset_and_bad_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = datasets.Dataset.from_dict({"text": texts(12, "s")})
    rows.select([3, 1, 2]).save_to_disk(str(tmp_path / "one"))  # indices are written out
    assert read(f"hf:{tmp_path / 'one'}")[0] == [texts(12, "s")[i] for i in (3, 1, 2)]
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match=r"plain is not a dataset saved with save_to_disk"):
        read(f"hf:{tmp_path / 'plain'}")
    with pytest.raises(FileNotFoundError, match=r"hf path .*nowhere.* does not exist"):
        sources_lib.parse_sources(f"hf:{tmp_path}/nowhere")


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """A local Hugging Face datasets cache holding "tiny_corpus" (config "default", splits
    train and validation) laid out as load_dataset leaves a Hub dataset, built offline."""
    datasets = pytest.importorskip("datasets")
    from datasets.packaged_modules.json.json import Json

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    files = {}
    for split, tag in (("train", "c"), ("validation", "w")):
        files[split] = str(tmp_path / f"{split}.jsonl")
        Path(files[split]).write_text(
            "".join(json.dumps({"text": t}) + "\n" for t in texts(8, tag))
        )
    builder = Json(cache_dir=str(tmp_path / "build"), dataset_name="tiny_corpus", data_files=files)
    builder.download_and_prepare()
    built = Path(builder.cache_dir)
    target = cache / "tiny_corpus" / "default" / "0.0.0" / "0123abcd"
    target.parent.mkdir(parents=True)
    built.rename(target)
    info = json.loads((target / "dataset_info.json").read_text())
    (target / "dataset_info.json").write_text(json.dumps({**info, "config_name": "default"}))
    return cache


def test_hf_by_name_from_the_local_cache_offline(hf_cache):
    import datasets
    import huggingface_hub.constants as hub

    online = (datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE)
    docs, _ = read("hf:tiny_corpus")
    assert docs == texts(8, "c")
    assert read("hf:tiny_corpus:default", hf_split="validation")[0] == texts(8, "w")
    assert online == (datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE)  # only for the call
    prints = inputs.file_fingerprints(sources_lib.Source("hf", "tiny_corpus"))
    assert sorted(Path(p[0]).name for p in prints) == [
        "tiny_corpus-train.arrow",
        "tiny_corpus-validation.arrow",
    ]
    with pytest.raises(
        FileNotFoundError, match=r"(?s)hf:tiny_corpus:other .*Available configs.*default"
    ):
        read("hf:tiny_corpus:other")


def test_hf_missing_dataset_never_downloads(hf_cache):
    started = time.monotonic()
    with pytest.raises(FileNotFoundError) as error:
        read("hf:someorg/not_here")
    message = str(error.value)
    assert (
        "not in the local Hugging Face datasets cache" in message and "never downloads" in message
    )
    assert "load_dataset('someorg/not_here').save_to_disk('DIR')" in message
    assert time.monotonic() - started < 10  # offline: no network timeouts
    with pytest.raises(ValueError, match=r"neither a folder nor a dataset name"):
        read("hf:not a name")


# ---------------------------------------------------------------- mixtures


def test_mixture_specs(tmp_path):
    a = write_parquet(tmp_path / "a.parquet", {"text": ["x"]})
    (tmp_path / "me@home").mkdir()
    plain = sources_lib.parse_sources(f"parquet:{a},text:{tmp_path}/me@home")
    assert [s.weight for s in plain] == [None, None] and plain[1].path.endswith("me@home")
    mixed = sources_lib.parse_sources(f"parquet:{a}@0.7, text:{tmp_path}/me@home@0.35, stdlib")
    assert [(s.kind, s.weight, s.rate) for s in mixed] == [
        ("parquet", 0.7, 0.7),
        ("text", 0.35, 0.35),
        ("stdlib", 1.0, 1.0),
    ]
    assert mixed[0].spec == f"parquet:{a}" and mixed[1].path == f"{tmp_path}/me@home"
    assert sources_lib.parse_sources(f"parquet:{a}@4,stdlib@2")[1].rate == 0.5
    for bad in ("0", "-1", "inf", "nan"):
        with pytest.raises(ValueError, match=r"weight in .* must be a positive number"):
            sources_lib.parse_sources(f"parquet:{a}@{bad}")


def mixture_inputs(tmp_path: Path) -> str:
    write_parquet(tmp_path / "a" / "a.parquet", {"text": texts(3000, "a")})
    write_parquet(tmp_path / "b" / "b.parquet", {"text": texts(3000, "b")})
    return f"parquet:{tmp_path}/a/*.parquet@{{}},parquet:{tmp_path}/b/*.parquet@{{}}"


def test_mixture_weights_are_honored_deterministically(tmp_path):
    spec = mixture_inputs(tmp_path)
    docs, stats = read(spec.format(1, 0.25))
    a = [d for d in docs if d.startswith("a ")]
    b = [d for d in docs if d.startswith("b ")]
    assert a == texts(3000, "a")  # the heaviest source is read whole, in order
    assert abs(len(b) - 750) < 4 * np.sqrt(3000 * 0.25 * 0.75)  # binomial, 4 sigma
    assert read(spec.format(1, 0.25))[0] == docs  # the same documents every run
    assert read(spec.format(4, 1))[0] == docs  # only the ratio counts
    more = read(spec.format(1, 0.5))[0]
    assert set(b) < {d for d in more if d.startswith("b ")}  # a higher weight adds documents
    spec_a, spec_b = (s.spec for s in sources_lib.parse_sources(spec.format(1, 0.25)))
    assert stats.docs_by_source == {spec_a: 3000, spec_b: len(b)}
    assert stats.mixture[spec_b]["docs_out"] == 3000 - len(b) and stats.documents == len(docs)
    lines = sources_lib.mixture_report(stats)
    assert lines[0].startswith("mixture ")
    assert f"{spec_a} @1: kept 3,000 of 3,000 documents (100.0%)" in lines[1]
    assert f"{spec_b} @0.25: kept {len(b):,} of 3,000 documents (25.0%)" in lines[2]
    share = stats.bytes_by_source[spec_b] / stats.bytes
    assert f"share of text 50.0% -> {share:.1%}" in lines[2]
    assert sources_lib.mixture_report(read(f"parquet:{tmp_path}/a")[1]) == []


def test_read_stats_merge_sums_everything(tmp_path):
    spec = mixture_inputs(tmp_path).format(1, 0.5)
    sources = sources_lib.parse_sources(spec)
    whole = sources_lib.ReadStats()
    list(sources_lib.iter_documents(sources, whole))
    merged = sources_lib.ReadStats()
    for source in sources:  # one stats per task, merged as an engine would
        part = sources_lib.ReadStats()
        list(sources_lib.iter_documents([source], part))
        merged.merge(part)
    assert merged == whole


def test_documents_reads_with_every_option_of_the_config(tmp_path):
    write_parquet(tmp_path / "p.parquet", {"body": ["from parquet"]})
    datasets = pytest.importorskip("datasets")
    saved = datasets.DatasetDict({"dev": datasets.Dataset.from_dict({"t": ["from hf"]})})
    saved.save_to_disk(str(tmp_path / "hf"))
    cfg = DataConfig(
        sources=f"parquet:{tmp_path}/p.parquet,hf:{tmp_path}/hf",
        parquet_column="body",
        hf_split="dev",
        hf_field="t",
    )
    stats = sources_lib.ReadStats()
    assert list(sources_lib.documents(cfg, stats)) == ["from parquet", "from hf"]
    with pytest.raises(ValueError, match=r"data.hf_field is empty"):
        DataConfig(hf_field="")


def test_prepare_a_mixture_of_parquet_and_hf(tmp_path, saved_dict):
    """Through prepare: the data dir holds exactly the documents the mixture kept, and a
    weight change is a different data dir."""
    write_parquet(tmp_path / "pq" / "p.parquet", {"text": texts(200, "p")})
    spec = f"parquet:{tmp_path}/pq@1,hf:{saved_dict}@{{}}"
    cfg = DataConfig(
        sources=spec.format(0.5),
        tokenizer=TokenizerConfig("char", 0),
        dedup=DedupConfig(exact=False, near=False),
        workers=1,
    )
    info = prepare_dataset(cfg, tmp_path / "data", verbose=False)
    expected, _ = read(cfg.sources)
    got = jsonl_texts(info.path / "train.jsonl") + jsonl_texts(info.path / "val.jsonl")
    assert sorted(got) == sorted(expected) and 200 < len(expected) < 230
    assert sorted(decoded_documents(info, "train") + decoded_documents(info, "val")) == sorted(got)
    assert dataset_key(dataclasses.replace(cfg, sources=spec.format(0.6))) != dataset_key(cfg)


# ---------------------------------------------------------------- window order


@pytest.mark.parametrize(
    "n", [1, 2, 3, 4, 5, 15, 16, 17, 63, 64, 65, 1000, 4095, 4096, 4097, 65_537, 1_000_003]
)
def test_window_order_is_a_bijection(n):
    order = WindowOrder(n, seed=7)
    first = order(0, np.arange(n))
    assert first.dtype == np.int64
    np.testing.assert_array_equal(np.sort(first), np.arange(n))  # every window exactly once
    np.testing.assert_array_equal(WindowOrder(n, 7)(0, np.arange(n)), first)  # deterministic
    np.testing.assert_array_equal(order(0, np.arange(n)[::-1]), first[::-1])  # any positions
    if n >= 5:
        assert not np.array_equal(order(1, np.arange(n)), first)  # another epoch, another order
        assert not np.array_equal(WindowOrder(n, 8)(0, np.arange(n)), first)
        np.testing.assert_array_equal(np.sort(order(1, np.arange(n))), np.arange(n))


def test_window_order_looks_shuffled():
    n = 200_000
    order = WindowOrder(n, seed=0)(3, np.arange(n))
    assert abs(np.corrcoef(order, np.arange(n))[0, 1]) < 0.01
    assert abs(np.corrcoef(order[:-1], order[1:])[0, 1]) < 0.01
    # Where the first tenth of the epoch comes from: spread evenly over the corpus.
    counts = np.bincount(order[: n // 10] * 10 // n, minlength=10)
    assert counts.min() > 0.8 * n / 100


def test_window_order_huge_corpora():
    """Values stay in range far past 2**32 windows, and ask for no memory proportional to n."""
    for n in (2**32 + 15, 10**12 + 3, 2**62 + 1):
        got = WindowOrder(n, seed=1)(5, np.array([0, 1, n // 2, n - 1], dtype=np.uint64))
        assert ((got >= 0) & (got < n)).all() and len(set(got.tolist())) == 4


class VirtualTokens:
    """A token sequence of any length that holds nothing: token i is i mod 65536."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: slice) -> np.ndarray:
        return (np.arange(index.start, index.stop) % 65536).astype(np.uint16)


def test_train_batches_at_a_billion_windows_use_no_memory_for_the_order():
    seq_len = 8
    tokens = VirtualTokens(10**9 * seq_len + 1)
    tracemalloc.start()
    try:
        batches = TrainBatches(tokens, batch_size=64, seq_len=seq_len, seed=0)
        assert batches.n_windows == 10**9
        rows = [batches.local_batch(step) for step in (0, 1, 10**7, 15_625_000)]  # epoch 0 and 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1e6, f"{peak / 1e6:.1f} MB"  # the old permutation: 4 GB
    starts = rows[0][:, 0].astype(np.int64)
    assert len(set(batches.windows(0).tolist())) == 64 and rows[0].shape == (64, seq_len + 1)
    np.testing.assert_array_equal(starts, (batches.windows(0) * seq_len) % 65536)
