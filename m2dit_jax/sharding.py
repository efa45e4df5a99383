"""The one sharding vocabulary: mesh axes, logical axis names and the rule table.

Mesh axes (every mesh has all four, size 1 where unused):
  data    — pure data parallelism (replicated params),
  fsdp    — data parallelism with params/optimizer state sharded over ``embed``,
  context — sequence (context) parallelism,
  tensor  — heads / MLP (Megatron-style) parallelism.
Modules annotate parameters and activations with *logical* names only; ``LOGICAL_RULES``
maps them onto mesh axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "context", "tensor")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", "context"),  # activations' token axis
    ("embed", "fsdp"),  # params' model-width axis (FSDP shards it)
    ("act_embed", None),  # activations' width axis stays whole
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("temb", None),  # timestep-embedding width
    ("text_embed", None),  # encoder output width (4096)
    ("patch", None),
    ("layers", None),  # scanned layer axis
)


def logical_to_mesh_axes(names: Sequence[str | None]) -> PartitionSpec:
    """Maps a tuple of logical axis names to a PartitionSpec with LOGICAL_RULES.

    A mesh axis is used at most once per spec (later duplicates are replicated).
    """
    rules = dict(LOGICAL_RULES)
    used: set[str] = set()
    out = []
    for name in names:
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(rules)}")
        target = rules[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def make_mesh(
    shape: dict[str, int] | Sequence[int], devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Builds a (data, fsdp, context, tensor) mesh; one entry may be -1 (fills the rest).

    ``shape`` is a dict keyed by axis name (missing axes = 1) or a 4-sequence in MESH_AXES order.
    Axis types are Auto so logical-rule sharding and shard_map compose.
    """
    devices = list(devices if devices is not None else jax.devices())
    if isinstance(shape, dict):
        unknown = set(shape) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"unknown mesh axes {sorted(unknown)}; axes are {MESH_AXES}")
        sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    else:
        sizes = [int(s) for s in shape]
        if len(sizes) != len(MESH_AXES):
            raise ValueError(f"mesh shape needs {len(MESH_AXES)} entries {MESH_AXES}, got {sizes}")
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(
            f"mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}"
        )
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"{len(devices)} devices are not divisible by the fixed mesh axes {known}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"have {len(devices)}"
        )
    grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def named_sharding(mesh: Mesh, names: Sequence[str | None]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_mesh_axes(names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """with_sharding_constraint by logical names; a no-op when no mesh is active."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_mesh_axes(names))
