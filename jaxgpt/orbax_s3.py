"""Orbax checkpoints on s3:// (Orbax 0.12 writes gs:// natively, not s3://).

Orbax builds TensorStore specs for gs:// itself; for any other URL it normalizes the path with
os.path.normpath (s3://b/x becomes s3:/b/x), then fails "Checkpoint path should be absolute"
after having written a stray ./s3:/b/x/_sharding through the file driver. Three private Orbax
functions decide this; `enable()` teaches each of them s3:// and leaves every other path to the
original. Upstream work on the same: google/orbax PR #2739 ("Adding AWS S3 support"); drop this
module when a released Orbax writes s3:// itself (tests/test_storage.py fails if the names below
change, so an Orbax upgrade cannot silently break s3 checkpoints).

Directories and metadata go through etils.epath -> s3fs; arrays through TensorStore's s3 driver,
which ignores AWS_ENDPOINT_URL: the endpoint and region go into the spec from the environment.
S3 cannot rename a directory, so s3 managers must use AtomicityMode.COMMIT_FILE (checkpoint.py).
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

_PATCHED = False


class OrbaxS3Error(RuntimeError):
    """This Orbax version does not have the functions the s3 support hooks into."""


def _modules() -> tuple[Any, Any]:
    from orbax.checkpoint._src.path import gcs_utils
    from orbax.checkpoint._src.serialization import tensorstore_utils

    return tensorstore_utils, gcs_utils


def check_hooks() -> None:
    """Raise OrbaxS3Error if the private functions s3 support replaces are gone."""
    try:
        ts_utils, gcs_utils = _modules()
    except ImportError as e:
        raise OrbaxS3Error(f"orbax-checkpoint {ocp.__version__}: {e}") from e
    missing = [
        name
        for module, name in (
            (ts_utils, "_normalize_path"),
            (ts_utils, "_use_gcs_driver"),
            (gcs_utils, "get_kvstore_for_gcs"),
        )
        if not callable(getattr(module, name, None))
    ]
    if missing:
        raise OrbaxS3Error(
            f"s3:// checkpoints need orbax-checkpoint 0.12 (installed: {ocp.__version__}, which "
            f"lacks {', '.join(missing)}); pip install 'orbax-checkpoint>=0.12,<0.13', or use "
            "gs:// or a local or mounted workdir"
        )


def kvstore_spec(url: str) -> dict[str, Any]:
    """TensorStore's s3 kvstore for s3://BUCKET/KEY, with the endpoint and region of the
    environment (AWS_ENDPOINT_URL[_S3], AWS_REGION / AWS_DEFAULT_REGION) when set."""
    bucket, _, key = url[len("s3://") :].partition("/")
    spec: dict[str, Any] = {"driver": "s3", "bucket": bucket, "path": key.strip("/")}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint:
        spec["endpoint"] = endpoint
    if region:
        spec["aws_region"] = region
    return spec


def enable() -> None:
    """Make Orbax write and read s3:// checkpoints (idempotent; gs:// and local unchanged)."""
    global _PATCHED
    if _PATCHED:
        return
    check_hooks()
    ts_utils, gcs_utils = _modules()
    normalize, use_gcs, gcs_kvstore = (
        ts_utils._normalize_path,
        ts_utils._use_gcs_driver,
        gcs_utils.get_kvstore_for_gcs,
    )

    def normalize_path(path: str) -> str:
        if path.startswith("s3://"):
            return "s3://" + os.path.normpath(path[len("s3://") :]).lstrip("/")
        return normalize(path)

    def use_bucket_driver(directory: str) -> bool:
        return directory.startswith("s3://") or use_gcs(directory)

    def kvstore_for(path: str) -> dict[str, Any]:
        return kvstore_spec(path) if path.startswith("s3://") else gcs_kvstore(path)

    ts_utils._normalize_path = normalize_path
    ts_utils._use_gcs_driver = use_bucket_driver
    gcs_utils.get_kvstore_for_gcs = kvstore_for
    _PATCHED = True
