"""prepare under faults: a full disk (injected at the file layer, and a real tmpfs), leftovers of
killed builds, half-written data dirs, and `python -m jaxgpt.prepare` killed with SIGKILL at
random moments. Every case ends in a data dir byte-identical to an uninterrupted build's."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from data_inputs import write_docs

from jaxgpt import prepare
from jaxgpt.config.data import TokenizerConfig
from jaxgpt.data import staging
from jaxgpt.data.build import build_dataset, prepare_dataset
from jaxgpt.data.dataset import DataConfig, dataset_key, load_dataset
from jaxgpt.data.sources import SHAKESPEARE

REPO = Path(__file__).resolve().parent.parent
TIMING_FIELDS = ("seconds", "timings")  # metadata.json fields that differ run to run


@pytest.fixture
def docs(tmp_path, shakespeare) -> Path:
    """80 documents, ~0.5 MB: several shards of each split."""
    text = shakespeare.read_text()
    return write_docs(tmp_path / "docs", [text[i * 6000 : i * 6000 + 6000] for i in range(80)])


def data_config(docs: Path, **overrides) -> DataConfig:
    settings = dict(
        sources=f"text:{docs}", tokenizer=TokenizerConfig("char", 0), workers=1, shard_mb=0.1
    )
    return DataConfig(**{**settings, **overrides})


def assert_same_data_dir(a: Path, b: Path) -> None:
    """Every file byte-identical, except metadata.json's timings and report.txt's time line."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        one, two = (a / name).read_bytes(), (b / name).read_bytes()
        if name == "metadata.json":
            one, two = (_without_timings(json.loads(x)) for x in (one, two))
        elif name == "report.txt":
            one, two = (_without_time_line(x.decode()) for x in (one, two))
        assert one == two, name


def _without_timings(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in TIMING_FIELDS}


def _without_time_line(report: str) -> list[str]:
    return [line for line in report.splitlines() if not line.startswith("time ")]


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f"{out.name}.tmp-*"))


# ---------------------------------------------------------------- a full disk, injected


class Disk:
    """A disk of `free` bytes under every data-dir write: writes past it fail with ENOSPC,
    part-way as a real one does (a short write, then the error)."""

    def __init__(self, monkeypatch, free: int):
        self.free = free
        disk = self

        class FileOnDisk(io.FileIO):
            def write(self, data) -> int:
                view = memoryview(data).cast("B")
                if disk.free is not None and len(view) > disk.free:
                    if disk.free == 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    view = view[: disk.free]
                n = super().write(view)
                if disk.free is not None:
                    disk.free -= n
                return n

        monkeypatch.setattr(staging, "open_raw", lambda path: FileOnDisk(path, "w"))


def open_deleted_files() -> list[str]:
    """Files this process still holds open after they were deleted: their space is not freed."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return []
    targets = []
    for fd in fds.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue
    return [t for t in targets if t.endswith("(deleted)") and ".tmp-" in t]


@pytest.fixture
def reference(docs, tmp_path) -> Path:
    """An uninterrupted build of data_config(docs)."""
    return build_dataset(data_config(docs), tmp_path / "reference", verbose=False).path


def file_sizes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in path.iterdir()}


@pytest.mark.parametrize("where", ["jsonl", "shards", "metadata", "report"])
def test_full_disk_fails_cleanly_then_resumes(docs, tmp_path, reference, monkeypatch, where):
    """ENOSPC at any point of the build: one clear error naming the file, no data dir and no
    staging dir left, no file held open; with space freed, the rerun builds the same bytes."""
    sizes = file_sizes(reference)
    total = sum(sizes.values())
    free = {
        "jsonl": sizes["train.jsonl"] // 3,
        "shards": total - sizes["val-00000.bin"] - sizes["metadata.json"] - sizes["report.txt"],
        "metadata": total - sizes["report.txt"] - 10,
        "report": total - 10,
    }[where]
    disk = Disk(monkeypatch, free)
    out = tmp_path / "data"
    with pytest.raises(staging.WriteError) as failed:
        prepare_dataset(data_config(docs), out, verbose=False)
    message = str(failed.value)
    assert "No space left on device" in message and f"the data dir {out} " in message
    assert f"{out.name}.tmp-" in message  # the file that failed, in the staging dir
    assert "Free space on that filesystem" in message and "rerun the same command" in message
    assert failed.value.__cause__ is None and failed.value.__suppress_context__
    assert not out.exists() and leftovers(out) == []
    assert open_deleted_files() == []
    disk.free = None  # space freed
    info = prepare_dataset(data_config(docs), out, verbose=False)
    assert_same_data_dir(reference, info.path)


def test_full_disk_keeps_the_previous_data_dir(docs, tmp_path, monkeypatch):
    """A rebuild (settings changed) that runs out of space leaves the old data dir as it was."""
    out = tmp_path / "data"
    old = prepare_dataset(data_config(docs), out, verbose=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    Disk(monkeypatch, 100_000)
    with pytest.raises(staging.WriteError, match="is unchanged"):
        prepare_dataset(data_config(docs, val_fraction=0.3), out, verbose=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_dataset(out) == old and leftovers(out) == []


def test_full_disk_cli_prints_one_error(docs, tmp_path, monkeypatch):
    """python -m jaxgpt.prepare on a full disk: `error: ...` and exit 1, no traceback."""
    Disk(monkeypatch, 50_000)
    out = tmp_path / "cli"
    args = [
        "--config", "configs/tiny.py", f"--config.data.sources=text:{docs}",
        f"--config.data.path={out}", "--config.data.tokenizer.model_type=char",
        "--config.data.tokenizer.vocab_size=0",
    ]  # fmt: skip
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exited:
        prepare.main(args)
    assert isinstance(exited.value.code, str)  # sys.exit(message): printed, exit status 1
    assert exited.value.code.startswith(f"error: could not write the data dir {out} (")
    assert "No space left on device" in exited.value.code and "\n" not in exited.value.code
    assert not out.exists() and leftovers(out) == []


# ---------------------------------------------------------------- a full disk, for real


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MB tmpfs mounted for the test (root only); skipped where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_full_disk_* inject ENOSPC instead")
    mount = ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)]
    try:
        done = subprocess.run(mount, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command here; test_full_disk_* inject ENOSPC instead")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); see test_full_disk_*")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


@pytest.mark.e2e  # runs mount and umount
def test_real_full_tmpfs_then_space_freed(docs, tmp_path, small_tmpfs):
    """On a real 3 MB tmpfs another file fills: the build fails with ENOSPC and gives back all
    it wrote; once that file is deleted, the same call builds what it builds anywhere."""
    out = small_tmpfs / "data"
    cfg = data_config(docs)
    info = build_dataset(cfg, out, verbose=False)
    need = sum(file_sizes(info.path).values())
    shutil.move(out, tmp_path / "reference")
    filler = small_tmpfs / "someone-else.bin"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_tmpfs).free - need // 2))
    used = shutil.disk_usage(small_tmpfs).used
    with pytest.raises(staging.WriteError, match="No space left on device") as failed:
        prepare_dataset(cfg, out, verbose=False)
    assert "errno 28" in str(failed.value)
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["someone-else.bin"]
    assert shutil.disk_usage(small_tmpfs).used <= used  # nothing held open by the failed build
    filler.unlink()
    info = prepare_dataset(cfg, out, verbose=False)
    assert_same_data_dir(tmp_path / "reference", info.path)


# ---------------------------------------------------------------- leftovers and half-written dirs


def test_abandoned_staging_dirs_removed_live_one_kept(docs, tmp_path, capsys):
    """Staging dirs of killed builds (nobody holds their lock) are removed, with a note; one a
    live build holds is left alone."""
    out = tmp_path / "data"
    cfg = data_config(docs)
    dead = tmp_path / f"data.tmp-{dataset_key(cfg)}-999999"
    dead.mkdir()
    (dead / "train.jsonl").write_text('{"text": "half"}\n')
    aside = tmp_path / "data.tmp-old-999999"  # a kill between the two renames of a commit
    aside.mkdir()
    live = tmp_path / "data.tmp-0123456789abcdef-1"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        prepare_dataset(cfg, out, verbose=True)
        assert leftovers(out) == [live.name]
    finally:
        os.close(fd)
    printed = capsys.readouterr().out
    assert f"data: removed {dead}, left by a build that was killed" in printed
    prepare_dataset(cfg, out, verbose=False)  # current: reused, and the now-dead one removed
    assert leftovers(out) == []


def test_data_dir_without_metadata_is_rebuilt_with_a_note(docs, tmp_path, reference, capsys):
    """A dir missing its completion mark (metadata.json) is never loaded; prepare rebuilds it."""
    out = tmp_path / "data"
    shutil.copytree(reference, out)
    (out / "metadata.json").unlink()
    with pytest.raises(FileNotFoundError, match="not a prepared data dir"):
        load_dataset(out)
    prepare_dataset(data_config(docs), out, verbose=True)
    assert f"data: {out} has no metadata.json" in capsys.readouterr().out
    assert_same_data_dir(reference, out)


@pytest.mark.parametrize("listed", [True, False], ids=["files-listed", "older-dir"])
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_data_dir_with_a_short_file_is_rebuilt(docs, tmp_path, reference, capsys, damage, listed):
    """metadata.json lists every file's size (older dirs: their shards' token counts): a
    cut-short or missing shard (an interrupted copy) is caught by load_dataset and rebuilt."""
    out = tmp_path / "data"
    shutil.copytree(reference, out)
    if not listed:
        meta = json.loads((out / "metadata.json").read_text())
        del meta["files"]
        (out / "metadata.json").write_text(json.dumps(meta, indent=2))
        assert load_dataset(out).train_tokens > 0  # still current: no rebuild on upgrade
    shard = out / "train-00001.bin"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:1000])
    else:
        shard.unlink()
    with pytest.raises(FileNotFoundError, match=r"incomplete data dir .*train-00001\.bin"):
        load_dataset(out)
    prepare_dataset(data_config(docs), out, verbose=True)
    assert f"{out} is incomplete (train-00001.bin" in capsys.readouterr().out
    assert_same_data_dir(reference, out)


def test_truncated_metadata_is_rebuilt(docs, tmp_path, reference):
    out = tmp_path / "data"
    shutil.copytree(reference, out)
    meta = out / "metadata.json"
    meta.write_bytes(meta.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"metadata\.json is not valid JSON"):
        load_dataset(out)
    prepare_dataset(data_config(docs), out, verbose=False)
    assert_same_data_dir(reference, out)


def test_a_dir_that_is_not_a_data_dir_is_never_replaced(docs, tmp_path):
    """data.path pointing at a folder of other files (the corpus itself, say) fails clearly
    instead of deleting it to make room."""
    with pytest.raises(ValueError, match=r"holds doc_000.txt, doc_001.txt, doc_002.txt, \.\.\."):
        prepare_dataset(data_config(docs), docs, verbose=False)
    assert len(list(docs.iterdir())) == 80 and leftovers(docs) == []


# ---------------------------------------------------------------- kill -9, for real


def chaos_corpus(path: Path, mb: float) -> Path:
    """A JSONL corpus of distinct ~3 KB documents; over 8 MB of training text (9.2 MB in all)
    puts the encoding in a pool of worker processes (build.IN_PROCESS_BYTES)."""
    text = SHAKESPEARE.read_text()
    with path.open("w") as f:
        size = i = 0
        while size < mb * 1e6:
            start = (i * 7919) % (len(text) - 3000)
            doc = f"document {i}\n" + text[start : start + 3000]
            f.write(json.dumps({"text": doc}) + "\n")
            size, i = size + len(doc), i + 1
    return path


def group_processes(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def wait_group_gone(pgid: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := group_processes(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def reap(proc: subprocess.Popen) -> None:
    """Wait for a prepare's whole process group; fail if any of it outlives it by 10 s."""
    proc.wait(timeout=300)
    try:
        assert wait_group_gone(proc.pid, 10) == [], "workers outlived the prepare"
    finally:
        if group_processes(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


@dataclasses.dataclass
class Chaos:
    """`python -m jaxgpt.prepare` of a 9 MB corpus with 2 encoding workers, and what an
    uninterrupted run of it built."""

    args: list[str]
    out: Path
    reference: Path
    duration: float

    def start(self) -> subprocess.Popen:
        return subprocess.Popen(
            self.args, cwd=REPO, env={**os.environ, "XLA_FLAGS": ""}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,  # its own group: its workers too
        )  # fmt: skip

    def build_again(self) -> None:
        """Run to the end and require the reference's bytes."""
        proc = self.start()
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
        reap(proc)
        assert_same_data_dir(self.reference, self.out)
        assert leftovers(self.out) == []


@pytest.fixture(scope="module")
def chaos(tmp_path_factory) -> Chaos:
    if not Path("/proc").is_dir():
        pytest.skip("finding a killed prepare's orphaned workers needs /proc (Linux)")
    tmp = tmp_path_factory.mktemp("chaos")
    corpus = chaos_corpus(tmp / "corpus.jsonl", mb=9.2)
    out = tmp / "data"
    args = [
        sys.executable, "-m", "jaxgpt.prepare", "--config", "configs/tiny.py",
        f"--config.data.sources=jsonl:{corpus}", f"--config.data.path={out}",
        "--config.data.tokenizer.model_type=char", "--config.data.tokenizer.vocab_size=0",
        "--config.data.dedup.near=False", "--config.data.workers=2", "--config.data.shard_mb=0.5",
    ]  # fmt: skip
    run = Chaos(args, out, tmp / "reference", 0.0)
    began = time.monotonic()
    first = run.start()
    most = 0
    while first.poll() is None and time.monotonic() - began < 300:
        most = max(most, len(group_processes(first.pid)))
        time.sleep(0.05)
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    run.duration = time.monotonic() - began
    assert most >= 3, "the build never started its encoding workers"
    out.rename(run.reference)  # built at the same data.path: metadata.json's config is the same
    return run


@pytest.mark.e2e
@pytest.mark.slow
def test_prepare_killed_at_random_moments(chaos):
    """SIGKILLed at random moments and rerun each time: no worker outlives its killed parent,
    a data dir is there only when whole, and the run that finishes writes the same bytes as
    an uninterrupted build."""
    shutil.rmtree(chaos.out, ignore_errors=True)
    rng = random.Random(29)
    moments = [rng.uniform(0.05, 0.85) * chaos.duration for _ in range(3)]
    killed = 0
    for moment in moments:
        proc = chaos.start()
        try:
            proc.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)  # the main process only, as the OOM killer does
            killed += 1
        reap(proc)
        if chaos.out.exists():  # only ever a whole data dir
            assert_same_data_dir(chaos.reference, chaos.out)
            if proc.returncode == 0:
                shutil.rmtree(chaos.out)  # finished before its kill: let the next run build again
    print(
        f"build {chaos.duration:.1f}s; {killed} of 3 runs killed, at",
        [round(m, 1) for m in moments],
    )
    assert killed >= 2, f"only {killed} of 3 runs were killed before they finished"
    chaos.build_again()


def is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.e2e
@pytest.mark.slow
def test_prepare_with_a_worker_killed(chaos):
    """One encoding worker SIGKILLed (what the OOM killer does): one error line, exit 1, no
    data dir and nothing left running; the rerun writes the same bytes."""
    shutil.rmtree(chaos.out, ignore_errors=True)
    proc = chaos.start()
    deadline = time.monotonic() + 120
    while len(workers := [p for p in group_processes(proc.pid) if is_worker(p)]) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no encoding workers seen"
        time.sleep(0.05)
    os.kill(workers[0], signal.SIGKILL)
    stderr = proc.communicate(timeout=120)[1].decode()
    reap(proc)
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: an encoding worker process died"), stderr
    assert not chaos.out.exists() and leftovers(chaos.out) == []
    chaos.build_again()
