"""The ``xla`` backend: dense mask-1 attention, the reference every kernel is tested against.

It builds the (L, L) mask from ``SceneLayout.dense_mask`` (refused above 16k tokens), so it is
only for tests and small sequences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from m2dit_jax.attention import dispatch
from m2dit_jax.layout import SceneLayout


def dense_attention(q, k, v, layout: SceneLayout, *, scale: float) -> jax.Array:
    """(B, L, H, Dh) attention with the dense mask; softmax statistics in f32."""
    mask = jnp.asarray(layout.dense_mask())
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask[None, None], logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum(
        "bhqk,bkhd->bqhd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return out.astype(q.dtype)


dispatch.register_backend("xla", dense_attention)
