"""Test setup: 8 CPU devices (set before JAX is imported) so sharding is tested for real."""

import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # so tests can import each other as `tests.test_x`

import pytest  # noqa: E402

# tinyshakespeare, shipped in the package (jaxgpt.data.sources.SHAKESPEARE): no shared/ needed.
SHAKESPEARE = REPO / "jaxgpt" / "data" / "corpora" / "tinyshakespeare.txt"


@pytest.fixture
def shakespeare() -> Path:
    if not SHAKESPEARE.is_file():
        pytest.fail(f"{SHAKESPEARE} is missing from the checkout")
    return SHAKESPEARE


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """A ~60 KB text corpus made in the test: enough for a tokenizer and a few hundred windows."""
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "seven",
        "wizards",
        "quietly",
        "hex",
        "jovial",
        "kings",
        "and",
        "queens",
        "by",
        "the",
        "river",
        "bank",
    ]
    lines = []
    for i in range(1500):
        lines.append(" ".join(words[(i * 7 + j) % len(words)] for j in range(8)) + f" {i % 97}.")
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


# Object-storage servers on loopback (tests/storage_servers.py): `bucket` gives a fresh gs:// and
# s3:// bucket per test.
from tests.storage_servers import bucket, storage_servers  # noqa: E402, F401
