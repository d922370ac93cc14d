"""Device mesh over (data, fsdp, tensor) and the logical-axis rules that map names onto it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxgpt.config.run import MeshConfig, Rules

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """Sizes of (data, fsdp, tensor) with at most one -1 filled in; errors say which key."""
    sizes = {"data": cfg.data, "fsdp": cfg.fsdp, "tensor": cfg.tensor}
    fill = [name for name, size in sizes.items() if size == -1]
    if len(fill) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {fill} (set the others explicitly)")
    for name, size in sizes.items():
        if size == 0 or size < -1:
            raise ValueError(f"mesh.{name} must be a positive size or -1, got {size}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if n_devices % fixed:
            raise ValueError(
                f"{n_devices} devices cannot be split into mesh {sizes}: the fixed axes "
                f"multiply to {fixed}, which does not divide {n_devices}"
            )
        sizes[fill[0]] = n_devices // fixed
    elif fixed != n_devices:
        raise ValueError(
            f"mesh data×fsdp×tensor = {fixed} but {n_devices} devices are available; set one "
            "axis to -1 to fill the rest"
        )
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with Auto axis types, so the compiler propagates shardings we don't pin."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(cfg, len(devices))
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def batch_axis_size(mesh: Mesh, rules: Rules) -> int:
    """How many ways the batch dimension is split (the product of its mesh axes)."""
    axes = dict(rules).get("batch")
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_shardings(logical_specs: Any, mesh: Mesh, rules: Rules) -> Any:
    """Tree of logical PartitionSpecs -> tree of NamedShardings on mesh."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def fit_to_shapes(shardings: Any, shapes: Any) -> Any:
    """Leave unsplit any dimension its mesh axes do not divide (e.g. vocab 50257 over tensor=2).

    jit refuses uneven shardings; replicating that one dimension keeps every other split.
    """

    def fit(sharding: NamedSharding, shape_like: Any) -> NamedSharding:
        spec = tuple(sharding.spec) + (None,) * (len(shape_like.shape) - len(sharding.spec))
        fitted = []
        for dim, axes in zip(shape_like.shape, spec, strict=True):
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            ways = math.prod(sharding.mesh.shape[a] for a in names)
            fitted.append(axes if dim % ways == 0 else None)
        return NamedSharding(sharding.mesh, PartitionSpec(*fitted))

    return jax.tree.map(fit, shardings, shapes, is_leaf=lambda x: isinstance(x, NamedSharding))


def named(mesh: Mesh, rules: Rules, *logical: str | None) -> NamedSharding:
    """NamedSharding for an array whose dimensions have these logical names."""
    spec = nn.logical_to_mesh_axes(logical, list(rules))
    return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global jax.Array from this process's rows of the batch (its addressable shards)."""
    return jax.make_array_from_process_local_data(sharding, local_batch)
