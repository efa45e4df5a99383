"""``Mask2DiT``: the CogVideoX transformer with mask 1 (attention) and mask 2 (per-scene t).

Call ``model(latents, text_embeds, timesteps, *, num_scenes[, scene_frames, samples])``:
  latents      (B, S*F, H, W, C)  channels-last, the S scenes' latent frames concatenated
                                  (scenes of their own lengths: (B, F_1+..+F_S, H, W, C) with
                                  ``scene_frames=(F_1, .., F_S)``),
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
from jax.ad_checkpoint import checkpoint_name

from m2dit_jax.layout import CAUSAL_CONDITIONS, SceneLayout
from m2dit_jax.model.block import ACT, Mask2DiTBlock, scene_broadcast, scene_repeat
from m2dit_jax.model.config import validate_config
from m2dit_jax.model.embeddings import TimestepEmbedding, patchify, unpatchify
from m2dit_jax.model.layers import Dense, LayerNorm
from m2dit_jax.model.positions import (
    release_sincos_table,
    rope_tables,
    sincos_table,
    stretch_frames,
)
from m2dit_jax.sharding import constrain

# Remat (activation checkpointing) policies of ``config.remat`` for each block. Names come
# from ``checkpoint_name`` in the block: "query"/"key"/"value" (after qk-norm and RoPE),
# "attn_out" (the attention output before to_out) and "block_input" (the block's input).
# The "offload_*" policies move saved values to host memory ("pinned_host") and back.
_QKV_ATTN = ("query", "key", "value", "attn_out")
_cp = jax.checkpoint_policies


def _offload(*names: str):
    return _cp.save_and_offload_only_these_names(
        names_which_can_be_saved=(),
        names_which_can_be_offloaded=names,
        offload_src="device",
        offload_dst="pinned_host",
    )


def _save_attention(*names: str):
    """Saves the named values and every Pallas kernel's outputs (splash: its output and
    log-sum-exp, so the backward does not re-run the attention forward). Off TPU the split
    backend's statistics are not kernel outputs: its forward is recomputed there."""
    by_name = _cp.save_only_these_names(*names)

    def policy(prim, *args, **params):
        return prim.name == "pallas_call" or by_name(prim, *args, **params)

    return policy


REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    # keep the weight matmuls' outputs (no batch dims), recompute attention and elementwise ops
    "save_dots": _cp.dots_with_no_batch_dims_saveable,
    # keep the attention output (+ the kernel's residuals); "qkv": q, k, v too
    "save_attn": _save_attention("attn_out"),
    "save_qkv_attn": _save_attention(*_QKV_ATTN),
    "offload_attn": _offload("attn_out"),
    "offload_qkv_attn": _offload(*_QKV_ATTN),
    "offload_dots": _cp.offload_dot_with_no_batch_dims("device", "pinned_host"),
    # full remat with each block's input (the scan carry kept for the backward) on the host
    "offload_input": _offload("block_input"),
}
OFFLOAD_POLICIES = tuple(k for k in REMAT_POLICIES if k.startswith("offload_"))
_REMAT_POLICIES = REMAT_POLICIES  # old name


def remat_policy(name: str):
    """The ``jax.checkpoint`` policy of ``config.remat`` ``name`` (None = save nothing).

    Host-offload policies need a "pinned_host" memory space on the platform the program is
    traced for (``target_platform``: the active mesh's devices, so a TPU topology compiled on a
    CPU host counts as TPU); anything else raises ValueError — never a silent fallback.
    """
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {name!r}; known: none, {', '.join(REMAT_POLICIES)}")
    if name in OFFLOAD_POLICIES:
        from m2dit_jax.attention.dispatch import target_platform

        platform = target_platform()
        local = jax.devices()[0]
        if platform == local.platform:
            kinds = {m.kind for m in local.addressable_memories()}
        else:  # ahead-of-time for devices this process cannot address (TPU topologies)
            kinds = {"pinned_host"} if platform == "tpu" else set()
        if "pinned_host" not in kinds:
            raise ValueError(
                f"remat policy {name!r} offloads activations to host memory, but the target "
                f"platform {platform!r} has no 'pinned_host' memory space (memory kinds: "
                f"{sorted(kinds) or 'unknown'}); use a save_*/full policy instead"
            )
    return REMAT_POLICIES[name]


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
        self,
        latent_shape: Sequence[int],
        num_scenes: int,
        text_len: int | None = None,
        causal_conditions: int = 0,
        scene_frames: Sequence[int] | None = None,
        samples: Sequence[int] | None = None,
    ) -> SceneLayout:
        """SceneLayout of latents shaped (B, S*F, H, W, C) (or without B) for ``num_scenes``.

        ``text_len`` defaults to ``config.text_len`` (caption tokens per scene).
        ``scene_frames``: the S scenes' latent frame counts when they differ (ragged scenes;
        they must sum to the latent frame axis); None = S equal scenes.
        ``samples``: packed sequences: scenes per packed sample (S_1, .., S_P) summing to S.
        ``causal_conditions=K > 0``: the first K scenes are mask-2 conditions under
        ``mask_mode="causal_conditions"`` (needs the model's ``mask_mode="mask2dit"``).
        """
        shape = tuple(latent_shape)
        if len(shape) not in (4, 5):
            raise ValueError(
                f"latent shape must be (B, S*F, H, W, C) or (S*F, H, W, C), got {shape}"
            )
        frames, height, width = shape[-4], shape[-3], shape[-2]
        if isinstance(num_scenes, bool) or not isinstance(num_scenes, int) or num_scenes <= 0:
            raise ValueError(f"num_scenes must be a positive int, got {num_scenes!r}")
        if scene_frames is not None:
            scene_len = tuple(scene_frames)  # checked by SceneLayout, their sum below
        elif frames % num_scenes:
            raise ValueError(
                f"latent frames {frames} (axis 1) are not divisible by num_scenes={num_scenes}; "
                "scenes of different lengths need scene_frames=(F_1, ..., F_S)"
            )
        else:
            scene_len = frames // num_scenes
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"latent H x W = {height} x {width} must be multiples of patch {p}")
        k = causal_conditions
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"causal_conditions must be an int >= 0, got {k!r}")
        if k and self.config.mask_mode != "mask2dit":
            raise ValueError(
                f"causal_conditions={k} refines mask 1 and needs model mask_mode='mask2dit', "
                f"got {self.config.mask_mode!r}"
            )
        layout = SceneLayout(
            num_scenes,
            int(text_len if text_len is not None else self.config.text_len),
            scene_len,
            height // p,
            width // p,
            text_pad_to=self.config.text_pad_to,
            mask_mode=CAUSAL_CONDITIONS if k else self.config.mask_mode,
            num_conditions=int(k),
            samples=None if samples is None else tuple(int(n) for n in samples),
        )
        if layout.total_frames != frames:
            raise ValueError(
                f"scene_frames {layout.scene_frames} sum to {layout.total_frames} latent frames "
                f"but the latents have {frames} (axis 1)"
            )
        return layout

    # ------------------------------------------------------------------ positions
    def _rope(self, layout: SceneLayout):
        """(cos, sin) (L, Dh) for the whole sequence: identity rows for text tokens; packed
        samples each get the positions of their own frames (restarting at 0)."""
        cfg = self.config
        if layout.is_packed:
            cos, sin = zip(*(self._video_rope(part) for part in self._parts(layout)))
            cos, sin = np.concatenate(cos), np.concatenate(sin)
        else:
            cos, sin = self._video_rope(layout)
        text = layout.text_total
        cos = np.concatenate([np.ones((text, cfg.head_dim), np.float32), cos])
        sin = np.concatenate([np.zeros((text, cfg.head_dim), np.float32), sin])
        return jnp.asarray(cos), jnp.asarray(sin)

    def _video_rope(self, layout: SceneLayout) -> tuple[np.ndarray, np.ndarray]:
        """(cos, sin) (video tokens, Dh) of one sample's frames, positions from 0."""
        cfg = self.config
        p = cfg.patch_size
        return rope_tables(
            cfg.head_dim,
            layout.total_frames,
            layout.grid_h,
            layout.grid_w,
            cfg.sample_height // p,
            cfg.sample_width // p,
            cfg.get("positions_convention", "diffusers"),
        )

    @staticmethod
    def _parts(layout: SceneLayout) -> list[SceneLayout]:
        return [layout.sample_layout(j) for j in range(len(layout.sample_sizes))]

    def _sincos(self, layout: SceneLayout) -> jax.Array:
        cfg = self.config
        if layout.is_packed:  # each sample's own table: positions restart per sample
            return jnp.concatenate([self._sincos(part) for part in self._parts(layout)])
        if cfg.get("positions_convention", "diffusers") == "release":
            p = cfg.patch_size
            return jnp.asarray(
                release_sincos_table(
                    cfg.num_heads * cfg.head_dim,
                    layout.num_scenes,
                    layout.scene_frames,
                    layout.grid_h,
                    layout.grid_w,
                    cfg.sample_frames,
                    cfg.sample_height // p,
                    cfg.sample_width // p,
                    float(cfg.spatial_interpolation_scale),
                    float(cfg.temporal_interpolation_scale),
                )
            )
        stretch = cfg.sincos_temporal == "stretch"
        if stretch and layout.is_ragged:
            raise ValueError(
                f"sincos_temporal='stretch' stretches one scene's table over S equal scenes; "
                f"scenes of different lengths {layout.frames} have no such table. Use "
                "sincos_temporal='continuous' (positions over all frames) for ragged scenes"
            )
        frames = layout.frames if stretch else layout.total_frames
        table = sincos_table(
            cfg.num_heads * cfg.head_dim,
            frames,
            layout.grid_h,
            layout.grid_w,
            float(cfg.spatial_interpolation_scale),
            float(cfg.temporal_interpolation_scale),
        )
        if stretch and layout.num_scenes > 1:
            table = stretch_frames(table, frames, layout.tokens_per_frame, layout.total_frames)
        return jnp.asarray(table)

    # ------------------------------------------------------------------ forward
    def _check_inputs(
        self,
        latents,
        text_embeds,
        timesteps,
        num_scenes,
        causal_conditions=0,
        scene_frames=None,
        samples=None,
    ) -> SceneLayout:
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
        return self.layout(
            latents.shape,
            num_scenes,
            text_embeds.shape[1] // num_scenes,
            causal_conditions,
            scene_frames,
            samples,
        )

    def __call__(
        self,
        latents: jax.Array,
        text_embeds: jax.Array,
        timesteps: jax.Array,
        *,
        num_scenes: int,
        causal_conditions: int = 0,
        scene_frames: Sequence[int] | None = None,
        samples: Sequence[int] | None = None,
    ) -> jax.Array:
        """Predicts (B, S*F, H, W, out_channels) float32; see the module docstring.

        ``causal_conditions=K > 0``: the first K scenes are mask-2 conditions and attend only
        among themselves (``mask_mode="causal_conditions"``); 0 (default) is mask 1.
        ``scene_frames``: per-scene latent frame counts for scenes of different lengths
        (static: one compiled program per distinct tuple); None = equal scenes.
        ``samples``: packed sequences, scenes per packed sample (static): tokens of different
        samples never attend to each other and positions restart per sample; timesteps are
        given per scene (B, S).
        """
        cfg = self.config
        layout = self._check_inputs(
            latents, text_embeds, timesteps, num_scenes, causal_conditions, scene_frames, samples
        )
        batch, s = latents.shape[0], num_scenes
        t = jnp.asarray(timesteps)
        if t.ndim == 1:  # one t per sample: every scene shares it (the same path, same bits)
            t = jnp.broadcast_to(t[:, None], (batch, s))
        temb = self.time_embedding(t)  # (B, S, E) f32
        sincos = self._sincos(layout) if cfg.positions == "sincos" else None
        x = self._embed(latents, text_embeds, layout, sincos)
        rope = self._rope(layout) if cfg.positions == "rope" else None
        x = self._run_blocks(x, temb, rope, layout)
        return self._head(x, temb, layout, latents.shape)

    # ------------------------------------------------------------------ pieces of the forward
    def _embed(self, latents, text_embeds, layout: SceneLayout, sincos) -> jax.Array:
        """[projected captions (padded per scene) | patch-embedded video (+ sin-cos rows)]."""
        cfg = self.config
        batch, s = latents.shape[0], layout.num_scenes
        text = self.text_proj(text_embeds)  # (B, S*T, D)
        if layout.text_padding:
            text = text.reshape(batch, s, layout.text_len, -1)
            text = jnp.pad(text, ((0, 0), (0, 0), (0, layout.text_padding), (0, 0)))
            text = text.reshape(batch, layout.text_total, -1)
        video = self.patch_proj(patchify(latents, cfg.patch_size))  # (B, N, D)
        if sincos is not None:
            video = video + sincos.astype(video.dtype)
        return constrain(jnp.concatenate([text, video], axis=1).astype(jnp.dtype(cfg.dtype)), ACT)

    def _head(self, x, temb, layout: SceneLayout, latent_shape) -> jax.Array:
        """Final adaLN over the video tokens, projection, unpatchify -> f32 latents."""
        video = self.norm_final(x[:, layout.text_total :])
        shift, scale = jnp.split(self.norm_out_linear(jax.nn.silu(temb)), 2, axis=-1)
        # only video tokens remain: per-scene broadcast over the video part alone
        scale_tok = scene_repeat(scale, layout)
        shift_tok = scene_repeat(shift, layout)
        video = self.norm_out(video) * (1 + scale_tok) + shift_tok
        out = self.proj_out(video).astype(jnp.float32)
        _, frames, height, width, _ = latent_shape
        return unpatchify(out, frames, height, width, self.config.patch_size)

    # ------------------------------------------------------------------ cached extension
    def _window_parts(
        self, cond_shape, new_shape, text_len: int, num_scenes: int, scene_frames=None
    ):
        """(window layout, conditions' layout, new scene's layout, positions of each part).

        ``scene_frames``: the window's per-scene latent frames (conditions, then the new
        scene) when they differ; None = equal scenes of the new scene's length."""
        s, k = num_scenes, num_scenes - 1
        if isinstance(s, bool) or not isinstance(s, int) or s < 2:
            raise ValueError(f"num_scenes (the window) must be an int >= 2, got {num_scenes!r}")
        if scene_frames is None:
            window_frames = (new_shape[1],) * s
        else:
            window_frames = tuple(int(f) for f in scene_frames)
            if len(window_frames) != s or min(window_frames) < 1:
                raise ValueError(
                    f"scene_frames {scene_frames!r} must give the {s} window scenes' latent "
                    "frames (conditions, then the new scene)"
                )
        if new_shape[1] != window_frames[-1]:
            raise ValueError(
                f"the new scene's latents have {new_shape[1]} frames; scene_frames says "
                f"{window_frames[-1]}"
            )
        cond_frames = sum(window_frames[:k])
        if cond_shape is not None and tuple(cond_shape[2:]) != tuple(new_shape[2:]):
            raise ValueError(
                f"condition latents {tuple(cond_shape)} and new-scene latents "
                f"{tuple(new_shape)} differ in H, W or C"
            )
        if cond_shape is not None and cond_shape[1] != cond_frames:
            raise ValueError(
                f"condition latents have {cond_shape[1]} frames; a window of {s} scenes "
                f"{window_frames} needs {k} conditions with {cond_frames} frames"
            )
        window_shape = (new_shape[0], sum(window_frames), *new_shape[2:])
        ragged = len(set(window_frames)) > 1
        window = self.layout(
            window_shape, s, text_len, causal_conditions=k,
            scene_frames=window_frames if ragged else None,
        )  # fmt: skip
        geometry = dict(text_pad_to=window.text_pad_to)
        grid = (window.grid_h, window.grid_w)
        cond = SceneLayout(k, text_len, window.scene_frames[:k], *grid, **geometry)
        new = SceneLayout(1, text_len, window.scene_frames[-1], *grid, **geometry)
        tb, tt = window.text_block, window.text_total
        lc, lv = cond.video_total, new.video_total
        cond_idx = np.concatenate([np.arange(k * tb), tt + np.arange(lc)])
        new_idx = np.concatenate([k * tb + np.arange(tb), tt + lc + np.arange(lv)])
        cfg = self.config
        rope_cond = rope_new = sincos_cond = sincos_new = None
        if cfg.positions == "rope":
            cos, sin = self._rope(window)
            rope_cond, rope_new = (cos[cond_idx], sin[cond_idx]), (cos[new_idx], sin[new_idx])
        else:
            table = self._sincos(window)
            sincos_cond, sincos_new = table[:lc], table[lc:]
        return window, cond, new, (rope_cond, sincos_cond), (rope_new, sincos_new)

    def condition_cache(
        self,
        cond_latents: jax.Array,
        cond_text: jax.Array,
        *,
        num_scenes: int,
        scene_frames: Sequence[int] | None = None,
    ) -> dict[str, jax.Array]:
        """Per-layer keys/values of the condition scenes' video, for ``cached_call``.

        Under ``mask_mode="causal_conditions"`` the conditions attend only among themselves
        (mask 1 over the conditions) at t = 0, so one forward over them gives every layer's
        keys/values for a whole extension. Positions are those of the conditions inside the
        ``num_scenes`` window (RoPE / sin-cos rows of the window layout).

        Args:
          cond_latents: (B, K*F, H, W, C) the K = num_scenes - 1 clean condition scenes.
          cond_text: (B, K*T, text_dim) their captions (the negative captions for CFG's
            unconditional branch: the cache is per branch).
          num_scenes: the window S = K + 1.
          scene_frames: the window's S per-scene latent frames when scenes differ in length
            (the last entry, the new scene's, does not change the conditions' cache).
        Returns:
          {"k", "v"}: (num_layers, B, K * video tokens per scene, heads, head_dim), compute
          dtype. Memory: 2 x layers x K x video tokens x width values.
        """
        cfg = self.config
        k = num_scenes - 1 if isinstance(num_scenes, int) else num_scenes
        if cond_latents.ndim != 5 or cond_text.ndim != 3:
            raise ValueError(
                f"cond_latents must be (B, K*F, H, W, C) and cond_text (B, K*T, D), got "
                f"{cond_latents.shape}, {cond_text.shape}"
            )
        divides = scene_frames is not None or cond_latents.shape[1] % max(k, 1) == 0
        if not isinstance(k, int) or k < 1 or cond_text.shape[1] % k or not divides:
            raise ValueError(
                f"num_scenes={num_scenes!r}: condition text {cond_text.shape} / latents "
                f"{cond_latents.shape} do not split into num_scenes - 1 conditions"
            )
        cond_frames = None
        if scene_frames is not None:
            cond_frames = tuple(int(f) for f in scene_frames)[:-1]
            if len(set(cond_frames)) == 1:
                cond_frames = None
        layout = self._check_inputs(
            cond_latents, cond_text, jnp.zeros((cond_latents.shape[0],), jnp.int32), k,
            scene_frames=cond_frames,
        )  # fmt: skip
        new_frames = layout.scene_frames[-1] if scene_frames is None else int(scene_frames[-1])
        new_shape = (cond_latents.shape[0], new_frames, *cond_latents.shape[2:])
        _, cond_layout, _, (rope, sincos), _ = self._window_parts(
            cond_latents.shape,
            new_shape,
            layout.text_len,
            num_scenes,
            layout.scene_frames + (new_frames,) if scene_frames is not None else None,
        )
        temb = self.time_embedding(jnp.zeros((cond_latents.shape[0], k), jnp.int32))
        x = self._embed(cond_latents, cond_text, cond_layout, sincos)

        def apply(graphdef, state, h):
            return nnx.merge(graphdef, state).prefill(h, temb, rope, cond_layout)

        if cfg.scan_layers:
            graphdef, state = nnx.split(self.blocks)

            def body(h, layer_state):
                h, kc, vc = apply(graphdef, layer_state, h)
                return h, (kc, vc)

            _, (ks, vs) = jax.lax.scan(body, x, state)
            return {"k": ks, "v": vs}
        ks, vs = [], []
        for block in self.blocks:
            graphdef, state = nnx.split(block)
            x, kc, vc = apply(graphdef, state, x)
            ks.append(kc)
            vs.append(vc)
        return {"k": jnp.stack(ks), "v": jnp.stack(vs)}

    def cached_call(
        self,
        latents: jax.Array,
        text_embeds: jax.Array,
        timesteps: jax.Array,
        cache: dict[str, jax.Array],
        *,
        num_scenes: int,
        scene_frames: Sequence[int] | None = None,
    ) -> jax.Array:
        """The new (last) scene's prediction, its tokens only, conditions from ``cache``.

        Equals the last scene of ``model(window, text, t, num_scenes=S,
        causal_conditions=S-1)`` (to float round-off) for the conditions the cache was built
        from (``condition_cache``).

        Args:
          latents: (B, F, H, W, C) the new scene.
          text_embeds: (B, T, text_dim) its caption.
          timesteps: (B,) or (B, 1) the new scene's timestep.
          cache: ``condition_cache`` output for the same batch (and CFG branch order).
          num_scenes: the window S (conditions + 1).
          scene_frames: the window's S per-scene latent frames when scenes differ in length
            (the last is the new scene's F); None = equal scenes.
        Returns:
          (B, F, H, W, out_channels) float32.
        """
        cfg = self.config
        t = jnp.asarray(timesteps)
        if t.ndim == 2:
            if t.shape[1] != 1:
                raise ValueError(f"timesteps must be (B,) or (B, 1), got {t.shape}")
            t = t[:, 0]
        layout = self._check_inputs(latents, text_embeds, t, 1)
        if not isinstance(cache, dict) or set(cache) != {"k", "v"}:
            raise ValueError("cache must be the {'k', 'v'} dict condition_cache returns")
        _, cond_layout, new_layout, _, (rope, sincos) = self._window_parts(
            None, latents.shape, layout.text_len, num_scenes, scene_frames
        )
        k_cache, v_cache = cache["k"], cache["v"]
        expected = (
            cfg.num_layers,
            latents.shape[0],
            cond_layout.video_total,
            cfg.num_heads,
            cfg.head_dim,
        )
        if k_cache.shape != expected or v_cache.shape != expected:
            raise ValueError(
                f"cache k/v must be {expected} (layers, B, conditions' video tokens, heads, "
                f"head_dim) for this window; got {k_cache.shape}, {v_cache.shape}"
            )
        temb = self.time_embedding(t[:, None])  # (B, 1, E)
        x = self._embed(latents, text_embeds, new_layout, sincos)

        def apply(graphdef, state, h, kc, vc):
            return nnx.merge(graphdef, state).cached(h, temb, rope, new_layout, kc, vc)

        if cfg.scan_layers:
            graphdef, state = nnx.split(self.blocks)

            def body(h, xs):
                layer_state, kc, vc = xs
                return apply(graphdef, layer_state, h, kc, vc), None

            x, _ = jax.lax.scan(body, x, (state, k_cache, v_cache))
        else:
            for i, block in enumerate(self.blocks):
                graphdef, state = nnx.split(block)
                x = apply(graphdef, state, x, k_cache[i], v_cache[i])
        return self._head(x, temb, new_layout, latents.shape)

    def _run_blocks(self, x, temb, rope, layout: SceneLayout) -> jax.Array:
        cfg = self.config

        def apply(graphdef, state, h):
            h = checkpoint_name(h, "block_input")  # for remat "offload_input"
            return nnx.merge(graphdef, state)(h, temb, rope, layout)

        if cfg.remat != "none":
            apply = jax.checkpoint(
                apply,
                policy=remat_policy(cfg.remat),
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
