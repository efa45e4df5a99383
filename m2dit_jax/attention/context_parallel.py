"""Mesh-aware attention: batch, heads and sequence (context) sharding that keep mask 1 exact.

Under a mesh with axes (data, fsdp, context, tensor), q/k/v arrive sharded as
batch -> (data, fsdp), seq -> context, heads -> tensor (``m2dit_jax.sharding``). Attention runs
in a ``jax.shard_map`` over that mesh:

* heads sharded over ``tensor`` and batch over (data, fsdp) need no communication;
* the sequence sharded over ``context`` is handled Ulysses style: an all-to-all turns
  (L / c tokens, H / t heads) into (L tokens, H / (t c) heads) per device, the backend then
  sees the *whole* sequence for its heads (so mask 1 is evaluated exactly from the global
  layout), and a second all-to-all restores the sequence sharding.

This wraps every backend, including Pallas kernels that GSPMD cannot partition on its own.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
from jax.sharding import AbstractMesh, Mesh, PartitionSpec

from m2dit_jax.layout import SceneLayout
from m2dit_jax.sharding import logical_to_mesh_axes

CONTEXT_AXIS = "context"


def active_mesh(mesh: Mesh | AbstractMesh | None = None) -> Mesh | AbstractMesh | None:
    """The mesh attention should shard over: ``mesh`` if given, else the one set with
    ``jax.set_mesh``; None when there is none, it has one device, or all axes are already
    manual (we are inside someone else's shard_map)."""
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or math.prod(mesh.shape.values()) == 1:
        return None
    manual = jax.sharding.AxisType.Manual
    if all(t == manual for t in mesh.axis_types):
        return None
    return mesh


def _axes_size(mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def _qkv_spec(mesh) -> PartitionSpec:
    """(B, L, H, Dh) spec from the logical rules, keeping only axes this mesh has."""
    spec = logical_to_mesh_axes(("batch", "seq", "heads", "head_dim"))
    names = set(mesh.axis_names)
    out = []
    for entry in spec:
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        axes = tuple(a for a in axes if a in names and mesh.shape[a] > 1)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def check_divisible(q_shape, layout: SceneLayout, mesh) -> PartitionSpec:
    """Validates that batch, sequence and heads divide over the mesh; returns the q/k/v spec."""
    spec = _qkv_spec(mesh)
    batch, seq, heads, _ = q_shape
    b_size, c_size, t_size = (_axes_size(mesh, spec[i]) for i in range(3))
    if batch % b_size:
        raise ValueError(
            f"attention batch {batch} does not divide over the batch mesh axes {spec[0]} "
            f"(size {b_size})"
        )
    if seq % c_size:
        raise ValueError(
            f"context parallelism: sequence length {seq} ({layout}) does not divide over the "
            f"'{CONTEXT_AXIS}' mesh axis of size {c_size}; pick a context degree that divides it "
            "(or pad captions with SceneLayout.text_pad_to)"
        )
    if heads % (t_size * c_size):
        raise ValueError(
            f"attention heads {heads} must divide over tensor x context = {t_size} x {c_size} "
            f"= {t_size * c_size} devices (Ulysses context parallelism splits heads)"
        )
    return spec


def sharded_attention(
    fn: Callable[..., jax.Array],
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    layout: SceneLayout,
    mesh,
    **kwargs,
) -> jax.Array:
    """Runs ``fn(q, k, v, layout, **kwargs)`` per device under ``mesh`` (see module doc).

    Args:
      fn: a backend with the registry signature.
      q, k, v: global (B, L, H, Dh) arrays.
      mesh: a (data, fsdp, context, tensor) Mesh or AbstractMesh.
    Returns:
      (B, L, H, Dh), sharded like q.
    """
    spec = check_divisible(q.shape, layout, mesh)
    context = spec[1]
    to_full_sequence = functools.partial(
        jax.lax.all_to_all, axis_name=context, split_axis=2, concat_axis=1, tiled=True
    )
    to_sequence_shards = functools.partial(
        jax.lax.all_to_all, axis_name=context, split_axis=1, concat_axis=2, tiled=True
    )

    def local(q, k, v):
        if context is not None:
            q, k, v = (to_full_sequence(x) for x in (q, k, v))
        out = fn(q, k, v, layout, **kwargs)
        if context is not None:
            out = to_sequence_shards(out)
        return out

    return jax.shard_map(
        local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False
    )(q, k, v)


def sharded_heads_call(fn: Callable[..., jax.Array], arrays, mesh) -> jax.Array:
    """Runs ``fn(*arrays)`` per device for (B, L_i, H, Dh) arrays of different lengths L_i.

    Same scheme as ``sharded_attention``: batch over (data, fsdp), heads over tensor, every
    array's sequence axis (sharded over ``context`` like activations) gathered whole per head
    group by an all-to-all; ``fn``'s output (shaped like ``arrays[0]``) goes back the same way.
    Used for the new scene's attention against cached condition keys/values.
    """
    spec = _qkv_spec(mesh)
    b_size, c_size, t_size = (_axes_size(mesh, spec[i]) for i in range(3))
    for i, x in enumerate(arrays):
        batch, seq, heads, _ = x.shape
        if batch % b_size:
            raise ValueError(
                f"attention batch {batch} does not divide over the batch mesh axes {spec[0]} "
                f"(size {b_size})"
            )
        if seq % c_size:
            raise ValueError(
                f"context parallelism: argument {i} has {seq} tokens, which do not divide over "
                f"the '{CONTEXT_AXIS}' mesh axis of size {c_size} (the new scene's tokens and "
                "the cached condition video must both divide; pad captions with text_pad_to)"
            )
        if heads % (t_size * c_size):
            raise ValueError(
                f"attention heads {heads} must divide over tensor x context = {t_size} x "
                f"{c_size} = {t_size * c_size} devices (Ulysses context parallelism)"
            )
    context = spec[1]

    def local(*xs):
        if context is not None:
            xs = [
                jax.lax.all_to_all(x, context, split_axis=2, concat_axis=1, tiled=True) for x in xs
            ]
        out = fn(*xs)
        if context is not None:
            out = jax.lax.all_to_all(out, context, split_axis=1, concat_axis=2, tiled=True)
        return out

    return jax.shard_map(
        local, mesh=mesh, in_specs=(spec,) * len(arrays), out_specs=spec, check_vma=False
    )(*arrays)
