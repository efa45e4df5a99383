"""The CogVideoX 3D causal VAE in Flax NNX: encoder, decoder and the chunked encode/decode.

Video is channels-last ``(B, F, H, W, 3)`` float in [-1, 1]; latents are
``(B, F', H/8, W/8, C)`` with F' = 1 + (F - 1) / 4 for F = 4k + 1 (49 -> 13). Like diffusers,
``encode`` runs the encoder on 8 pixel frames at a time (the first chunk also takes the
``F % 8`` leftover frames) and ``decode`` runs the decoder on 2 latent frames at a time, causal
conv caches carried between chunks; GroupNorm statistics are per chunk, so these chunk sizes
are part of the model's numerics. The chunks after the first all have one shape and run
under ``jax.lax.scan``, so a whole encode/decode jits into one program.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m2dit_jax.encoders.vae.config import VAEConfig, chunk_bounds
from m2dit_jax.encoders.vae.layers import (
    CausalConv3d,
    Downsample3D,
    GroupNorm,
    ResnetBlock3D,
    SpatialNorm3D,
    Upsample3D,
)


class _Blocks(nnx.Module):
    """diffusers' Down/Mid/Up block: resnets, then an optional resampler."""

    def __init__(self, resnets: list, resampler=None, name: str = "downsamplers"):
        self.resnets = nnx.List(resnets)
        self.resampler_name = name
        setattr(self, name, nnx.List([resampler]) if resampler is not None else None)

    def __call__(self, x, zq, cache):
        cache = cache or {}
        new = {}
        for i, resnet in enumerate(self.resnets):
            x, new[f"resnet_{i}"] = resnet(x, zq, cache.get(f"resnet_{i}"))
        resamplers = getattr(self, self.resampler_name)
        if resamplers is not None:
            x = resamplers[0](x)
        return x, new


class Encoder3D(nnx.Module):
    """(B, T, H, W, 3) -> (B, T', H/8, W/8, 2 * latent_channels) moments, one chunk."""

    def __init__(self, cfg: VAEConfig, *, rng, dtype, param_dtype):
        kw = dict(rng=rng, dtype=dtype, param_dtype=param_dtype)
        res = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, zq_channels=None, **kw)
        chans = cfg.block_out_channels
        self.conv_in = CausalConv3d(cfg.in_channels, chans[0], 3, **kw)
        blocks = []
        cout = chans[0]
        for i, c in enumerate(chans):
            cin, cout = cout, c
            resnets = [
                ResnetBlock3D(cin if j == 0 else cout, cout, **res)
                for j in range(cfg.layers_per_block)
            ]
            down = None
            if i < len(chans) - 1:
                down = Downsample3D(cout, i < cfg.temporal_levels, **kw)
            blocks.append(_Blocks(resnets, down, "downsamplers"))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = _Blocks([ResnetBlock3D(chans[-1], chans[-1], **res) for _ in range(2)])
        self.norm_out = GroupNorm(cfg.norm_num_groups, chans[-1], 1e-6, param_dtype=param_dtype)
        self.conv_out = CausalConv3d(chans[-1], 2 * cfg.latent_channels, 3, **kw)

    def __call__(self, x, cache=None):
        cache = cache or {}
        new = {}
        h, new["conv_in"] = self.conv_in(x, cache.get("conv_in"))
        for i, block in enumerate(self.down_blocks):
            h, new[f"down_block_{i}"] = block(h, None, cache.get(f"down_block_{i}"))
        h, new["mid_block"] = self.mid_block(h, None, cache.get("mid_block"))
        h = jax.nn.silu(self.norm_out(h))
        h, new["conv_out"] = self.conv_out(h, cache.get("conv_out"))
        return h, new


class Decoder3D(nnx.Module):
    """(B, t, h, w, latent_channels) -> (B, T, 8h, 8w, 3), one chunk."""

    def __init__(self, cfg: VAEConfig, *, rng, dtype, param_dtype):
        kw = dict(rng=rng, dtype=dtype, param_dtype=param_dtype)
        zc = cfg.latent_channels
        res = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, zq_channels=zc, **kw)
        chans = tuple(reversed(cfg.block_out_channels))
        self.conv_in = CausalConv3d(zc, chans[0], 3, **kw)
        self.mid_block = _Blocks([ResnetBlock3D(chans[0], chans[0], **res) for _ in range(2)])
        blocks = []
        cout = chans[0]
        for i, c in enumerate(chans):
            cin, cout = cout, c
            resnets = [
                ResnetBlock3D(cin if j == 0 else cout, cout, **res)
                for j in range(cfg.layers_per_block + 1)
            ]
            up = None
            if i < len(chans) - 1:
                up = Upsample3D(cout, i < cfg.temporal_levels, **kw)
            blocks.append(_Blocks(resnets, up, "upsamplers"))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = SpatialNorm3D(chans[-1], zc, cfg.norm_num_groups, **kw)
        self.conv_out = CausalConv3d(chans[-1], cfg.out_channels, 3, **kw)

    def __call__(self, z, cache=None):
        cache = cache or {}
        new = {}
        h, new["conv_in"] = self.conv_in(z, cache.get("conv_in"))
        h, new["mid_block"] = self.mid_block(h, z, cache.get("mid_block"))
        for i, block in enumerate(self.up_blocks):
            h, new[f"up_block_{i}"] = block(h, z, cache.get(f"up_block_{i}"))
        h = jax.nn.silu(self.norm_out(h, z))
        h, new["conv_out"] = self.conv_out(h, cache.get("conv_out"))
        return h, new


def run_chunked(step: Callable, x: jax.Array, per_chunk: int) -> jax.Array:
    """Apply ``step(chunk, cache) -> (out, cache)`` over diffusers' temporal chunks of axis 1
    and concatenate the outputs along time. Chunks after the first share a shape and run
    under ``lax.scan``."""
    bounds = chunk_bounds(x.shape[1], per_chunk)
    first_stop = bounds[0][1]
    out, cache = step(x[:, :first_stop], None)
    if len(bounds) == 1:
        return out
    rest = x[:, first_stop:]
    b, t = rest.shape[:2]
    n = len(bounds) - 1
    rest = jnp.moveaxis(rest.reshape(b, n, per_chunk, *rest.shape[2:]), 1, 0)

    def body(carry, chunk):
        y, carry = step(chunk, carry)
        return carry, y

    _, ys = jax.lax.scan(body, cache, rest)  # (n, B, t_out, ...)
    ys = jnp.moveaxis(ys, 0, 1).reshape(b, n * ys.shape[2], *ys.shape[3:])
    return jnp.concatenate([out, ys], axis=1)


class CogVideoXVAE(nnx.Module):
    """Flax port of diffusers' ``AutoencoderKLCogVideoX`` (channels-last).

    - ``encode_moments(video) -> (mean, logvar)``: the raw posterior, (B, F', h, w, C) each.
    - ``encode(video, key=None)``: diffusion latents = posterior mode (or a sample when
      ``key`` is given) times ``scaling_factor`` (minus ``shift_factor`` first, if set).
    - ``decode(latents)``: diffusion latents -> video in [-1, 1] (undoes the scaling).
    - ``decode_raw(z)``: unscaled latents -> video (diffusers ``vae.decode``).
    ``seed`` draws a random init (PyTorch's default uniform fan-in bounds) for tests; real
    weights come from ``load_diffusers_vae`` (which builds with ``seed=None``: abstract
    placeholders for the convolutions, filled from the checkpoint).
    Pass ``tiling=SpatialTiling(...)`` to any of them to process large frames in overlapping
    spatial tiles, blended like diffusers' ``enable_tiling``.
    """

    def __init__(
        self,
        config: VAEConfig,
        *,
        seed: int | None = 0,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        rng = np.random.default_rng(seed) if seed is not None else None
        self.config = config
        self.dtype = dtype
        kw = dict(rng=rng, dtype=dtype, param_dtype=param_dtype)
        self.encoder = Encoder3D(config, **kw)
        self.decoder = Decoder3D(config, **kw)

    # -- raw (unscaled) paths --------------------------------------------------------------
    def _encode_untiled(self, video: jax.Array) -> jax.Array:
        return run_chunked(self.encoder, video, self.config.sample_frames_per_chunk)

    def _decode_untiled(self, z: jax.Array) -> jax.Array:
        return run_chunked(self.decoder, z, self.config.latent_frames_per_chunk)

    def _per_tile(self, kind: str, x: jax.Array) -> Callable:
        """The function tiling applies to each tile. Under an outer jit it is inlined; called
        eagerly, each tile shape (at most 4: interior and edges) compiles once and is reused,
        and tiles run one after another (memory bounded by one tile)."""
        if isinstance(x, jax.core.Tracer):
            return self._encode_untiled if kind == "encode" else self._decode_untiled
        graphdef, state = nnx.split(self)
        fn = _jitted_tile_fn(graphdef, kind)
        return lambda tile: fn(state, tile)

    def encode_moments(self, video: jax.Array, *, tiling=None) -> tuple[jax.Array, jax.Array]:
        """(B, F, H, W, 3) in [-1, 1] -> (mean, logvar), each (B, F', H/8, W/8, C)."""
        _check_video(video, self.config)
        video = video.astype(self.dtype)
        if tiling is not None and tiling.applies_to_pixels(video.shape[2:4]):
            from m2dit_jax.encoders.vae.tiling import tiled_encode

            per_tile = self._per_tile("encode", video)
            h = tiled_encode(per_tile, video, tiling, self.config.spatial_ratio)
        else:
            h = self._encode_untiled(video)
        mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode_raw(self, z: jax.Array, *, tiling=None) -> jax.Array:
        """(B, F', h, w, C) unscaled latents -> (B, F, 8h, 8w, 3) video, float32."""
        if z.ndim != 5 or z.shape[-1] != self.config.latent_channels:
            raise ValueError(
                f"latents must be (B, F, h, w, {self.config.latent_channels}), got {z.shape}"
            )
        z = z.astype(self.dtype)
        if tiling is not None and tiling.applies_to_latents(
            z.shape[2:4], self.config.spatial_ratio
        ):
            from m2dit_jax.encoders.vae.tiling import tiled_decode

            per_tile = self._per_tile("decode", z)
            out = tiled_decode(per_tile, z, tiling, self.config.spatial_ratio)
        else:
            out = self._decode_untiled(z)
        return out.astype(jnp.float32)

    # -- diffusion-facing paths ----------------------------------------------------------------
    def scale(self, z: jax.Array) -> jax.Array:
        shift = self.config.shift_factor or 0.0
        return (z - shift) * self.config.scaling_factor

    def unscale(self, latents: jax.Array) -> jax.Array:
        shift = self.config.shift_factor or 0.0
        return latents / self.config.scaling_factor + shift

    def encode(self, video: jax.Array, *, key: jax.Array | None = None, tiling=None) -> jax.Array:
        """(B, F, H, W, 3) in [-1, 1] -> scaled latents (B, F', H/8, W/8, C) float32."""
        mean, logvar = self.encode_moments(video, tiling=tiling)
        z = mean
        if key is not None:
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return self.scale(z)

    def decode(self, latents: jax.Array, *, tiling=None) -> jax.Array:
        """Scaled latents (B, F', h, w, C) -> video (B, F, 8h, 8w, 3) float32 in ~[-1, 1]."""
        return self.decode_raw(self.unscale(latents), tiling=tiling)


@functools.lru_cache(maxsize=16)
def _jitted_tile_fn(graphdef, kind: str) -> Callable:
    def run(state, tile):
        model = nnx.merge(graphdef, state)
        return model._encode_untiled(tile) if kind == "encode" else model._decode_untiled(tile)

    return jax.jit(run)


def _check_video(video, cfg: VAEConfig) -> None:
    if video.ndim != 5 or video.shape[-1] != cfg.in_channels:
        raise ValueError(f"video must be (B, F, H, W, {cfg.in_channels}), got {video.shape}")
    r = cfg.spatial_ratio
    if video.shape[2] % r or video.shape[3] % r:
        raise ValueError(
            f"video height/width {video.shape[2:4]} must be multiples of {r} (the VAE's "
            "spatial compression)"
        )


def pixels_to_unit(video) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1] (any float input is returned as float32 unchanged)."""
    video = jnp.asarray(video)
    if video.dtype == jnp.uint8:
        return video.astype(jnp.float32) / 127.5 - 1.0
    return video.astype(jnp.float32)


def unit_to_pixels(video) -> jax.Array:
    """float [-1, 1] -> uint8 [0, 255] (clipped, rounded)."""
    return jnp.clip(jnp.round((jnp.asarray(video) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
