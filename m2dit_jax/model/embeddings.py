"""Input embeddings: timestep sinusoid + MLP, caption projection, video patchify/unpatchify."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from m2dit_jax.model.layers import Dense


def timestep_sinusoid(timesteps: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """(...,) timesteps -> (..., dim) float32 [cos(t f) | sin(t f)], f_i = max_period^(-i/half).

    CogVideoX's ``Timesteps(D, flip_sin_to_cos=True, freq_shift=0)``.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half
    angles = timesteps.astype(jnp.float32)[..., None] * jnp.exp(exponent)
    emb = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
    return emb


class TimestepEmbedding(nnx.Module):
    """t (...,) -> linear_2(silu(linear_1(sinusoid_D(t)))) (..., E), in float32."""

    def __init__(self, width: int, temb_dim: int, *, rngs: nnx.Rngs, param_dtype):
        self.width = width
        kw = dict(rngs=rngs, dtype=jnp.float32, param_dtype=param_dtype)
        self.linear_1 = Dense((width,), (temb_dim,), ("embed",), ("temb",), **kw)
        self.linear_2 = Dense((temb_dim,), (temb_dim,), ("temb",), (None,), **kw)

    def __call__(self, timesteps: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(timestep_sinusoid(timesteps, self.width))))


def patchify(latents: jax.Array, patch: int) -> jax.Array:
    """(B, F, H, W, C) -> (B, F*(H/p)*(W/p), p*p*C).

    Tokens in (f, h, w) order (w fastest), features in (ph, pw, c) order.
    """
    b, f, h, w, c = latents.shape
    x = latents.reshape(b, f, h // patch, patch, w // patch, patch, c)
    x = x.transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, f * (h // patch) * (w // patch), patch * patch * c)


def unpatchify(tokens: jax.Array, frames: int, height: int, width: int, patch: int) -> jax.Array:
    """Inverse of ``patchify``: (B, F*gh*gw, p*p*C) -> (B, F, H, W, C)."""
    b = tokens.shape[0]
    gh, gw = height // patch, width // patch
    c = tokens.shape[-1] // (patch * patch)
    x = tokens.reshape(b, frames, gh, gw, patch, patch, c)
    x = x.transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, frames, height, width, c)
