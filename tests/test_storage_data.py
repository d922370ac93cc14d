"""Data in buckets, on loopback emulators (tests/storage_servers.py; each test runs on gs:// and
s3://): prepare uploads a data dir with metadata.json last and finds it current afterwards;
sources and tokenizers are read from buckets; training reads token shards by byte ranges, each
process only its own windows, with the same losses as from local shards."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxgpt import config as config_lib
from jaxgpt import prepare, storage
from jaxgpt.data import build as build_lib
from jaxgpt.data import remote
from jaxgpt.data.build import prepare_dataset
from jaxgpt.data.dataset import load_dataset, stale_reason
from jaxgpt.data.pipeline import TrainBatches
from jaxgpt.data.sft import SFTBatches, load_examples
from jaxgpt.run.loop import train
from tests import multiprocess_harness as mp
from tests.helpers import losses, planted_pairs, sft_config, tiny_config, write_jsonl

pytestmark = pytest.mark.e2e  # starts storage servers


@pytest.fixture(autouse=True)
def _local_cache(tmp_path, monkeypatch):
    """The local build folder of a bucket data dir (storage.local_stand_in) inside the test."""
    monkeypatch.setenv("JAXGPT_CACHE_DIR", str(tmp_path / "cache"))


def data_config(corpus, **overrides):
    return config_lib.run_config(tiny_config(corpus, **overrides)).data


class Calls:
    """Counts (and orders) what a bucket file system is asked to do, by wrapping the methods of
    its instance (fsspec hands this thread the same instance for every URL of the bucket)."""

    def __init__(self, monkeypatch, url: str):
        self.log: list[tuple[str, object]] = []
        fs = storage.filesystem(url)[0]
        for name in ("put", "put_file", "rm_file", "rm", "cat_ranges"):
            monkeypatch.setattr(fs, name, self._wrap(name, getattr(fs, name)))

    def _wrap(self, name, original):
        def wrapped(*args, **kwargs):
            self.log.append((name, args[0] if args else None))
            return original(*args, **kwargs)

        return wrapped

    def named(self, *names: str) -> list[tuple[str, object]]:
        return [c for c in self.log if c[0] in names]


def objects(url: str) -> dict[str, bytes]:
    fs, key = storage.filesystem(url)
    fs.invalidate_cache()
    return {k[len(key) + 1 :]: fs.cat_file(k) for k in fs.find(key)}


# ---------------------------------------------------------------- prepare into a bucket


def test_prepare_uploads_the_local_build_with_metadata_last(bucket, small_corpus, monkeypatch):
    url, _ = bucket
    cfg = data_config(small_corpus)
    local = prepare_dataset(cfg, small_corpus.parent / "local", verbose=False)
    calls = Calls(monkeypatch, url)
    info = prepare_dataset(cfg, f"{url}/data", verbose=False)

    assert str(info.path) == f"{url}/data" and info.train_tokens == local.train_tokens
    uploaded = objects(f"{url}/data")
    on_disk = {p.name: p.read_bytes() for p in local.path.iterdir()}
    assert sorted(uploaded) == sorted(on_disk)
    for name in ("train-00000.bin", "val-00000.bin", "tokenizer.model", "train.jsonl"):
        assert uploaded[name] == on_disk[name], name  # the same bytes as a local build
    meta = json.loads(uploaded["metadata.json"])
    assert meta["key"] == json.loads(on_disk["metadata.json"])["key"]
    listed = {n: len(b) for n, b in uploaded.items() if n not in ("metadata.json", "report.txt")}
    assert meta["files"] == listed
    # The commit mark goes up last, after every other object.
    puts = calls.named("put", "put_file")
    assert len(puts) == 2 and str(puts[-1][1]).endswith("metadata.json")
    assert info.tokenizer_path.read_bytes() == on_disk["tokenizer.model"]
    assert info.tokenizer().encode("the fox") == local.tokenizer().encode("the fox")
    # The local build folder is gone once the bucket holds the data dir.
    assert not list((small_corpus.parent / "cache" / "data-build").rglob("*.bin"))


def test_a_current_data_dir_is_not_rebuilt(bucket, small_corpus, monkeypatch):
    url, _ = bucket
    cfg = data_config(small_corpus)
    prepare_dataset(cfg, f"{url}/data", verbose=False)
    fs, key = storage.filesystem(f"{url}/data/metadata.json")
    before = remote.version(fs.info(key))
    calls = Calls(monkeypatch, url)
    again = prepare_dataset(cfg, f"{url}/data", verbose=False)

    assert stale_reason(f"{url}/data", cfg) is None
    assert calls.named("put", "put_file", "rm", "rm_file") == []  # nothing written
    fs.invalidate_cache()
    assert remote.version(fs.info(key)) == before
    assert again.train_tokens > 0


def test_a_planted_data_dir_without_metadata_is_rebuilt(bucket, small_corpus, monkeypatch):
    """Objects of an upload that never committed (no metadata.json), and an extra shard of an
    older, larger build: rebuilt, the extra shard deleted after the commit."""
    url, _ = bucket
    fs, key = storage.filesystem(f"{url}/data")
    for name in ("train-00000.bin", "tokenizer.model", "train-00007.bin"):
        fs.pipe_file(f"{key}/{name}", b"half an upload")
    cfg = data_config(small_corpus)
    assert "has no metadata.json" in stale_reason(f"{url}/data", cfg)
    calls = Calls(monkeypatch, url)
    info = prepare_dataset(cfg, f"{url}/data", verbose=False)

    uploaded = objects(f"{url}/data")
    assert "train-00007.bin" not in uploaded
    assert uploaded["train-00000.bin"] != b"half an upload"
    assert len(uploaded["train-00000.bin"]) == info.train_tokens * 2  # uint16 ids
    (removed,) = calls.named("rm")
    assert [str(k).rsplit("/", 1)[-1] for k in removed[1]] == ["train-00007.bin"]
    order = [name for name, _ in calls.log]
    assert order.index("rm") > order.index("put_file")  # deleted only after the commit
    assert stale_reason(f"{url}/data", cfg) is None


def test_a_failed_upload_is_not_committed_and_is_retried_without_a_rebuild(
    bucket, small_corpus, monkeypatch
):
    url, _ = bucket
    cfg = data_config(small_corpus)
    fs = storage.filesystem(url)[0]
    put = fs.put

    def broken(*args, **kwargs):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(fs, "put", broken)
    with pytest.raises(OSError, match=f"uploading the data dir to {url}/data failed"):
        prepare_dataset(cfg, f"{url}/data", verbose=False)
    assert "metadata.json" not in objects(f"{url}/data")  # nothing that looks finished
    assert list((small_corpus.parent / "cache" / "data-build").rglob("metadata.json"))

    monkeypatch.setattr(fs, "put", put)
    monkeypatch.setattr(build_lib, "_build_text", lambda *a: pytest.fail("rebuilt"))
    info = prepare_dataset(cfg, f"{url}/data", verbose=False)  # the local build, uploaded
    assert stale_reason(info.path, cfg) is None
    assert not list((small_corpus.parent / "cache" / "data-build").rglob("metadata.json"))


def test_a_rebuild_uncommits_first_and_foreign_objects_are_kept(bucket, small_corpus, monkeypatch):
    url, _ = bucket
    cfg = data_config(small_corpus)
    prepare_dataset(cfg, f"{url}/data", verbose=False)
    calls = Calls(monkeypatch, url)
    other = data_config(small_corpus, **{"data.val_fraction": 0.2})
    assert "other inputs or settings" in stale_reason(f"{url}/data", other)
    prepare_dataset(other, f"{url}/data", verbose=False)
    writes = [(n, str(a)) for n, a in calls.log if ".jaxgpt-probe" not in str(a)]
    assert writes[0][0] == "rm_file" and writes[0][1].endswith("metadata.json")  # un-commit
    assert stale_reason(f"{url}/data", other) is None

    fs, key = storage.filesystem(f"{url}/mixed")
    fs.pipe_file(f"{key}/notes.txt", b"someone else's")
    with pytest.raises(ValueError, match=r"holds notes\.txt"):
        prepare_dataset(cfg, f"{url}/mixed", verbose=False)
    assert objects(f"{url}/mixed") == {"notes.txt": b"someone else's"}


# ---------------------------------------------------------------- sources in a bucket


def put_corpus(url: str, tmp_path: Path) -> Path:
    """Text files (and one that a *.txt glob skips) in the bucket and a local copy of them."""
    fs, key = storage.filesystem(url)
    local = tmp_path / "corpus"
    local.mkdir()
    words = "the quick brown fox jumps over a lazy dog while seven wizards hex kings".split()
    for f in range(6):
        lines = [
            " ".join(words[(i * 7 + j + f) % len(words)] for j in range(9)) for i in range(300)
        ]
        text = "\n".join(lines) + f"\nfile {f}\n"
        (local / f"part-{f}.txt").write_text(text)
        fs.pipe_file(f"{key}/corpus/part-{f}.txt", text.encode())
    fs.pipe_file(f"{key}/corpus/skip.bin", b"\x00\x01 not text")
    records = "".join(
        json.dumps({"text": f"record {i} " + " ".join(words)}) + "\n" for i in range(400)
    )
    fs.pipe_file(f"{key}/jsonl/records.jsonl.gz", gzip.compress(records.encode()))
    (local / "records.jsonl.gz").write_bytes(gzip.compress(records.encode()))
    return local


def test_text_and_jsonl_sources_from_a_bucket(bucket, tmp_path):
    url, _ = bucket
    local = put_corpus(url, tmp_path)
    remote_cfg = data_config("x", **{"data.sources": f"text:{url}/corpus/*.txt,jsonl:{url}/jsonl"})
    local_cfg = data_config(
        "x", **{"data.sources": f"text:{local}/part-*.txt,jsonl:{local}/records.jsonl.gz"}
    )
    from_bucket = prepare_dataset(remote_cfg, tmp_path / "from-bucket", verbose=False)
    from_disk = prepare_dataset(local_cfg, tmp_path / "from-disk", verbose=False)
    assert from_bucket.documents == from_disk.documents
    for name in ("train-00000.bin", "val-00000.bin", "tokenizer.model"):
        assert (from_bucket.path / name).read_bytes() == (from_disk.path / name).read_bytes()
    meta = json.loads((from_bucket.path / "metadata.json").read_text())
    assert meta["read"]["files"] == 7 and meta["read"]["input_bytes"] > 0

    # Rewriting a source object (same size, new generation/ETag) makes the dir stale.
    assert stale_reason(from_bucket.path, remote_cfg) is None
    fs, key = storage.filesystem(f"{url}/corpus/part-0.txt")
    data = fs.cat_file(key)
    fs.pipe_file(key, data.replace(b"the", b"THE", 1))
    assert "other inputs" in stale_reason(from_bucket.path, remote_cfg)


def test_parquet_and_saved_hf_dataset_sources_from_a_bucket(bucket, tmp_path):
    """parquet: and hf: (a save_to_disk folder) read from a bucket give what the same files give
    from local disk."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    url, _ = bucket
    fs, key = storage.filesystem(url)
    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(500)]
    texts = [f"row {i} " + " ".join(rng.choice(vocabulary, 40)) for i in range(300)]
    local = tmp_path / "local"
    local.mkdir()
    pq.write_table(pa.table({"body": texts[:150], "n": list(range(150))}), local / "a.parquet")
    saved = local / "saved"
    datasets.Dataset.from_dict({"content": texts[150:]}).save_to_disk(str(saved))
    fs.put_file(str(local / "a.parquet"), f"{key}/pq/a.parquet")
    for file in sorted(saved.iterdir()):
        fs.put_file(str(file), f"{key}/saved/{file.name}")
    columns = {"data.parquet_column": "body", "data.hf_field": "content"}
    remote_cfg = data_config(
        "x", **{"data.sources": f"parquet:{url}/pq/*.parquet,hf:{url}/saved", **columns}
    )
    local_cfg = data_config(
        "x", **{"data.sources": f"parquet:{local}/a.parquet,hf:{saved}", **columns}
    )
    from_bucket = prepare_dataset(remote_cfg, tmp_path / "from-bucket", verbose=False)
    from_disk = prepare_dataset(local_cfg, tmp_path / "from-disk", verbose=False)
    assert from_bucket.documents == from_disk.documents
    assert sum(from_disk.documents.values()) == 300  # nothing lost, nothing a duplicate
    for name in ("train.jsonl", "val.jsonl", "train-00000.bin", "tokenizer.model"):
        assert (from_bucket.path / name).read_bytes() == (from_disk.path / name).read_bytes()


def test_a_tokenizer_and_the_data_dir_in_buckets(bucket, small_corpus, tmp_path):
    url, _ = bucket
    cfg = data_config(small_corpus)
    first = prepare_dataset(cfg, tmp_path / "first", verbose=False)
    storage.upload_file(first.tokenizer_path, config_lib.location(f"{url}/tok/t.model", "t"))
    with_tokenizer = data_config(small_corpus, **{"data.tokenizer.path": f"{url}/tok/t.model"})
    info = prepare_dataset(with_tokenizer, f"{url}/data", verbose=False)
    assert info.vocab_size == first.vocab_size
    assert info.tokenizer_path.read_bytes() == first.tokenizer_path.read_bytes()
    assert stale_reason(f"{url}/data", with_tokenizer) is None


def test_sources_and_buckets_that_do_not_exist(bucket, small_corpus, tmp_path):
    url, _ = bucket
    scheme = url.split("://")[0]
    nothing = data_config("x", **{"data.sources": f"text:{url}/empty/*.txt"})
    with pytest.raises(FileNotFoundError, match=f"{url}/empty/\\*.txt.*no object"):
        prepare_dataset(nothing, tmp_path / "d", verbose=False)
    gone = data_config("x", **{"data.sources": f"text:{scheme}://no-such-bucket-jx/c/*.txt"})
    with pytest.raises(FileNotFoundError, match=r"bucket .*no-such-bucket-jx does not exist"):
        prepare_dataset(gone, tmp_path / "d", verbose=False)
    no_tokenizer = data_config(small_corpus, **{"data.tokenizer.path": f"{url}/none.model"})
    with pytest.raises(FileNotFoundError, match=f"data.tokenizer.path={url}/none.model does not"):
        prepare_dataset(no_tokenizer, tmp_path / "d", verbose=False)
    # prepare into a bucket that does not exist: one line, naming the path, nothing built.
    target = f"{scheme}://no-such-bucket-jx/data"
    argv = [
        "--config", "tiny", f"--config.data.sources=text:{small_corpus}",
        f"--config.data.path={target}",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error:") and target in message and "bucket" in message
    assert "\n" not in message.strip()
    assert not (tmp_path / "cache" / "data-build").exists()


def test_sft_data_from_and_in_a_bucket(bucket, tmp_path):
    """An SFT data dir built from JSONL in a bucket into the bucket: its examples and batches
    are those of the same data dir on disk."""
    url, _ = bucket
    jsonl = write_jsonl(tmp_path / "pairs.jsonl", planted_pairs())
    fs, key = storage.filesystem(f"{url}/sft/pairs.jsonl")
    fs.put_file(str(jsonl), key)
    local_cfg = config_lib.run_config(sft_config(jsonl)).data
    remote_cfg = config_lib.run_config(sft_config(f"{url}/sft/pairs.jsonl")).data
    on_disk = prepare_dataset(local_cfg, tmp_path / "data", verbose=False)
    in_bucket = prepare_dataset(remote_cfg, f"{url}/data", verbose=False)
    for split in ("train", "val"):
        a, b = load_examples(on_disk, split), load_examples(in_bucket, split)
        np.testing.assert_array_equal(a.offsets, b.offsets)
        ids = np.arange(len(a))
        np.testing.assert_array_equal(a.rows(ids, 8, 2), b.rows(ids, 8, 2))
    batches = [
        SFTBatches(load_examples(d, "train"), d.eot_id, 4, 8, 3) for d in (on_disk, in_bucket)
    ]
    for step in range(3):
        np.testing.assert_array_equal(batches[0].local_batch(step), batches[1].local_batch(step))


# ---------------------------------------------------------------- training reads by ranges


def test_each_process_reads_only_its_windows(bucket, small_corpus, monkeypatch):
    url, _ = bucket
    cfg = data_config(small_corpus)
    info = prepare_dataset(cfg, f"{url}/data", verbose=False)
    local = prepare_dataset(cfg, small_corpus.parent / "local", verbose=False).tokens("train")
    seq_len, batch, seed = 32, 8, 5
    whole = TrainBatches(info.tokens("train"), batch, seq_len, seed)
    read: list[tuple[str, int, int]] = []
    original = remote.read_ranges

    def counting(fs, keys, starts, ends):
        read.extend(zip(keys, starts, ends, strict=True))
        return original(fs, keys, starts, ends)

    monkeypatch.setattr(remote, "read_ranges", counting)
    shares = []
    for p in range(2):
        read.clear()
        batches = TrainBatches(info.tokens("train"), batch, seq_len, seed, p, 2)
        got = [batches.local_batch(step) for step in range(6)]
        starts = [s * seq_len for step in range(6) for s in whole.windows(step)[p * 4 : p * 4 + 4]]
        # One ranged read per window of this process's rows, exactly those bytes, nothing else.
        assert sorted((a, b) for _, a, b in read) == sorted(
            (2 * s, 2 * (s + seq_len + 1)) for s in starts
        )
        assert sum(b - a for _, a, b in read) == 6 * 4 * (seq_len + 1) * 2
        shares.append(got)
        for row, s in zip(np.concatenate(got), starts, strict=True):
            np.testing.assert_array_equal(row, local.window(int(s), seq_len + 1))
    for step in range(6):  # the two shares make up the whole batch
        together = np.concatenate([shares[0][step], shares[1][step]])
        np.testing.assert_array_equal(together, whole.local_batch(step))


def write_corpus(path: Path) -> Path:
    words = "the quick brown fox jumps over a lazy dog while wizards hex kings".split()
    lines = (" ".join(words[(i * 7 + j) % len(words)] for j in range(9)) for i in range(3000))
    path.write_text("\n".join(lines))
    return path


TRAIN_SETTINGS = {"train.steps": 10, "train.eval_every": 5, "ckpt.every": 5}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The tiny run on local data, in this process: (corpus, its losses)."""
    tmp = tmp_path_factory.mktemp("local-run")
    corpus = write_corpus(tmp / "corpus.txt")
    train(tiny_config(corpus, **{"data.path": str(tmp / "data"), **TRAIN_SETTINGS}), tmp / "run")
    return corpus, losses(tmp / "run")


@pytest.mark.slow
def test_training_on_bucket_data_matches_local_data(bucket, local_run):
    """data.path and the workdir in the bucket: the same losses, bit for bit, as local data."""
    url, _ = bucket
    corpus, want = local_run
    train(tiny_config(corpus, **{"data.path": f"{url}/data", **TRAIN_SETTINGS}), f"{url}/run")
    got = losses(f"{url}/run")
    assert sorted(got) == list(range(1, 11))
    assert got == want  # exact equality of the floats
    assert "metadata.json" in objects(f"{url}/data")


# ---------------------------------------------------------------- two real processes

RANGE_LOGGER = """
import json, os, runpy, sys
from jaxgpt.data import build as build_lib
from jaxgpt.data import remote
log = open(os.environ["JAXGPT_TEST_RANGES"] + "." + os.environ["JAXGPT_PROCESS_ID"], "a")
read_ranges = remote.read_ranges
def logged(fs, keys, starts, ends):
    for key, a, b in zip(keys, starts, ends):
        log.write(json.dumps([key, a, b]) + "\\n")
    log.flush()
    return read_ranges(fs, keys, starts, ends)
remote.read_ranges = logged
sys.argv = ["jaxgpt.train", *sys.argv[1:]]
runpy.run_module("jaxgpt.train", run_name="__main__")
"""
MESH = ("--config.mesh.data=1", "--config.mesh.fsdp=4")


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """1 process × 4 devices on local data (tests/test_multiprocess.py's reference)."""
    tmp = tmp_path_factory.mktemp("one-process")
    corpus = write_corpus(tmp / "corpus.txt")
    mp.run(mp.train_args(corpus, tmp / "ref", 20, *MESH), 4, tmp / "ref.log")
    return corpus, mp.losses(tmp / "ref")


@pytest.mark.slow
def test_two_processes_read_their_shares_from_the_bucket(
    bucket, one_process_run, tmp_path, monkeypatch
):
    """prepare (by process 0) writes the data dir to the bucket; 2 processes × 2 devices then
    train from it, each fetching exactly the windows of its own rows, with the losses of
    1 process × 4 devices on local data."""
    url, _ = bucket
    corpus, want = one_process_run
    monkeypatch.setenv("JAXGPT_TEST_RANGES", str(tmp_path / "ranges"))
    workdir = f"{url}/two"  # checkpoints in the bucket too, written by both processes
    args = mp.train_args(corpus, workdir, 20, *MESH, f"--config.data.path={url}/data")
    mp.run_two_processes([sys.executable, "-c", RANGE_LOGGER, *args[3:]], tmp_path)
    mp.assert_same_losses(want, mp.losses(workdir), range(1, 21))

    info = load_dataset(f"{url}/data")
    assert "data: uploading" in (tmp_path / "proc0.log").read_text()
    assert "uploading" not in (tmp_path / "proc1.log").read_text()  # process 1 only reads
    seed = config_lib.load_config_file("tiny").train.seed
    whole = TrainBatches(info.tokens("train"), 8, 32, seed)
    shares = []
    for p in range(2):
        lines = (tmp_path / f"ranges.{p}").read_text().splitlines()
        train_reads = sorted(tuple(r[1:]) for r in map(json.loads, lines) if "train-" in r[0])
        starts = [s * 32 for step in range(20) for s in whole.windows(step)[p * 4 : p * 4 + 4]]
        assert train_reads == sorted((2 * s, 2 * (s + 33)) for s in starts)
        shares.append(set(train_reads))
    assert not shares[0] & shares[1]  # disjoint: no window fetched by both
    _resume_from_the_bucket(workdir, args, want, tmp_path)


def _resume_from_the_bucket(workdir: str, args: list[str], want, tmp_path) -> None:
    """Each process wrote its own shards of the checkpoint; with the last checkpoint gone (a
    preemption before it), both processes resume from the previous one in the bucket and redo
    the steps with the same losses."""
    fs, key = storage.filesystem(workdir + "/checkpoints/20")
    shards = {n.split("/")[-2] for n in fs.find(key) if "/ocdbt.process_" in n}
    assert shards >= {"ocdbt.process_0", "ocdbt.process_1"}, shards
    fs.rm(fs.find(key))
    fs.invalidate_cache()
    mp.run_two_processes(args, tmp_path)
    assert f"resumed from {workdir}/checkpoints/10" in (tmp_path / "proc0.log").read_text()
    mp.assert_same_losses(want, mp.losses(workdir), range(1, 21))
