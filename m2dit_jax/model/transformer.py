"""``Mask2DiT``: the CogVideoX transformer with mask 1 (attention) and mask 2 (per-scene t).

Call ``model(latents, text_embeds, timesteps, *, num_scenes)``:
  latents      (B, S*F, H, W, C)  channels-last, the S scenes' latent frames concatenated,
  text_embeds  (B, S*T, text_dim) the S captions' encoder outputs concatenated,
  timesteps    (B,) or (B, S)     per-scene timesteps (mask 2: t = 0 for condition scenes),
returns the prediction (B, S*F, H, W, out_channels) in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from m2dit_jax.layout import SceneLayout
from m2dit_jax.model.block import ACT, Mask2DiTBlock, scene_broadcast
from m2dit_jax.model.config import validate_config
from m2dit_jax.model.embeddings import TimestepEmbedding, patchify, unpatchify
from m2dit_jax.model.layers import Dense, LayerNorm
from m2dit_jax.model.positions import rope_tables, sincos_table, stretch_frames
from m2dit_jax.sharding import constrain

_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    # keep the weight matmuls' outputs (no batch dims), recompute attention and elementwise ops
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Mask2DiT(nnx.Module):
    """The Mask²DiT / CogVideoX-1.0 transformer (Flax NNX).

    Parameters carry logical axis names (see ``m2dit_jax.sharding.LOGICAL_RULES``); with
    ``config.scan_layers`` the blocks' parameters are stacked on a leading "layers" axis and
    the forward pass is a ``jax.lax.scan`` (fast compiles for 30-42 layers).
    """

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        validate_config(config)
        self.config = ml_collections.FrozenConfigDict(config)
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        width = cfg.num_heads * cfg.head_dim
        p = cfg.patch_size
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.text_proj = Dense((cfg.text_dim,), (width,), ("text_embed",), ("embed",), **kw)
        self.patch_proj = Dense((p * p * cfg.in_channels,), (width,), ("patch",), ("embed",), **kw)
        self.time_embedding = TimestepEmbedding(
            width, cfg.time_embed_dim, rngs=rngs, param_dtype=param_dtype
        )
        if cfg.scan_layers:
            self.blocks = Mask2DiTBlock(cfg, stack=cfg.num_layers, **kw)
        else:
            self.blocks = nnx.List([Mask2DiTBlock(cfg, **kw) for _ in range(cfg.num_layers)])
        norm_kw = dict(eps=cfg.norm_eps, names="embed", dtype=dtype, param_dtype=param_dtype)
        self.norm_final = LayerNorm(width, **norm_kw)
        self.norm_out_linear = Dense(
            (cfg.time_embed_dim,), (2 * width,), ("temb",), ("embed",), **kw
        )
        self.norm_out = LayerNorm(width, **norm_kw)
        self.proj_out = Dense((width,), (p * p * cfg.out_channels,), ("embed",), ("patch",), **kw)

    # ------------------------------------------------------------------ layout
    def layout(
        self, latent_shape: Sequence[int], num_scenes: int, text_len: int | None = None
    ) -> SceneLayout:
        """SceneLayout of latents shaped (B, S*F, H, W, C) (or without B) for ``num_scenes``.

        ``text_len`` defaults to ``config.text_len`` (caption tokens per scene).
        """
        shape = tuple(latent_shape)
        if len(shape) not in (4, 5):
            raise ValueError(
                f"latent shape must be (B, S*F, H, W, C) or (S*F, H, W, C), got {shape}"
            )
        frames, height, width = shape[-4], shape[-3], shape[-2]
        if isinstance(num_scenes, bool) or not isinstance(num_scenes, int) or num_scenes <= 0:
            raise ValueError(f"num_scenes must be a positive int, got {num_scenes!r}")
        if frames % num_scenes:
            raise ValueError(
                f"latent frames {frames} (axis 1) are not divisible by num_scenes={num_scenes}"
            )
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"latent H x W = {height} x {width} must be multiples of patch {p}")
        return SceneLayout(
            num_scenes,
            int(text_len if text_len is not None else self.config.text_len),
            frames // num_scenes,
            height // p,
            width // p,
            text_pad_to=self.config.text_pad_to,
            mask_mode=self.config.mask_mode,
        )

    # ------------------------------------------------------------------ positions
    def _rope(self, layout: SceneLayout):
        """(cos, sin) (L, Dh) for the whole sequence: identity rows for text tokens."""
        cfg = self.config
        p = cfg.patch_size
        cos, sin = rope_tables(
            cfg.head_dim,
            layout.num_scenes * layout.frames,
            layout.grid_h,
            layout.grid_w,
            cfg.sample_height // p,
            cfg.sample_width // p,
        )
        text = layout.text_total
        cos = np.concatenate([np.ones((text, cfg.head_dim), np.float32), cos])
        sin = np.concatenate([np.zeros((text, cfg.head_dim), np.float32), sin])
        return jnp.asarray(cos), jnp.asarray(sin)

    def _sincos(self, layout: SceneLayout) -> jax.Array:
        cfg = self.config
        stretch = cfg.sincos_temporal == "stretch"
        frames = layout.frames if stretch else layout.num_scenes * layout.frames
        table = sincos_table(
            cfg.num_heads * cfg.head_dim,
            frames,
            layout.grid_h,
            layout.grid_w,
            float(cfg.spatial_interpolation_scale),
            float(cfg.temporal_interpolation_scale),
        )
        if stretch and layout.num_scenes > 1:
            table = stretch_frames(
                table, frames, layout.tokens_per_frame, layout.num_scenes * layout.frames
            )
        return jnp.asarray(table)

    # ------------------------------------------------------------------ forward
    def _check_inputs(self, latents, text_embeds, timesteps, num_scenes) -> SceneLayout:
        cfg = self.config
        if latents.ndim != 5 or latents.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"latents must be (B, S*F, H, W, C={cfg.in_channels}), got {latents.shape}"
            )
        if text_embeds.ndim != 3 or text_embeds.shape[-1] != cfg.text_dim:
            raise ValueError(
                f"text_embeds must be (B, S*T, text_dim={cfg.text_dim}), got {text_embeds.shape}"
            )
        if text_embeds.shape[0] != latents.shape[0]:
            raise ValueError(
                f"batch sizes differ: latents {latents.shape[0]}, "
                f"text_embeds {text_embeds.shape[0]}"
            )
        if not isinstance(num_scenes, int) or num_scenes <= 0:
            raise ValueError(f"num_scenes must be a positive int, got {num_scenes!r}")
        if text_embeds.shape[1] % num_scenes:
            raise ValueError(
                f"text_embeds length {text_embeds.shape[1]} is not divisible by "
                f"num_scenes={num_scenes}"
            )
        batch = latents.shape[0]
        if jnp.shape(timesteps) not in ((batch,), (batch, num_scenes)):
            raise ValueError(
                f"timesteps must have shape (B,)=({batch},) or (B, S)=({batch}, {num_scenes}), "
                f"got {jnp.shape(timesteps)}"
            )
        return self.layout(latents.shape, num_scenes, text_embeds.shape[1] // num_scenes)

    def __call__(
        self,
        latents: jax.Array,
        text_embeds: jax.Array,
        timesteps: jax.Array,
        *,
        num_scenes: int,
    ) -> jax.Array:
        """Predicts (B, S*F, H, W, out_channels) float32; see the module docstring."""
        cfg = self.config
        layout = self._check_inputs(latents, text_embeds, timesteps, num_scenes)
        batch, s = latents.shape[0], num_scenes
        dtype = jnp.dtype(cfg.dtype)

        t = jnp.asarray(timesteps)
        if t.ndim == 1:  # one t per sample: every scene shares it (the same path, same bits)
            t = jnp.broadcast_to(t[:, None], (batch, s))
        temb = self.time_embedding(t)  # (B, S, E) f32

        text = self.text_proj(text_embeds)  # (B, S*T, D)
        if layout.text_padding:
            text = text.reshape(batch, s, layout.text_len, -1)
            text = jnp.pad(text, ((0, 0), (0, 0), (0, layout.text_padding), (0, 0)))
            text = text.reshape(batch, layout.text_total, -1)
        video = self.patch_proj(patchify(latents, cfg.patch_size))  # (B, N, D)
        if cfg.positions == "sincos":
            video = video + self._sincos(layout).astype(video.dtype)
        x = constrain(jnp.concatenate([text, video], axis=1).astype(dtype), ACT)

        rope = self._rope(layout) if cfg.positions == "rope" else None
        x = self._run_blocks(x, temb, rope, layout)

        video = self.norm_final(x[:, layout.text_total :])
        shift, scale = jnp.split(self.norm_out_linear(jax.nn.silu(temb)), 2, axis=-1)
        # only video tokens remain: per-scene broadcast over the video part alone
        scale_tok = jnp.repeat(
            scale, layout.video_len, axis=1, total_repeat_length=layout.video_total
        )
        shift_tok = jnp.repeat(
            shift, layout.video_len, axis=1, total_repeat_length=layout.video_total
        )
        video = self.norm_out(video) * (1 + scale_tok) + shift_tok
        out = self.proj_out(video).astype(jnp.float32)
        _, frames, height, width, _ = latents.shape
        return unpatchify(out, frames, height, width, cfg.patch_size)

    def _run_blocks(self, x, temb, rope, layout: SceneLayout) -> jax.Array:
        cfg = self.config

        def apply(graphdef, state, h):
            return nnx.merge(graphdef, state)(h, temb, rope, layout)

        if cfg.remat != "none":
            apply = jax.checkpoint(
                apply,
                policy=_REMAT_POLICIES[cfg.remat],
                prevent_cse=not cfg.scan_layers,
                static_argnums=(0,),
            )
        if cfg.scan_layers:
            graphdef, state = nnx.split(self.blocks)

            def body(h, layer_state):
                return apply(graphdef, layer_state, h), None

            x, _ = jax.lax.scan(body, x, state)
            return x
        for block in self.blocks:
            graphdef, state = nnx.split(block)
            x = apply(graphdef, state, x)
        return x


__all__ = ["Mask2DiT", "scene_broadcast"]
