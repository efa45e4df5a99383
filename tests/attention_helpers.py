"""Helpers shared by the attention tests: random q/k/v, a fixed-cotangent loss, a float64
NumPy reference of masked softmax attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def random_qkv(layout, batch=2, heads=2, head_dim=8, dtype=jnp.float32, seed=0):
    """Three (batch, layout.seq_len, heads, head_dim) standard-normal arrays."""
    rng = np.random.default_rng(seed)
    shape = (batch, layout.seq_len, heads, head_dim)
    return tuple(jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(3))


def fixed_cotangent_loss(fn):
    """``loss(q, k, v)`` = sum of ``fn``'s output times a fixed random cotangent (a cubic loss
    would amplify f32 round-off)."""

    def loss(q, k, v):
        out = fn(q, k, v).astype(jnp.float32)
        weights = jax.random.normal(jax.random.key(7), out.shape, jnp.float32)
        return (out * weights).sum()

    return loss


def numpy_masked_attention(q, k, v, mask):
    """float64 softmax(q k^T / sqrt(d) + mask) v for (B, L, H, D) inputs and an (L, L) mask."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(mask[None, None], logits, -np.inf)
    logits -= logits.max(-1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", w, v)
