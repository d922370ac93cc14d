"""The prepare engines: the global dedup rule is the sequential one, the local engine's pool and
key partitions change nothing, near-dedup quality on planted duplicates, bad input (no Ray, no
cluster), and a real two-node Ray cluster on loopback that writes the local engine's bytes,
also when one of its worker processes is killed mid-pipeline."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from jaxgpt.config.data import DataConfig, DedupConfig, TokenizerConfig
from jaxgpt.data import dedup as dedup_lib
from jaxgpt.data import engine_local, stages
from jaxgpt.data.build import build_dataset
from jaxgpt.data.sources import SHAKESPEARE

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


# ---------------------------------------------------------------- inputs


def shingles(text: str, k: int = 5) -> set[tuple[str, ...]]:
    words = text.casefold().split()
    return {tuple(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def changed(rng: random.Random, words: list[str], base: list[str], n: int) -> list[str]:
    out = list(base)
    for i in rng.sample(range(len(out)), n):
        out[i] = rng.choice(words)
    return out


def planted_corpus(root: Path, bases: int = 240, seed: int = 0) -> dict:
    """Three sources (a folder of text files, two JSONL files) of distinct documents, with
    planted near duplicates (1-3 words changed: Jaccard 0.77-0.98), exact duplicates (case and
    spacing changed) and decoys (10-14% of words changed: Jaccard about 0.3-0.5), each placed
    after its original in corpus order, in the same file, another file or another source."""
    rng = random.Random(seed)
    words = sorted(set(SHAKESPEARE.read_text().split()))
    docs = [[rng.choice(words) for _ in range(rng.randint(120, 260))] for _ in range(bases)]
    slots: list[list[str]] = [[], [], []]  # text files, a.jsonl, b.jsonl: read in this order
    for i, doc in enumerate(docs):
        slots[min(2, i * 3 // bases)].append(" ".join(doc))
    near, decoys = [], []
    for i in rng.sample(range(bases), 90):
        text = " ".join(changed(rng, words, docs[i], rng.randint(1, 3)))
        near.append((" ".join(docs[i]), text))
        slots[min(2, i * 3 // bases + rng.randint(0, 1))].append(text)
    for i in rng.sample(range(bases), 40):
        text = " ".join(changed(rng, words, docs[i], int(rng.uniform(0.1, 0.14) * len(docs[i]))))
        decoys.append((" ".join(docs[i]), text))
        slots[2].append(text)
    for i in rng.sample(range(bases * 2 // 3), 30):
        slots[2].append("  ".join(docs[i]).upper())
    folder = root / "texts"
    folder.mkdir(parents=True)
    for i, text in enumerate(slots[0]):
        (folder / f"doc{i:04d}.txt").write_text(text)
    for name, slot in (("a.jsonl", slots[1]), ("b.jsonl", slots[2])):
        (root / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in slot))
    sources = f"text:{folder},jsonl:{root / 'a.jsonl'},jsonl:{root / 'b.jsonl'}"
    return {"sources": sources, "near": near, "decoys": decoys, "exact": 30}


def kept_documents(path: Path) -> set[str]:
    return {
        json.loads(line)["text"]
        for split in ("train", "val")
        for line in (path / f"{split}.jsonl").read_text().splitlines()
    }


def quality(path: Path, corpus: dict) -> dict:
    """Recall on planted near duplicates with Jaccard >= 0.8; planted documents dropped whose
    best kept match is below Jaccard 0.5 (false drops); decoys below 0.5 that were kept."""
    kept = kept_documents(path)
    near = [(a, b) for a, b in corpus["near"] if jaccard(a, b) >= 0.8]
    found = sum(b not in kept for _, b in near)
    planted = {b for _, b in corpus["near"]} | {b for _, b in corpus["decoys"]}
    dropped = [b for b in planted if b not in kept]
    false = [b for b in dropped if max(jaccard(b, k) for k in kept) < 0.5]
    decoys = [b for a, b in corpus["decoys"] if jaccard(a, b) < 0.5]
    return {
        "recall": found / len(near), "pairs": len(near), "false_drops": len(false),
        "decoys_below_0.5": len(decoys), "decoys_kept": sum(b in kept for b in decoys),
    }  # fmt: skip


def assert_same_data_dir(a: Path, b: Path) -> None:
    """Every file byte-identical; metadata.json and report.txt up to how the run went
    (timings, which processes, config.workers) and where the dir is (config.path)."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        one, two = (a / name).read_bytes(), (b / name).read_bytes()
        if name == "metadata.json":
            one, two = (_content(json.loads(x)) for x in (one, two))
        elif name == "report.txt":
            one, two = ([s for s in x.decode().splitlines() if not s.startswith("time")]
                        for x in (one, two))  # fmt: skip
        assert one == two, name


def _content(meta: dict) -> dict:
    meta = {k: v for k, v in meta.items() if k not in ("seconds", "timings")}
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in ("path", "workers")}
    return meta


def config(sources: str, **overrides) -> DataConfig:
    settings = dict(sources=sources, tokenizer=TokenizerConfig("bpe", 600, train_mb=0.3))
    return DataConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    return planted_corpus(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def local_build(planted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "data"
    return build_dataset(config(planted["sources"]), out, verbose=False).path


# ---------------------------------------------------------------- the global rule


def chained_corpus(seed: int) -> list[str]:
    """Documents drifting a few words at a time (chains of near duplicates), shuffled: the
    case where a kept document can miss being a bucket's representative (an orphan)."""
    rng = random.Random(seed)
    words = SHAKESPEARE.read_text().split()
    docs = []
    for _ in range(50):
        base = [rng.choice(words) for _ in range(rng.randint(30, 120))]
        for _ in range(rng.randint(1, 20)):
            docs.append(" ".join(base))
            for _ in range(rng.randint(1, 3)):
                base[rng.randrange(len(base))] = rng.choice(words)
    rng.shuffle(docs)
    return docs


def global_dropped(texts: list[str], cfg: DedupConfig, parts: int) -> tuple[set[int], int]:
    """The global rule over `parts` hash partitions; (dropped ids, orphan reruns)."""
    keys = dedup_lib.KeyMaker(cfg)(texts)
    records = dedup_lib.key_records(np.arange(len(texts)), keys)
    split = [records[records["h"] % np.uint64(parts) == p] for p in range(parts)]
    need, resolution, reruns = dedup_lib.min_equal(cfg), dedup_lib.NearResolution(), 0

    def sigs(part):
        return lambda positions: keys.sigs[part["id"][positions]]

    for part in split:
        resolution.add(dedup_lib.resolve_partition(part, sigs(part), need).arrays())
    while orphans := resolution.solve():
        reruns += 1
        for part in split:
            part = part[np.isin(part["h"], [h for _, h in orphans])]
            resolution.add(dedup_lib.resolve_partition(part, sigs(part), need, orphans).arrays())
    return set(resolution.dropped().tolist()), reruns


@pytest.mark.parametrize(
    "cfg",
    [DedupConfig(threshold=t) for t in (0.5, 0.7, 0.8, 0.9)]
    + [DedupConfig(exact=False), DedupConfig(near=False), DedupConfig(num_perm=64, shingle_size=3)],
    ids=["t0.5", "t0.7", "t0.8", "t0.9", "near-only", "exact-only", "p64-k3"],
)
def test_global_rule_is_the_sequential_rule(cfg):
    """Partitioned, order-free resolution drops exactly what Deduplicator (first occurrence
    kept, in order) drops, on chains of near duplicates where orphans occur."""
    reruns = 0
    for seed in range(3):
        texts = chained_corpus(seed)
        texts += [t.upper() for t in texts[::7]]  # exact copies, later
        sequential = dedup_lib.Deduplicator(cfg)
        expected = {i for i, t in enumerate(texts) if not sequential.keep(t)}
        found, n = global_dropped(texts, cfg, parts=3)
        assert found == expected
        reruns += n
    if cfg.near and cfg.threshold >= 0.8 and cfg.exact:
        assert reruns > 0, "no orphan met: the forced pass went untested"


def test_resolve_bucket_compares_with_representatives_only():
    """n copies cost n - 1 comparisons with one representative; a dissimilar member becomes a
    representative itself; a forced member is compared with every later one."""
    sigs = np.zeros((5, 8), np.uint32)
    sigs[2] = 7  # unlike the others
    ids = np.array([10, 11, 12, 13, 14])
    a, b, nonrep = dedup_lib.resolve_bucket(ids, sigs, need=8)
    assert sorted(zip(a, b, strict=True)) == [(10, 11), (10, 13), (10, 14)]
    assert nonrep.tolist() == [11, 13, 14]
    a, b, _ = dedup_lib.resolve_bucket(ids, sigs, need=8, forced=np.array([11]))
    assert {(11, 13), (11, 14)} <= set(zip(a.tolist(), b.tolist(), strict=True))


# ---------------------------------------------------------------- the local engine


def test_local_pool_and_partitions_give_the_same_bytes(planted, local_build, tmp_path, monkeypatch):
    """Pass A in worker processes, key records in many partitions on disk: the same data dir
    as in one process with one partition; each worker reports what it did."""
    monkeypatch.setattr(engine_local, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(engine_local, "PARTITION_INPUT_BYTES", 40_000)
    monkeypatch.setattr(stages, "BATCH_BYTES", 50_000)
    cfg = config(planted["sources"], workers=2)
    info = build_dataset(cfg, tmp_path / "data", verbose=False)
    assert_same_data_dir(local_build, info.path)
    timings = json.loads((info.path / "metadata.json").read_text())["timings"]
    assert any(p.startswith("dedup (") and "1 partition" not in p for p in timings["passes"])
    keys = [w for w in timings["per_worker"] if w["stage"] == "read → keys"]
    pids = {w["pid"] for w in keys}  # worker processes (one may take every batch, if faster)
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids
    assert not list(tmp_path.glob("data.tmp-*")) and not list(info.path.glob("_work-*"))


def test_dedup_quality_on_planted_duplicates_local(planted, local_build):
    found = quality(local_build, planted)
    print(f"local engine: {found}")
    assert found["pairs"] >= 80 and found["recall"] >= 0.95 and found["false_drops"] == 0
    assert found["decoys_below_0.5"] >= 30 and found["decoys_kept"] == found["decoys_below_0.5"]
    meta = json.loads((local_build / "metadata.json").read_text())
    assert meta["dedup"]["exact_duplicates"] >= planted["exact"]
    assert set(meta["sources"]) == set(planted["sources"].split(","))
    report = (local_build / "report.txt").read_text()
    assert "after cleaning → after dedup" in report and "time  read → clean → keys" in report


# ---------------------------------------------------------------- bad input


def test_engine_ray_without_ray_says_how_to_install(planted, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    out = tmp_path / "data"
    with pytest.raises(ImportError, match=r"pip install 'jaxgpt\[ray\]'"):
        build_dataset(config(planted["sources"], engine="ray"), out, verbose=False)
    assert list(tmp_path.iterdir()) == []  # no data dir, no staging dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_cluster_at_the_address_fails_fast(planted, tmp_path):
    pytest.importorskip("ray.data")
    address = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"no Ray cluster at data.ray_address={address}"):
        build_dataset(
            config(planted["sources"], engine="ray", ray_address=address), tmp_path / "data",
            verbose=False,
        )  # fmt: skip
    assert time.monotonic() - began < 30
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"engine": "spark"}, r"data.engine='spark' is not one of \('local', 'ray'\)"),
        ({"engine": "ray", "ray_address": "head"}, r"data.ray_address='head' is not"),
        ({"ray_address": "auto"}, r"set data.engine=ray"),
    ],
)
def test_engine_settings_are_checked(settings, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**settings)


# ---------------------------------------------------------------- a real Ray cluster


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live process, from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, UnicodeDecodeError):
            continue
        if fields[0] != "Z":
            found[int(stat.parent.name)] = (int(fields[1]), cmdline)
    return found


def cluster_processes(temp_dir: Path) -> dict[int, str]:
    """The processes of the cluster whose files are under temp_dir: those naming it on their
    command line (gcs_server, raylets, monitors) and all their descendants (workers, agents)."""
    procs = processes()
    ours = {pid for pid, (_, cmd) in procs.items() if str(temp_dir) in cmd}
    grew = True
    while grew:
        more = {pid for pid, (parent, _) in procs.items() if parent in ours} - ours
        ours |= more
        grew = bool(more)
    return {pid: procs[pid][1] for pid in ours}


def stop_cluster(temp_dir: Path) -> list[str]:
    """SIGKILL this cluster's processes, by pid (`ray stop` would stop every Ray on the
    machine); returns those still alive 30 s later."""
    deadline = time.monotonic() + 30
    while (left := cluster_processes(temp_dir)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):  # gone meanwhile
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    return sorted(left.values())


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head node and a second node joined with `ray start --address`, one CPU each, on
    loopback, with their files under this test's tmp dir; stopped (every process) after."""
    pytest.importorskip("ray.data")
    if not Path("/proc").is_dir():
        pytest.skip("telling this cluster's processes from others needs /proc (Linux)")
    temp_dir = tmp_path_factory.mktemp("ray")
    env = {**os.environ, **RAY_ENV}
    port = free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={temp_dir}"]
    head = ["--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats"]
    try:
        for extra in (head, [f"--address=127.0.0.1:{port}"]):
            run = subprocess.run(
                # ray's own CLI, through this interpreter (no `ray` script on PATH needed)
                [sys.executable, "-m", "ray.scripts.scripts", "start", *extra, *common],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert run.returncode == 0, run.stdout + run.stderr
        yield {"address": f"127.0.0.1:{port}", "temp_dir": temp_dir}
    finally:
        left = stop_cluster(temp_dir)
        assert left == [], f"Ray processes outlived the test: {left}"


@pytest.fixture
def ray_env(monkeypatch):
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.mark.slow
@pytest.mark.e2e
def test_ray_cluster_writes_the_local_engines_bytes(
    ray_cluster, ray_env, planted, local_build, tmp_path
):
    """Two nodes, duplicates planted across sources and files: the data dir equals the local
    engine's byte for byte, both nodes did work, and the dedup quality holds."""
    cfg = config(planted["sources"], engine="ray", ray_address=ray_cluster["address"])
    info = build_dataset(cfg, tmp_path / "data", verbose=False)
    assert_same_data_dir(local_build, info.path)
    timings = json.loads((info.path / "metadata.json").read_text())["timings"]
    assert timings["engine"] == "ray" and timings["workers"] == 2
    assert len({w["node"] for w in timings["per_worker"]}) == 2, timings["per_worker"]
    found = quality(info.path, planted)
    print(f"Ray engine: {found}")
    assert found["recall"] >= 0.95 and found["false_drops"] == 0
    assert found["decoys_kept"] == found["decoys_below_0.5"] >= 30


class Killer(threading.Thread):
    """Kills the first worker process of the cluster seen running a Ray Data map task."""

    def __init__(self, temp_dir: Path):
        super().__init__(daemon=True)
        self.temp_dir, self.killed, self.stop = temp_dir, None, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            for pid, cmd in cluster_processes(self.temp_dir).items():
                if cmd.startswith("ray::") and "MapBatches(" in cmd:
                    os.kill(pid, signal.SIGKILL)
                    self.killed = cmd.strip()
                    return
            time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.e2e
def test_ray_worker_killed_mid_pipeline_gives_the_same_bytes(
    ray_cluster, ray_env, tmp_path_factory
):
    """SIGKILL of one worker process running a stage: Ray retries its task and the data dir is
    still the local engine's, byte for byte."""
    corpus = planted_corpus(tmp_path_factory.mktemp("bigger"), bases=1500, seed=1)
    cfg = config(corpus["sources"], tokenizer=TokenizerConfig("bpe", 1000, train_mb=0.5))
    reference = build_dataset(cfg, tmp_path_factory.mktemp("ref") / "data", verbose=False)
    killer = Killer(ray_cluster["temp_dir"])
    killer.start()
    try:
        ray_cfg = dataclasses.replace(cfg, engine="ray", ray_address=ray_cluster["address"])
        info = build_dataset(ray_cfg, tmp_path_factory.mktemp("ray-out") / "data", verbose=False)
    finally:
        killer.stop.set()
        killer.join()
    print(f"killed: {killer.killed}")
    assert killer.killed, "no worker was seen running a task: nothing was killed"
    assert_same_data_dir(reference.path, info.path)


@pytest.mark.slow
@pytest.mark.e2e
def test_ray_bad_input_fails_as_the_local_engine_does(ray_cluster, ray_env, tmp_path):
    """A bad line with data.strict: the same error (naming file:line) on both engines, raised
    from the Ray worker as it is, and no data dir or staging dir left."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    messages = []
    for engine, address in (("local", ""), ("ray", ray_cluster["address"])):
        cfg = config(f"jsonl:{bad}", strict=True, engine=engine, ray_address=address)
        with pytest.raises(ValueError) as failed:
            build_dataset(cfg, tmp_path / engine, verbose=False)
        messages.append(str(failed.value))
    assert messages[0] == messages[1] and f"{bad}:2: invalid JSON" in messages[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


# ---------------------------------------------------------------- a multistream wiki dump


@pytest.fixture(scope="module")
def multistream_dump(tmp_path_factory) -> Path:
    """A pages-articles-multistream dump (20 pages per bz2 stream) and its index."""
    from wiki_fixtures import generate_pages, multistream

    folder = tmp_path_factory.mktemp("wiki")
    dump, index = multistream(generate_pages(400, seed=7), per=20)
    (folder / "enwiki-pages-articles-multistream-index.txt.bz2").write_bytes(index)
    path = folder / "enwiki-pages-articles-multistream.xml.bz2"
    path.write_bytes(dump)
    return path


@pytest.fixture(scope="module")
def wiki_whole_build(multistream_dump, tmp_path_factory) -> Path:
    """The dump read whole: one read task, in this process."""
    cfg = config(f"wiki:{multistream_dump}")
    assert len(stages.plan_tasks(cfg)) == 1
    return build_dataset(cfg, tmp_path_factory.mktemp("whole") / "data", verbose=False).path


def split_dump(monkeypatch, path: Path) -> None:
    """Parts of about a quarter of the file: several read tasks for one dump."""
    from jaxgpt.data import wiki

    monkeypatch.setattr(wiki, "PART_BYTES", path.stat().st_size // 4)


def test_multistream_parts_give_the_same_bytes(multistream_dump, wiki_whole_build, tmp_path,
                                               monkeypatch):  # fmt: skip
    """The dump split into parts (read tasks of whole bz2 streams) with a pool of 2 workers
    writes the data dir of the dump read whole in one process, byte for byte."""
    split_dump(monkeypatch, multistream_dump)
    monkeypatch.setattr(engine_local, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(stages, "BATCH_BYTES", 50_000)
    cfg = config(f"wiki:{multistream_dump}", workers=2)
    assert len(stages.plan_tasks(cfg)) >= 3
    info = build_dataset(cfg, tmp_path / "data", verbose=False)
    assert_same_data_dir(wiki_whole_build, info.path)
    meta = json.loads((info.path / "metadata.json").read_text())
    assert meta["splits"]["train"]["tokens"] > 0


@pytest.mark.slow
@pytest.mark.e2e
def test_ray_reads_multistream_parts_as_the_local_engine(
    ray_cluster, ray_env, multistream_dump, wiki_whole_build, tmp_path, monkeypatch
):
    """Ray Data reads the parts (planned on the driver, read on both nodes): the same bytes."""
    split_dump(monkeypatch, multistream_dump)
    cfg = config(f"wiki:{multistream_dump}", engine="ray", ray_address=ray_cluster["address"])
    assert len(stages.plan_tasks(cfg)) >= 3
    info = build_dataset(cfg, tmp_path / "data", verbose=False)
    assert_same_data_dir(wiki_whole_build, info.path)


# ---------------------------------------------------------------- web text and quality filters


def web_corpus(root: Path, files: int = 3, pages: int = 40, seed: int = 2) -> str:
    """WARC files of English pages (some spam, some Russian, some boilerplate-only) and a
    JSONL file whose documents the quality filters all drop: the sources spec."""
    from web_fixtures import ENGLISH, RUSSIAN, page, write_warc

    rng = random.Random(seed)
    words = sorted(set(SHAKESPEARE.read_text().split()))
    specs = []
    for f in range(files):
        chosen = {}
        for i in range(pages):
            kind = rng.choice(["prose"] * 6 + ["spam", "russian"])
            if kind == "prose":
                lines = [" ".join(rng.choice(words) for _ in range(12)).capitalize() + "."
                         for _ in range(rng.randint(5, 9))] + ENGLISH  # fmt: skip
            else:
                spam = [" ".join(["Buy the best watches and the cheapest rings today."] * 12)]
                lines = spam if kind == "spam" else RUSSIAN
            body = page(f"Page {f}-{i}", lines).encode()
            uri = f"https://example.com/{f}/{i}"
            chosen[i] = (uri, "200 OK", "text/html; charset=utf-8", body, [], lines)
        specs.append(f"warc:{write_warc(root / f'crawl-{f}.warc.gz', chosen, revisit=f == 0)}")
    spam = root / "spam.jsonl"
    spam.write_text("".join(json.dumps({"text": "Click here! " * 30}) + "\n" for _ in range(5)))
    return ",".join([*specs, f"jsonl:{spam}"])


WEB_QUALITY = dict(gopher_repetition=True, gopher_quality=True, c4=True, fineweb=True,
                   language=True)  # fmt: skip


@pytest.fixture(scope="module")
def web_sources(tmp_path_factory) -> str:
    return web_corpus(tmp_path_factory.mktemp("web"))  # needs jaxgpt[web] (in jaxgpt[test])


def web_config(sources: str, **overrides) -> DataConfig:
    from jaxgpt.config.data import QualityConfig

    return config(sources, tokenizer=TokenizerConfig("char", 0, train_mb=0.3),
                  quality=QualityConfig(**WEB_QUALITY), **overrides)  # fmt: skip


@pytest.fixture(scope="module")
def web_build(web_sources, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("web-local") / "data"
    return build_dataset(web_config(web_sources), out, verbose=False).path


def test_web_quality_pool_gives_the_same_bytes(web_sources, web_build, tmp_path, monkeypatch):
    """warc: and every quality filter, in worker processes with small batches: the same data
    dir (report included: drops by rule, files that gave nothing) as in one process."""
    report = (web_build / "report.txt").read_text()
    for rule in ("quality_language", "quality_gopher_repetition", "warc_revisit"):
        assert rule in report, report
    assert "spam.jsonl: all 5 documents dropped by clean (quality_" in report
    monkeypatch.setattr(engine_local, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(stages, "BATCH_BYTES", 3_000)
    info = build_dataset(web_config(web_sources, workers=2), tmp_path / "data", verbose=False)
    assert_same_data_dir(web_build, info.path)


@pytest.mark.slow
@pytest.mark.e2e
def test_ray_web_quality_writes_the_local_engines_bytes(
    ray_cluster, ray_env, web_sources, web_build, tmp_path
):
    """The same on a two-node Ray cluster: filters run in Ray's workers, bytes as local."""
    cfg = web_config(web_sources, engine="ray", ray_address=ray_cluster["address"])
    info = build_dataset(cfg, tmp_path / "data", verbose=False)
    assert_same_data_dir(web_build, info.path)


# ---------------------------------------------------------------- the local engine's modes


def local_mode(cfg: DataConfig, tmp: Path) -> str:
    """The mode the local engine picks for cfg's tasks (given a staging dir for work files)."""
    engine = engine_local.LocalEngine(cfg, verbose=False)
    engine.tmp = tmp
    return engine._mode(stages.plan_tasks(cfg))


def worker_stages(info_path: Path) -> dict[str, set[int]]:
    """Each worker-row stage of a build's metadata.json → the pids that reported it."""
    timings = json.loads((info_path / "metadata.json").read_text())["timings"]
    found: dict[str, set[int]] = {}
    for row in timings["per_worker"]:
        found.setdefault(row["stage"], set()).add(row["pid"])
    return found


def test_local_mode_rule_and_input_bytes(multistream_dump, tmp_path, monkeypatch):
    """One worker or little input: in process; several tasks, none over half the input: tasks;
    one file: batches. A multistream dump's parts count their own bytes, the file's once."""
    monkeypatch.setattr(engine_local, "POOL_MIN_BYTES", 0)
    one = config(f"wiki:{multistream_dump}", workers=2)
    assert local_mode(one, tmp_path) == "batches"
    assert local_mode(dataclasses.replace(one, workers=1), tmp_path) == "in process"
    split_dump(monkeypatch, multistream_dump)
    tasks = stages.plan_tasks(one)
    assert len(tasks) >= 3
    size = multistream_dump.stat().st_size
    assert engine_local._input_bytes(one, tasks) == size
    assert local_mode(one, tmp_path) == "tasks"
    other = tmp_path / "other.jsonl"  # a file twice the dump's size: it gets the batches
    other.write_text(json.dumps({"text": "x" * 2 * size}) + "\n")
    assert local_mode(config(f"wiki:{multistream_dump},jsonl:{other}", workers=2), tmp_path) == (
        "batches"
    )
    monkeypatch.setattr(engine_local, "POOL_MIN_BYTES", size + 1)
    assert local_mode(one, tmp_path) == "in process"


def several_files(folder: Path, seed: int) -> str:
    """data.sources for the planted corpus with its big JSONL file cut in two, so that no file
    holds half the input (the local engine's rule for reading whole files in its workers)."""
    corpus = planted_corpus(folder, bases=120, seed=seed)
    big = folder / "b.jsonl"
    lines = big.read_text().splitlines(keepends=True)
    (folder / "b1.jsonl").write_text("".join(lines[: len(lines) // 2]))
    (folder / "b2.jsonl").write_text("".join(lines[len(lines) // 2 :]))
    return corpus["sources"].replace(f"jsonl:{big}", f"jsonl:{big.with_name('b[12].jsonl')}")


def test_local_task_mode_gives_the_same_bytes(tmp_path, monkeypatch):
    """Several files read whole by 2 workers (pass A and pass B), each task's batches
    streamed back through a work file: the bytes of one process; reading counted in the
    workers; no work file left."""
    sources = several_files(tmp_path / "corpus", seed=3)
    reference = build_dataset(config(sources, workers=1), tmp_path / "one", verbose=False)
    monkeypatch.setattr(engine_local, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(stages, "BATCH_BYTES", 20_000)
    cfg = config(sources, workers=2)
    assert local_mode(cfg, tmp_path) == "tasks"
    info = build_dataset(cfg, tmp_path / "two", verbose=False)
    assert_same_data_dir(reference.path, info.path)
    found = worker_stages(info.path)
    for stage in ("read → keys", "read → filter"):
        assert found[stage] and os.getpid() not in found[stage], found
    timings = json.loads((info.path / "metadata.json").read_text())["timings"]
    assert {"read", "clean", "keys", "read (pass B)", "clean (pass B)"} <= set(timings["busy_s"])
    assert not list(info.path.glob("_work-*")) and not list(tmp_path.glob("two.tmp-*"))


def test_task_mode_without_dedup_reads_in_the_workers(tmp_path, monkeypatch):
    """With dedup off there is no pass A; pass B alone still reads the files in the workers
    (the staging dir for its work files comes from the build) and writes one process's bytes."""
    sources = several_files(tmp_path / "corpus", seed=5)
    no_dedup = DedupConfig(exact=False, near=False)
    reference = build_dataset(
        config(sources, workers=1, dedup=no_dedup), tmp_path / "one", verbose=False
    )
    monkeypatch.setattr(engine_local, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(stages, "BATCH_BYTES", 20_000)
    cfg = config(sources, workers=2, dedup=no_dedup)
    modes, pick = [], engine_local.LocalEngine._mode
    monkeypatch.setattr(
        engine_local.LocalEngine,
        "_mode",
        lambda self, tasks: modes.append(pick(self, tasks)) or modes[-1],
    )
    info = build_dataset(cfg, tmp_path / "two", verbose=False)
    assert modes == ["tasks"], modes  # pass B alone, reading in the workers
    assert_same_data_dir(reference.path, info.path)
    found = worker_stages(info.path)
    assert found["read → filter"] and os.getpid() not in found["read → filter"], found
    assert not list(info.path.glob("_work-*"))


def test_multistream_parts_read_in_the_workers(multistream_dump, wiki_whole_build, tmp_path,
                                               monkeypatch):  # fmt: skip
    """A dump's parts are read by the workers themselves (task mode, in both passes): the
    bytes of the dump read whole in one process."""
    split_dump(monkeypatch, multistream_dump)
    monkeypatch.setattr(engine_local, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(stages, "BATCH_BYTES", 30_000)
    cfg = config(f"wiki:{multistream_dump}", workers=2)
    assert local_mode(cfg, tmp_path) == "tasks"
    info = build_dataset(cfg, tmp_path / "data", verbose=False)
    assert_same_data_dir(wiki_whole_build, info.path)
    found = worker_stages(info.path)
    assert os.getpid() not in found["read → keys"] | found["read → filter"], found


def test_pass_b_cleans_in_the_pool(planted, tmp_path, monkeypatch):
    """One file (batch mode): pass B's batches cleaned in the workers, results in order, the
    dropped ids dropped here: the bytes of one process."""
    one_file = planted["sources"].split(",")[-1]  # b.jsonl: near duplicates inside
    reference = build_dataset(config(one_file), tmp_path / "one", verbose=False)
    monkeypatch.setattr(engine_local, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(stages, "BATCH_BYTES", 20_000)
    cfg = config(one_file, workers=2)
    assert local_mode(cfg, tmp_path) == "batches"
    info = build_dataset(cfg, tmp_path / "two", verbose=False)
    assert_same_data_dir(reference.path, info.path)
    meta = json.loads((info.path / "metadata.json").read_text())
    assert meta["dedup"]["near_duplicates"] > 0
    found = worker_stages(info.path)
    assert found["read → filter"] and os.getpid() not in found["read → filter"], found


def test_task_mode_bad_file_fails_as_in_process(tmp_path, monkeypatch):
    """A corrupt file among several (data.strict): read in a worker, it fails with the error
    of one process, and the staging dir and its work files are gone."""
    import gzip

    folder = tmp_path / "in"
    folder.mkdir()
    text = " ".join(SHAKESPEARE.read_text().split()[:400])
    for i in range(4):
        lines = "".join(json.dumps({"text": f"{i} {j} {text[j * 50 :]}"}) + "\n" for j in range(40))
        (folder / f"f{i}.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (folder / "f2.jsonl.gz").write_bytes((folder / "f2.jsonl.gz").read_bytes()[:-300])
    errors = []
    monkeypatch.setattr(engine_local, "POOL_MIN_BYTES", 0)
    for workers in (1, 2):
        cfg = config(f"jsonl:{folder}", workers=workers, strict=True)
        if workers == 2:
            assert local_mode(cfg, tmp_path) == "tasks"
        with pytest.raises(ValueError) as caught:
            build_dataset(cfg, tmp_path / f"data{workers}", verbose=False)
        errors.append((type(caught.value), str(caught.value)))
        assert not list(tmp_path.glob(f"data{workers}*"))
    assert errors[0] == errors[1] and "f2.jsonl.gz" in errors[0][1], errors
