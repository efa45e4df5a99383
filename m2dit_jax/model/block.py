"""One CogVideoX / Mask²DiT transformer block with per-scene adaLN modulation.

The block sees the whole sequence ``x`` (B, L, D) = [all caption blocks | all video tokens]
(``SceneLayout`` order). Its two ``CogVideoXLayerNormZero`` norms turn the per-scene timestep
embedding (B, S, E) into six (B, S, D) vectors — shift, scale, gate for video tokens, then for
text tokens — and every token takes the vectors of its own scene. This is how mask 2 enters
the network: condition scenes carry the embedding of t = 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from m2dit_jax.attention import masked_attention
from m2dit_jax.attention.cached import cached_attention
from m2dit_jax.layout import SceneLayout
from m2dit_jax.model.layers import Dense, LayerNorm
from m2dit_jax.model.positions import apply_rope
from m2dit_jax.sharding import constrain

ACT = ("batch", "seq", "act_embed")
HEADS = ("batch", "seq", "heads", "head_dim")


def scene_broadcast(text_values: jax.Array, video_values: jax.Array, layout: SceneLayout):
    """Per-scene vectors -> per-token vectors.

    Args:
      text_values, video_values: (B, S, D) values for scene i's text / video tokens.
    Returns:
      (B, L, D): row j holds the value of token j's scene and kind (text or video).
    """
    s = layout.num_scenes
    text = jnp.repeat(
        text_values, layout.text_block, axis=1, total_repeat_length=s * layout.text_block
    )
    return jnp.concatenate([text, scene_repeat(video_values, layout)], axis=1)


def scene_repeat(values: jax.Array, layout: SceneLayout) -> jax.Array:
    """(B, S, D) per-scene values -> (B, video_total, D): each scene's row for its video
    tokens (scenes of different lengths repeat their own number of times)."""
    counts = np.asarray(layout.video_lens) if layout.is_ragged else layout.video_len
    return jnp.repeat(values, counts, axis=1, total_repeat_length=layout.video_total)


class AdaLayerNormZero(nnx.Module):
    """CogVideoXLayerNormZero: one LayerNorm shared by both streams, per-scene modulation."""

    def __init__(self, config, *, rngs, dtype, param_dtype, stack):
        width = config.num_heads * config.head_dim
        self.linear = Dense(
            (config.time_embed_dim,),
            (6 * width,),
            ("temb",),
            ("embed",),
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            stack=stack,
        )
        self.norm = LayerNorm(
            width,
            eps=config.norm_eps,
            names="embed",
            dtype=dtype,
            param_dtype=param_dtype,
            stack=stack,
        )

    def __call__(self, x: jax.Array, temb: jax.Array, layout: SceneLayout):
        """x (B, L, D), temb (B, S, E) -> (modulated x (B, L, D), gate (B, L, D))."""
        mod = self.linear(jax.nn.silu(temb.astype(jnp.float32)))
        shift, scale, gate, enc_shift, enc_scale, enc_gate = jnp.split(mod, 6, axis=-1)
        scale_tok = scene_broadcast(enc_scale, scale, layout)
        shift_tok = scene_broadcast(enc_shift, shift, layout)
        gate_tok = scene_broadcast(enc_gate, gate, layout)
        y = self.norm(x) * (1 + scale_tok) + shift_tok
        return constrain(y, ACT), gate_tok


class Attention(nnx.Module):
    """Joint self-attention: q/k/v, qk-LayerNorm, RoPE on video tokens, mask-1 attention."""

    def __init__(self, config, *, rngs, dtype, param_dtype, stack):
        width, heads, head_dim = (
            config.num_heads * config.head_dim,
            config.num_heads,
            config.head_dim,
        )
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, stack=stack)
        proj = ((width,), (heads, head_dim), ("embed",), ("heads", "head_dim"))
        self.to_q = Dense(*proj, **kw)
        self.to_k = Dense(*proj, **kw)
        self.to_v = Dense(*proj, **kw)
        self.to_out = Dense((heads, head_dim), (width,), ("heads", "head_dim"), ("embed",), **kw)
        norm_kw = dict(eps=config.qk_norm_eps, names="head_dim", dtype=dtype)
        self.norm_q = LayerNorm(head_dim, param_dtype=param_dtype, stack=stack, **norm_kw)
        self.norm_k = LayerNorm(head_dim, param_dtype=param_dtype, stack=stack, **norm_kw)
        self.backend = config.attention_backend
        self.options = dict(config.attention_options)

    def qkv(self, x, rope):
        """x (B, L, D) -> q, k, v (B, L, H, Dh): projected, qk-normed, RoPE applied."""
        q = self.norm_q(self.to_q(x))
        k = self.norm_k(self.to_k(x))
        v = self.to_v(x)
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        # names for the remat policies (m2dit_jax.model.transformer.REMAT_POLICIES)
        q, k, v = (constrain(t, HEADS) for t in (q, k, v))
        return checkpoint_name(q, "query"), checkpoint_name(k, "key"), checkpoint_name(v, "value")

    def project_out(self, out: jax.Array) -> jax.Array:
        out = checkpoint_name(constrain(out, HEADS), "attn_out")
        return constrain(self.to_out(out), ACT)

    def __call__(self, x, rope, layout: SceneLayout) -> jax.Array:
        """x (B, L, D); rope None or (cos, sin) (L, Dh) -> (B, L, D)."""
        return self.attend(x, rope, layout)[0]

    def attend(self, x, rope, layout: SceneLayout):
        """Like ``__call__``, also returning this layer's k, v (B, L, H, Dh)."""
        q, k, v = self.qkv(x, rope)
        out = masked_attention(q, k, v, layout, backend=self.backend, **self.options)
        return self.project_out(out), k, v

    def cached(self, x, rope, layout: SceneLayout, cache_k, cache_v) -> jax.Array:
        """One new scene's tokens x (B, L1, D) attending to [cached condition video ; own].

        ``layout``: the one-scene layout of the new scene; cache_k/v (B, Nc, H, Dh).
        """
        q, k, v = self.qkv(x, rope)
        out = cached_attention(
            q, k, v, cache_k, cache_v, layout, backend=self.backend, **self.options
        )
        return self.project_out(out)


class FeedForward(nnx.Module):
    """Linear(D -> mlp_ratio*D), tanh-GELU, Linear back."""

    def __init__(self, config, *, rngs, dtype, param_dtype, stack):
        width = config.num_heads * config.head_dim
        inner = config.mlp_ratio * width
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, stack=stack)
        self.proj_in = Dense((width,), (inner,), ("embed",), ("mlp",), **kw)
        self.proj_out = Dense((inner,), (width,), ("mlp",), ("embed",), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.gelu(self.proj_in(x), approximate=True)
        h = constrain(h, ("batch", "seq", "mlp"))
        return constrain(self.proj_out(h), ACT)


class Mask2DiTBlock(nnx.Module):
    """adaLN-zero -> attention -> gated residual; adaLN-zero -> MLP -> gated residual.

    With ``stack=L`` the module holds L blocks' parameters on a leading "layers" axis; call it
    on one layer's slice (see ``Mask2DiT``).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        *,
        rngs: nnx.Rngs,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        stack: int | None = None,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, stack=stack)
        self.norm1 = AdaLayerNormZero(config, **kw)
        self.attn = Attention(config, **kw)
        self.norm2 = AdaLayerNormZero(config, **kw)
        self.ff = FeedForward(config, **kw)

    def __call__(self, x, temb, rope, layout: SceneLayout) -> jax.Array:
        """x (B, L, D), temb (B, S, E), rope None | (cos, sin) (L, Dh) -> (B, L, D)."""
        h, gate = self.norm1(x, temb, layout)
        x = x + gate * self.attn(h, rope, layout)
        h, gate = self.norm2(x, temb, layout)
        x = x + gate * self.ff(h)
        return constrain(x, ACT)

    def prefill(self, x, temb, rope, layout: SceneLayout):
        """The condition scenes' forward (``layout``: the conditions alone, mask 1): returns
        (x (B, L, D), k, v (B, video tokens, H, Dh)) — the video keys/values a generated scene
        attends to under ``mask_mode="causal_conditions"``."""
        h, gate = self.norm1(x, temb, layout)
        attn, k, v = self.attn.attend(h, rope, layout)
        x = x + gate * attn
        h, gate = self.norm2(x, temb, layout)
        x = x + gate * self.ff(h)
        video = slice(layout.text_total, None)
        return constrain(x, ACT), constrain(k[:, video], HEADS), constrain(v[:, video], HEADS)

    def cached(self, x, temb, rope, layout: SceneLayout, cache_k, cache_v) -> jax.Array:
        """The new scene's tokens only (``layout``: one scene), conditions from the cache."""
        h, gate = self.norm1(x, temb, layout)
        x = x + gate * self.attn.cached(h, rope, layout, cache_k, cache_v)
        h, gate = self.norm2(x, temb, layout)
        x = x + gate * self.ff(h)
        return constrain(x, ACT)
