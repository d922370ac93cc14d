"""Bucket I/O through fsspec (gcsfs for gs://, s3fs for s3://): the checks before a run spends
compute, whole-file uploads and downloads, and the local folders that stand in for a bucket where
a library needs real files (TensorBoard streams, safetensors, W&B).

Paths themselves are `jaxgpt.config.location` objects: pathlib.Path locally, etils.epath.Path in
buckets (epath reads and writes through the same fsspec file systems).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from jaxgpt.config import AnyPath, is_remote

_PACKAGES = {"gs": "gcsfs", "s3": "s3fs"}

_CREDENTIAL_HINTS = {
    "gs": (
        "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run `gcloud auth "
        "application-default login` (on GCE/GKE/TPU VMs the VM's service account is used); for "
        "an emulator set STORAGE_EMULATOR_HOST and TENSORSTORE_GCS_HTTP_URL"
    ),
    "s3": (
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), AWS_REGION, and "
        "AWS_ENDPOINT_URL for S3-compatible storage (MinIO, R2, an emulator)"
    ),
}


class StorageError(OSError):
    """A bucket that cannot be used: missing, no credentials, no permission, no package."""


def scheme(path: AnyPath | str) -> str:
    return str(path).split("://", 1)[0]


def filesystem(path: AnyPath | str) -> tuple[Any, str]:
    """(fsspec file system, path within it) for a bucket URL."""
    import fsspec

    kind = scheme(path)
    # The same instance etils.epath (and so Orbax) uses: one listing cache, kept consistent.
    options = {"finalize_on_close": True} if kind == "gs" else {}
    try:
        fs = fsspec.filesystem(kind, **options)
    except ImportError as e:
        package = _PACKAGES.get(scheme(path), "fsspec")
        raise StorageError(
            f"{path}: reading and writing {scheme(path)}:// needs the {package} package: "
            "pip install 'jaxgpt[cloud]'"
        ) from e
    return fs, fs._strip_protocol(str(path))


def explain(path: AnyPath | str, error: BaseException, doing: str) -> StorageError:
    """One message for a failed bucket operation: what failed on which path, and what to set."""
    kind = scheme(path)
    text = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    lowered = text.lower()
    if (
        "bucket" in lowered and ("not exist" in lowered or "notfound" in lowered.replace(" ", ""))
    ) or (isinstance(error, FileNotFoundError) and "/b/" in text):
        advice = f"create the bucket, or fix its name in {path}"
    elif isinstance(error, PermissionError) or any(
        word in lowered for word in ("credential", "forbidden", "403", "401", "access denied")
    ):
        advice = f"check the credentials and that they may write there: {_CREDENTIAL_HINTS[kind]}"
    else:
        advice = f"check the URL, the network and the credentials: {_CREDENTIAL_HINTS[kind]}"
    return StorageError(f"{doing} {path} failed ({text}); {advice}")


def check_writable(root: AnyPath, what: str = "workdir") -> None:
    """Write, read back and delete a small object under `root` (a bucket URL), so a missing
    bucket, missing credentials or a denied permission stop a command before it spends compute.
    Local paths are not checked here (mkdir says what is wrong)."""
    if not is_remote(root):
        return
    fs, base = filesystem(root)
    probe = f"{base.rstrip('/')}/.jaxgpt-probe-{uuid.uuid4().hex[:12]}"
    try:
        fs.pipe_file(probe, b"jaxgpt")
        if fs.cat_file(probe) != b"jaxgpt":
            raise OSError("the object read back differs from the one written")
        fs.rm_file(probe)
    except StorageError:
        raise
    except Exception as e:  # botocore, gcsfs and aiohttp errors have no common base
        raise explain(root, e, f"checking that the {what} can be written: writing into") from e


def check_readable(path: AnyPath, what: str) -> None:
    """Stat a bucket path, so a missing object or bucket is one clear error up front."""
    if not is_remote(path):
        return
    fs, key = filesystem(path)
    try:
        found = fs.exists(key)
    except Exception as e:
        raise explain(path, e, f"reading the {what}") from e
    if not found:
        raise FileNotFoundError(f"{what} {path} does not exist")


def upload_file(local: Path, remote: AnyPath) -> None:
    """Copy one local file to a bucket object (a single PUT: the object appears whole)."""
    fs, key = filesystem(remote)
    fs.put_file(str(local), key)


def upload_tree(local: Path, remote: AnyPath) -> None:
    """Copy a local folder's files under a bucket prefix."""
    fs, key = filesystem(remote)
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(file), f"{key.rstrip('/')}/{file.relative_to(local).as_posix()}")


def move_tree(source: AnyPath, target: AnyPath) -> None:
    """Move every object under a bucket prefix to another prefix of the same bucket: copy each,
    then delete the originals (buckets have no rename; a failure leaves the originals)."""
    fs, src = filesystem(source)
    dst = filesystem(target)[1].rstrip("/")
    src = src.rstrip("/")
    names = fs.find(src)
    for name in names:
        fs.cp_file(name, dst + name[len(src) :])
    fs.rm(names)
    fs.invalidate_cache()


def download_tree(remote: AnyPath, local: Path) -> Path:
    """Copy every object under a bucket prefix into a local folder; returns the folder."""
    fs, key = filesystem(remote)
    base = key.rstrip("/")
    local.mkdir(parents=True, exist_ok=True)
    for name in fs.find(base):
        target = local / name[len(base) :].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(name, str(target))
    return local


def local_stand_in(remote: AnyPath, purpose: str) -> Path:
    """A local folder that stands for a bucket path (the same one every time for the same path
    and purpose): JAXGPT_CACHE_DIR, else ~/.cache/jaxgpt."""
    root = Path(os.environ.get("JAXGPT_CACHE_DIR") or Path.home() / ".cache" / "jaxgpt")
    digest = hashlib.sha256(str(remote).encode()).hexdigest()[:16]
    name = str(remote).split("://", 1)[-1].strip("/").replace("/", "_")[-80:]
    folder = root / purpose / f"{name}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def local_file(path: AnyPath, purpose: str) -> Path:
    """A local file with the content of `path`: the path itself when local, else a fresh
    download into a local stand-in folder (for libraries that open files by name)."""
    if not is_remote(path):
        return Path(path)
    target = local_stand_in(path, purpose) / str(path).rstrip("/").rsplit("/", 1)[-1]
    fs, key = filesystem(path)
    fs.get_file(key, str(target))
    return target


def local_folder(path: AnyPath, purpose: str) -> Path:
    """A local folder with the files under `path`: the path itself when local, else a fresh
    download (files left from an earlier download are removed first)."""
    if not is_remote(path):
        return Path(path)
    folder = local_stand_in(path, purpose)
    shutil.rmtree(folder)
    return download_tree(path, folder)
