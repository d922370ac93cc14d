"""Checksums of checkpointed arrays: a restored checkpoint must hold the values that were saved.

TensorStore reports files it cannot parse, but bytes changed inside an uncompressed chunk (a bad
disk, a bad copy) restore silently as other numbers. Each checkpoint therefore carries, next to
the arrays, one checksum per array: the sum of its elements' bit patterns as 32-bit words,
modulo 2**32. Any change to one element changes it; it is computed on the devices at save time
(one pass over the state, at checkpoint frequency) and again after a restore, or on the host
for the params-only restore of generate, evaluate, export and serve.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def path_name(path: tuple) -> str:
    """'opt_state/1/mu/wte' spellings of a tree path (Orbax stores namedtuples and lists as
    dicts, so these match between a state and its checkpoint's metadata)."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def _words(x: jax.Array) -> jax.Array:
    bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32)


@jax.jit
def _device_sums(leaves: list[jax.Array]) -> list[jax.Array]:
    return [jnp.sum(_words(x), dtype=jnp.uint32) for x in leaves]


def checksums(tree: Any) -> dict[str, int]:
    """{path: checksum} of every array leaf, computed where the arrays live."""
    flat = [(path_name(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)]
    flat = [(name, x) for name, x in flat if hasattr(x, "dtype")]
    sums = jax.device_get(_device_sums([x for _, x in flat]))
    return {name: int(s) for (name, _), s in zip(flat, sums, strict=True)}


def host_checksums(tree: Any, prefix: str = "") -> dict[str, int]:
    """The same checksums of numpy leaves (the params-only restore), names under `prefix`."""
    out = {}
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        x = np.ascontiguousarray(x)
        bits = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[x.dtype.itemsize]
        out[prefix + path_name(path)] = int(x.view(bits).astype(np.uint32).sum(dtype=np.uint32))
    return out


def mismatches(saved: dict[str, int], restored: dict[str, int]) -> list[str]:
    """Arrays whose restored checksum differs from the saved one (only those both have)."""
    return sorted(k for k in restored if k in saved and saved[k] != restored[k])


def mismatch_message(where: str, names: list[str]) -> str:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"{where}: {len(names)} array(s) differ from what was saved ({shown}); its files "
        "changed after they were written (a bad disk or an interrupted copy)"
    )
