"""Where a path may point: local (or mounted) file systems, and the buckets gs:// and s3://.

A location written as a URL is never taken as a local folder: `s3:/bucket/run` (a slash lost in
a shell or by pathlib), `gcs://b`, `S3://b` or `hdfs://nn/x` would otherwise "succeed" into a
local `./s3:/bucket/run` while the bucket stays empty. Every path a user gives (flags and config
keys) goes through check_location; code that opens one goes through `location`, which gives a
`pathlib.Path` for local paths (unchanged behaviour) and an `etils.epath.Path` (the path type
Orbax uses, backed by fsspec's gcsfs/s3fs) for bucket URLs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# etils.epath sends gs:// and s3:// to tf.io.gfile when TensorFlow is importable (it is, for
# tf.data): that imports TensorFlow into every process (about 4 s and 0.5 GB), has no s3 since
# TF 2.6 and ignores storage emulators. fsspec (gcsfs, s3fs) instead. epath reads this per call.
os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath

# A scheme of two or more letters then ":/" (so Windows drive letters, "C:/x", are paths).
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/")
# gs://BUCKET/..., s3://BUCKET/...: bucket names are 3-222 lowercase letters, digits, . _ -
_BUCKET_URL = re.compile(r"^(gs|s3)://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])(/.*)?$")

SUPPORTED_SCHEMES: frozenset[str] = frozenset({"gs", "s3"})
_NEAR_MISSES = {"gcs": "gs", "google": "gs", "s3a": "s3", "s3n": "s3"}

# Command-line flags that name files or folders (checked by config.parse_args); the ones in
# LOCAL_ONLY_FLAGS must be local (profiles, result files and prompt files are small and local).
PATH_FLAGS = (
    "workdir",
    "out",
    "data",
    "profile",
    "json",
    "prompt_file",
    "include_path",
    "output_path",
)
LOCAL_ONLY_FLAGS = ("profile", "json", "prompt_file", "include_path", "output_path")

AnyPath = Path | epath.Path


class UnsupportedLocationError(ValueError):
    """A URL scheme (or a malformed bucket URL) jaxgpt cannot read or write."""


def check_location(value: str, what: str, remote_ok: bool = True) -> str:
    """`value` unchanged if it is a local path or a well-formed gs:// / s3:// URL (when
    remote_ok); anything else URL-like raises, naming `what` and what to write instead."""
    match = _URL.match(value)
    if match is None:
        return value
    scheme = match.group(1)
    if scheme in SUPPORTED_SCHEMES and value.startswith(f"{scheme}://"):
        if not remote_ok:
            raise UnsupportedLocationError(
                f"{what}={value!r} must be a local path (buckets are not supported here); "
                "give a local file or folder (nothing was written)"
            )
        if _BUCKET_URL.match(value) is None:
            raise UnsupportedLocationError(
                f"{what}={value!r} is not a valid {scheme}:// location: write "
                f"{scheme}://BUCKET/PATH with a bucket name of lowercase letters, digits, '.', "
                "'_' or '-' (nothing was written)"
            )
        return value
    raise UnsupportedLocationError(
        f"{what}={value!r}: {_why_not(value, scheme)} (nothing was written)"
    )


def _why_not(value: str, scheme: str) -> str:
    lower = scheme.lower()
    meant = _NEAR_MISSES.get(lower, lower if lower in SUPPORTED_SCHEMES else None)
    if meant is not None:
        rest = value[len(scheme) :].lstrip(":/")
        return f"did you mean {meant}://{rest} ? (bucket URLs are written {meant}://BUCKET/PATH)"
    return (
        f"{scheme}:// locations are not supported; jaxgpt reads and writes local paths, "
        "gs://BUCKET/PATH and s3://BUCKET/PATH. Mount other storage as a file system and give "
        "the mounted path"
    )


def location(value: str | os.PathLike, what: str, remote_ok: bool = True) -> AnyPath:
    """A checked path: pathlib.Path for local ones, etils.epath.Path for gs:// and s3://."""
    text = str(value) if isinstance(value, epath.Path) else os.fspath(value)
    check_location(text, what, remote_ok)
    return epath.Path(text) if is_remote_text(text) else Path(text)


def is_remote_text(text: str) -> bool:
    return text.startswith(("gs://", "s3://"))


def is_remote(path: str | os.PathLike | None) -> bool:
    """Whether a path (a str, pathlib.Path or epath.Path) is in a bucket."""
    return path is not None and is_remote_text(str(path))


def absolute(path: AnyPath) -> AnyPath:
    """An absolute form for messages and manager keys: local paths resolved, URLs unchanged
    (epath's resolve() turns gs://b/x into a local ./gs:/b/x)."""
    return path if is_remote(path) else Path(path).resolve()
