"""Writing a data dir so that it only ever appears complete, and fails cleanly when it can't.

A build writes into a sibling staging dir, NAME.tmp-KEY-PID, and holds an flock on it while it
works. Every file is fsynced as it closes; the finished dir is fsynced and renamed into place,
and the parent dir fsynced, so after a crash or power cut NAME is either the old dir or the
whole new one. A staging dir that nobody holds a lock on was left by a killed build (the kernel
drops flocks when a process dies, kill -9 included): the next build removes it.

Write errors name their file and come out as one WriteError; the OS's error from write() does
not say which file it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import shutil
from pathlib import Path

# Every name a data dir holds (see data/dataset.py); a dir holding anything else is not replaced.
DATA_DIR_NAMES = re.compile(
    r"metadata\.json|report\.txt|(train|val)\.jsonl|tokenizer\.(model|json)"
    r"|(train|val)-(\d{5}\.bin|examples\.npy)"
)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WriteError(OSError):
    """Writing the data dir failed; str() is the whole message for people."""


def open_raw(path: Path) -> io.FileIO:
    """The unbuffered file every data-dir write goes through (tests inject faults here)."""
    return io.FileIO(path, "w")


class SyncedFile(io.BufferedWriter):
    """A file written for a data dir: fsynced on close; its errors name it."""

    def write(self, data) -> int:
        try:
            return super().write(data)
        except OSError as e:
            raise _named(e, self.name) from None

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
            os.fsync(self.fileno())
        except OSError as e:
            with contextlib.suppress(OSError):
                super().close()
            raise _named(e, self.name) from None
        super().close()

    def __del__(self) -> None:
        # A file dropped on an error path: close quietly, the error was already raised once.
        with contextlib.suppress(Exception):
            super().close()


def _named(e: OSError, name) -> OSError:
    """e with the file's name, unless it has one."""
    if e.filename is not None or not isinstance(name, str | os.PathLike):
        return e
    return OSError(e.errno, e.strerror or str(e), os.fspath(name))


def create(path: Path) -> SyncedFile:
    try:
        return SyncedFile(open_raw(path))
    except OSError as e:
        raise _named(e, str(path)) from None


def write_file(path: Path, data: bytes) -> None:
    with create(path) as f:
        f.write(data)


def sync_dir(path: Path) -> None:
    """fsync a directory, so the names in it (new files, a rename) survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems (FUSE mounts) cannot sync a directory
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise _named(e, str(path)) from None
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool | None:
    """Take an exclusive flock without waiting: True, False (someone holds it), None (the
    filesystem has no flock)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None


def remove_abandoned(out: Path) -> list[Path]:
    """Remove the staging dirs of out that no live build holds; returns them."""
    removed = []
    for path in sorted(out.parent.glob(f"{glob_escape(out.name)}.tmp-*")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile, or not a dir we can open
        try:
            # Locked by us: its builder is dead. Still at that name: not committed meanwhile.
            if _try_lock(fd) and _exists_as(path, fd):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        finally:
            os.close(fd)  # releases the lock
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def foreign_files(out: Path) -> list[str]:
    """Names in out that a data dir does not hold (a dir we must not delete to rebuild)."""
    if not out.is_dir():
        return [out.name] if out.exists() else []
    return sorted(p.name for p in out.iterdir() if not DATA_DIR_NAMES.fullmatch(p.name))


class Staging:
    """The dir a build writes into, locked from creation until it is renamed into place
    (commit) or removed (abort)."""

    def __init__(self, out: Path, key: str):
        self.out = Path(out)
        self.path = self.out.with_name(f"{self.out.name}.tmp-{key}-{os.getpid()}")
        while True:  # a scanner may remove the dir between our mkdir and our lock: retry
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir(parents=True)
            self._fd = os.open(self.path, os.O_RDONLY)
            with contextlib.suppress(OSError):  # no flock here: then nobody can take ours
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            if _exists_as(self.path, self._fd):
                return
            os.close(self._fd)

    def written_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    def commit(self) -> None:
        """Make the staged dir the data dir: the old one (if any) is swapped out, then removed."""
        sync_dir(self.path)
        aside = None
        if self.out.exists():
            # Renamed aside, not deleted in place: a kill here leaves a staging-named dir that
            # the next build removes, never a half-deleted data dir with its metadata.json.
            aside = self.out.with_name(f"{self.out.name}.tmp-old-{os.getpid()}")
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(self.out, aside)
        try:
            os.rename(self.path, self.out)
        except OSError:
            if aside is not None:
                os.rename(aside, self.out)  # the old data dir back where it was
            raise
        # The new dir is in place and whole; if this sync fails, a crash could bring back the
        # old name, which the next build would find incomplete or abandoned: still safe.
        with contextlib.suppress(OSError):
            sync_dir(self.out.parent)
        os.close(self._fd)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _exists_as(path: Path, fd: int) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def failure_message(e: OSError, out: Path, written: int) -> str:
    """One paragraph: what failed, where, and what to do."""
    where = f"{e.filename}: " if e.filename else ""
    what = f"{where}{e.strerror or e}"
    if e.errno in NO_SPACE:
        todo = "Free space on that filesystem (or raise its quota) and rerun the same command"
    else:
        todo = "Fix the cause and rerun the same command"
    kept = f"; {out} is unchanged" if out.exists() else ""
    return (
        f"could not write the data dir {out} ({what}; errno {e.errno}) after writing "
        f"{written / 1e6:,.1f} MB of it. {todo}. The unfinished build was removed{kept}; "
        "nothing half-written will be used."
    )
