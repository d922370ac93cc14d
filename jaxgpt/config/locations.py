"""Where a path may point. Today: local (or mounted) file systems only.

A location written as a URL (`gs://bucket/run`, `s3://bucket/run`, `hdfs://...`), or with a slash
lost on the way (`s3:/bucket/run`, what a shell or pathlib makes of `s3://`), must never be
taken as a local folder of that name: a run would "succeed" into `./s3:/bucket/run` and the
bucket stay empty. Every path a user gives (flags and config keys) goes through check_location.
"""

from __future__ import annotations

import re

# A scheme of two or more letters then ":/" (so Windows drive letters, "C:/x", are paths).
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/")

# Object stores (gs://, s3://) are next: until they are supported, they get the same error.
SUPPORTED_SCHEMES: frozenset[str] = frozenset()

# Command-line flags that name files or folders (checked by config.parse_args).
PATH_FLAGS = ("workdir", "out", "data", "profile", "json", "prompt_file")


class UnsupportedLocationError(ValueError):
    """A URL scheme jaxgpt cannot read or write."""


def check_location(value: str, what: str) -> str:
    """`value` unchanged if it is a local path; a URL-like value raises, naming `what`."""
    match = _URL.match(value)
    if match is None or match.group(1).lower() in SUPPORTED_SCHEMES:
        return value
    scheme = match.group(1)
    mounts = {"gs": " (e.g. gcsfuse)", "s3": " (e.g. mountpoint-s3 or s3fs)"}
    return _fail(value, what, scheme, mounts.get(scheme.lower(), ""))


def _fail(value: str, what: str, scheme: str, mount_hint: str) -> str:
    raise UnsupportedLocationError(
        f"{what}={value!r}: {scheme}:// locations are not supported; jaxgpt reads and writes "
        f"local paths. Mount the storage as a file system{mount_hint} and give the mounted path "
        "(nothing was written)."
    )
