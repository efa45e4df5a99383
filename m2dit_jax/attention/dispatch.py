"""``masked_attention``: mask 1 computed by a named backend.

Backends register themselves in ``BACKENDS``: a callable
``fn(q, k, v, layout, *, scale) -> out`` for q/k/v (B, L, H, Dh). Every backend computes the
same function: softmax(q k^T * scale + mask1) v, with f32 softmax statistics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable

import jax

from m2dit_jax.attention import context_parallel
from m2dit_jax.layout import SceneLayout

AttentionFn = Callable[..., jax.Array]
BACKENDS: dict[str, AttentionFn] = {}

log = logging.getLogger(__name__)
_LOGGED: set[Hashable] = set()


def log_choice_once(key: Hashable, message: str) -> None:
    """Logs (INFO) an automatic backend/impl choice the first time ``key`` is seen."""
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info(message)


def register_backend(name: str, fn: AttentionFn) -> None:
    BACKENDS[name] = fn


def target_platform() -> str:
    """The platform the program being traced is for: the active (abstract) mesh's device
    platform when a mesh is set — so ahead-of-time compilation for a TPU topology on a CPU
    host traces the TPU program — else jax's default device platform."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is not None and not mesh.empty:
        device = getattr(mesh, "abstract_device", None)
        if device is not None and getattr(device, "platform", None):
            return str(device.platform)
    return jax.devices()[0].platform


def _check_qkv(q, k, v, layout: SceneLayout) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(
                f"{name} must have shape (batch, seq_len, heads, head_dim), got {x.shape}"
            )
        if x.shape[1] != layout.seq_len:
            raise ValueError(
                f"{name} has sequence length {x.shape[1]} but the layout's seq_len is "
                f"{layout.seq_len} ({layout})"
            )
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"q, k, v batch sizes differ: {q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
    if q.shape[2:] != k.shape[2:] or k.shape[2] != v.shape[2]:
        raise ValueError(f"q/k/v heads or head_dim differ: {q.shape}, {k.shape}, {v.shape}")


def masked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    layout: SceneLayout,
    *,
    backend: str = "xla",
    scale: float | None = None,
    **backend_options,
) -> jax.Array:
    """Attention under mask 1 of ``layout``.

    Args:
      q, k, v: (B, L, H, Dh) with L == layout.seq_len.
      layout: the scene layout that defines the mask.
      backend: a name in ``BACKENDS``: "xla" (dense reference), "split" (mask-free parts),
        "splash" (TPU Pallas kernel; off TPU only with interpret=True), "auto" (picks per platform).
      scale: logit scale, default 1/sqrt(Dh).
      backend_options: passed to the backend (``impl``, ``block_q``, ``block_kv``, ...; see
        each backend), except ``mesh``: the mesh to shard over (default: the one set with
        ``jax.set_mesh``). Under a mesh with more than one device the backend runs in a
        ``shard_map``: batch over (data, fsdp), heads over tensor, and the sequence over
        context through Ulysses all-to-alls, so mask 1 stays exact (``context_parallel``).
    Returns:
      (B, L, H, Dh) in q's dtype.
    """
    _check_qkv(q, k, v, layout)
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; available: {sorted(BACKENDS)}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    mesh = context_parallel.active_mesh(backend_options.pop("mesh", None))
    fn = BACKENDS[backend]
    if mesh is not None:
        return context_parallel.sharded_attention(
            fn, q, k, v, layout, mesh, scale=scale, **backend_options
        )
    return fn(q, k, v, layout, scale=scale, **backend_options)


# Importing a backend module registers it.
from m2dit_jax.attention import auto, reference, splash, split  # noqa: E402,F401
