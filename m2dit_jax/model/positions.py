"""Video-token positions: the 2B fixed 3D sin-cos table and the 5B 3D RoPE tables.

Both are built on the host in NumPy (they depend only on static shapes) following diffusers'
arithmetic step by step, so that one scene reproduces ``CogVideoXTransformer3DModel`` to
round-off. Video tokens are ordered (frame, h, w) with w fastest; temporal positions run
continuously over all S*F frames of a multi-scene sample (no reset at a scene cut).

Two conventions (model config ``positions_convention``) agree on the sample grid and differ
off it:

- ``"diffusers"`` (diffusers >= 0.32): RoPE grid ``linspace(start, stop*(n-1)/n, n)`` (torch
  float32 linspace); sin-cos recomputed on the actual grid (``sincos_table``), multi-scene by
  recomputing for S*F frames or, with ``stretch_frames``, stretching time only.
- ``"release"`` (the Mask²DiT release, VideoX-Fun on diffusers 0.30): RoPE grid
  ``np.linspace(start, stop, n, endpoint=False)``; sin-cos built once on the config's sample
  grid and frames, trilinearly resized (torch, align_corners=False) to (S*F_sample, h, w)
  and cut to its first S*F*h*w rows (``release_sincos_table``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

CONVENTIONS = ("diffusers", "release")


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, dim) float64 [sin(pos w) | cos(pos w)], w_i = 10000^(-2i/dim)."""
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = np.outer(positions.astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


@functools.lru_cache(maxsize=32)
def sincos_table(
    width: int,
    frames: int,
    grid_h: int,
    grid_w: int,
    spatial_scale: float = 1.875,
    temporal_scale: float = 1.0,
) -> np.ndarray:
    """(frames*grid_h*grid_w, width) float32 additive table for video tokens.

    Per token: [temporal width/4 | spatial 3*width/4], spatial = [table over the w
    coordinate | table over the h coordinate]. Positions are float32 aranges divided by the
    interpolation scales (as diffusers does), tables in float64, the result cast to float32.
    """
    if width % 16:
        raise ValueError(f"sin-cos table width must be divisible by 16, got {width}")
    spatial, temporal = 3 * width // 4, width // 4
    pos_h = np.arange(grid_h, dtype=np.float32) / np.float32(spatial_scale)
    pos_w = np.arange(grid_w, dtype=np.float32) / np.float32(spatial_scale)
    pos_t = np.arange(frames, dtype=np.float32) / np.float32(temporal_scale)
    hh, ww = np.meshgrid(pos_h, pos_w, indexing="ij")  # (gh, gw), w fastest when flattened
    emb_w = _sincos_1d(spatial // 2, ww.reshape(-1))
    emb_h = _sincos_1d(spatial // 2, hh.reshape(-1))
    emb_spatial = np.concatenate([emb_w, emb_h], axis=1)  # (gh*gw, spatial)
    emb_t = _sincos_1d(temporal, pos_t)  # (F, temporal)
    n = grid_h * grid_w
    table = np.concatenate(
        [np.repeat(emb_t[:, None, :], n, axis=1), np.repeat(emb_spatial[None], frames, axis=0)],
        axis=-1,
    )
    return table.reshape(frames * n, width).astype(np.float32)


def stretch_frames(table: np.ndarray, frames: int, tokens_per_frame: int, out_frames: int):
    """(frames*n, D) -> (out_frames*n, D): linear resampling along time, align_corners=False.

    Output frame j samples source position (j + 0.5) * frames / out_frames - 0.5, clamped to
    [0, frames - 1] (torch ``F.interpolate(..., mode="trilinear")`` on a (D, F, H, W) grid whose
    H and W keep their size). Computed in float32 like torch.
    """
    grid = table.reshape(frames, tokens_per_frame, -1).astype(np.float32)
    ratio = np.float32(frames / out_frames)
    src = (np.arange(out_frames, dtype=np.float32) + np.float32(0.5)) * ratio - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    lo = np.minimum(np.floor(src).astype(np.int64), frames - 1)
    hi = np.minimum(lo + 1, frames - 1)
    w_hi = (src - lo.astype(np.float32))[:, None, None]
    out = grid[lo] * (np.float32(1.0) - w_hi) + grid[hi] * w_hi
    return out.reshape(out_frames * tokens_per_frame, -1).astype(np.float32)


def _linear_taps(in_size: int, out_size: int):
    """torch's linear-resize taps along one axis (align_corners=False), float32.

    scale = in/out (float32), src = scale*(j + 0.5) - 0.5 clamped at 0, lo = min(floor(src),
    in - 1), hi = lo + 1 unless lo is the last index, w_hi = clamp(src - lo, 0, 1).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.where(lo < in_size - 1, lo + 1, lo)
    w_hi = np.clip(src - lo.astype(np.float32), np.float32(0.0), np.float32(1.0))
    return lo, hi, (np.float32(1.0) - w_hi).astype(np.float32), w_hi.astype(np.float32)


def resize_trilinear(grid: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """(F, H, W, D) -> (F', H', W', D) float32 like torch ``F.interpolate(mode="trilinear",
    align_corners=False)`` on the (D, F, H, W) tensor (no antialiasing; w, then h, then t, the
    nesting of torch's kernel). An axis that keeps its size is copied exactly."""
    out = np.asarray(grid, dtype=np.float32)
    for axis in (2, 1, 0):
        new = size[axis]
        if out.shape[axis] == new:
            continue
        lo, hi, w_lo, w_hi = _linear_taps(out.shape[axis], new)
        shape = [1] * out.ndim
        shape[axis] = new
        out = np.take(out, lo, axis=axis) * w_lo.reshape(shape) + np.take(
            out, hi, axis=axis
        ) * w_hi.reshape(shape)
    return out.astype(np.float32)


@functools.lru_cache(maxsize=32)
def release_sincos_table(
    width: int,
    num_scenes: int,
    frames: int | tuple[int, ...],
    grid_h: int,
    grid_w: int,
    sample_frames: int,
    sample_h: int,
    sample_w: int,
    spatial_scale: float = 1.875,
    temporal_scale: float = 1.0,
) -> np.ndarray:
    """(S*frames*grid_h*grid_w, width) float32: the Mask²DiT release's 2B sin-cos positions.

    The table of the config's sample grid (``sample_frames`` x ``sample_h`` x ``sample_w``
    tokens, i.e. ``sincos_table(width, sample_frames, sample_h, sample_w)``) resized
    trilinearly to (S*sample_frames, grid_h, grid_w) and cut to its first S*frames*grid_h*grid_w
    rows (VideoX-Fun ``CogVideoXPatchEmbed.forward``; S is the number of scenes). With
    frames < sample_frames the scene boundaries fall inside the stretched table, as in the
    release. frames > sample_frames leaves too few rows (the release crashes): ValueError.
    Scenes of their own lengths (``frames`` a tuple) keep the first F_1+..+F_S frames (needs
    F_1+..+F_S <= S*sample_frames).
    """
    per_scene = tuple(frames) if isinstance(frames, tuple) else (frames,) * num_scenes
    if len(per_scene) != num_scenes:
        raise ValueError(f"frames {frames} must give one count per scene (num_scenes={num_scenes})")
    if sum(per_scene) > num_scenes * sample_frames:
        raise ValueError(
            f"positions_convention='release' sin-cos: {per_scene} latent frames per scene exceed "
            f"the config's sample_frames={sample_frames}; the release's stretched table holds "
            f"only S*sample_frames frames (it crashes here). Use at most {sample_frames} latent "
            "frames per scene, raise the model config's sample_frames (the table is then built "
            "for that many frames), or use positions_convention='diffusers'"
        )
    base = sincos_table(width, sample_frames, sample_h, sample_w, spatial_scale, temporal_scale)
    grid = base.reshape(sample_frames, sample_h, sample_w, width)
    spatial = resize_trilinear(grid, (sample_frames, grid_h, grid_w))  # w, then h
    # then t, only for the S*frames output frames that are kept (the first rows)
    keep = sum(per_scene)  # ragged scenes: the first F_1+..+F_S frames, positions continuous
    lo, hi, w_lo, w_hi = _linear_taps(sample_frames, num_scenes * sample_frames)
    out = spatial[lo[:keep]] * w_lo[:keep, None, None, None]
    out = out + spatial[hi[:keep]] * w_hi[:keep, None, None, None]
    return np.ascontiguousarray(out.reshape(keep * grid_h * grid_w, width), dtype=np.float32)


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """float32 linspace computed the way torch does on CPU (symmetric from both ends)."""
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step = (end32 - start32) / np.float32(steps - 1)
    idx = np.arange(steps)
    front = start32 + step * idx.astype(np.float32)
    back = end32 - step * (steps - 1 - idx).astype(np.float32)
    return np.where(idx < steps // 2, front, back).astype(np.float32)


def crop_region(grid_h: int, grid_w: int, base_h: int, base_w: int):
    """diffusers' resize-crop region of a (grid_h, grid_w) grid inside the (base_h, base_w) one.

    Returns ((top, left), (bottom, right)).
    """
    ratio = grid_h / grid_w
    if ratio > base_h / base_w:
        resize_h, resize_w = base_h, int(round(base_h / grid_h * grid_w))
    else:
        resize_w, resize_h = base_w, int(round(base_w / grid_w * grid_h))
    top = int(round((base_h - resize_h) / 2.0))
    left = int(round((base_w - resize_w) / 2.0))
    return (top, left), (top + resize_h, left + resize_w)


def _rope_1d(dim: int, positions: np.ndarray, theta: float = 10000.0):
    """(M,) positions -> cos, sin (M, dim) float32, each frequency repeated for adjacent pairs."""
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    angles = np.outer(positions.astype(np.float32), freqs.astype(np.float32))
    return np.repeat(np.cos(angles), 2, axis=1), np.repeat(np.sin(angles), 2, axis=1)


def rope_positions(
    frames: int,
    grid_h: int,
    grid_w: int,
    base_h: int,
    base_w: int,
    convention: str = "diffusers",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 RoPE positions (t, h, w) of a (frames, grid_h, grid_w) token grid.

    Crop (top, left)-(bottom, right) = ``crop_region``. "diffusers": torch float32
    ``linspace(top, bottom*(n-1)/n, n)`` (t: ``linspace(0, T*(T-1)/T, T)``); "release":
    ``np.linspace(top, bottom, n, endpoint=False, dtype=float32)`` (t:
    ``np.linspace(0, T, T, endpoint=False)``, i.e. 0..T-1). Equal when the crop starts at 0;
    otherwise the last position differs by start/n.
    """
    (top, left), (bottom, right) = crop_region(grid_h, grid_w, base_h, base_w)
    if convention == "diffusers":
        pos_h = _torch_linspace_f32(top, bottom * (grid_h - 1) / grid_h, grid_h)
        pos_w = _torch_linspace_f32(left, right * (grid_w - 1) / grid_w, grid_w)
        pos_t = _torch_linspace_f32(0, frames * (frames - 1) / frames, frames)
    elif convention == "release":
        pos_h = np.linspace(top, bottom, grid_h, endpoint=False, dtype=np.float32)
        pos_w = np.linspace(left, right, grid_w, endpoint=False, dtype=np.float32)
        pos_t = np.linspace(0, frames, frames, endpoint=False, dtype=np.float32)
    else:
        raise ValueError(f"positions convention must be one of {CONVENTIONS}, got {convention!r}")
    return pos_t, pos_h, pos_w


@functools.lru_cache(maxsize=32)
def rope_tables(
    head_dim: int,
    frames: int,
    grid_h: int,
    grid_w: int,
    base_h: int,
    base_w: int,
    convention: str = "diffusers",
) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (frames*grid_h*grid_w, head_dim) float32 for 3D RoPE (CogVideoX 1.0).

    head_dim splits [t: hd/4 | h: 3hd/8 | w: 3hd/8]. Spatial positions are the crop-region
    grid of ``rope_positions`` (``convention``): integers when the grid equals the base
    (sample) grid, fractional otherwise. ``base_h``/``base_w`` are the sample grid in tokens
    (sample_height / patch_size, ...).
    """
    if head_dim % 16:
        # t takes hd/4 and h, w 3hd/8 each; every part must hold whole (cos, sin) pairs.
        raise ValueError(f"RoPE head_dim must be divisible by 16, got {head_dim}")
    dim_t, dim_s = head_dim // 4, head_dim // 8 * 3
    pos_t, pos_h, pos_w = rope_positions(frames, grid_h, grid_w, base_h, base_w, convention)
    parts = []
    for dim, pos, axis in ((dim_t, pos_t, 0), (dim_s, pos_h, 1), (dim_s, pos_w, 2)):
        cos, sin = _rope_1d(dim, pos)
        shape = [1, 1, 1, dim]
        shape[axis] = pos.shape[0]
        parts.append((cos.reshape(shape), sin.reshape(shape)))
    full = (frames, grid_h, grid_w)
    cos = np.concatenate([np.broadcast_to(c, full + c.shape[-1:]) for c, _ in parts], axis=-1)
    sin = np.concatenate([np.broadcast_to(s, full + s.shape[-1:]) for _, s in parts], axis=-1)
    n = frames * grid_h * grid_w
    return cos.reshape(n, head_dim), sin.reshape(n, head_dim)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates adjacent feature pairs: out = x cos + rot(x) sin, rot(x)[2i] = -x[2i+1].

    x: (B, L, H, Dh); cos/sin: (L, Dh) float32 (identity rows, cos=1 sin=0, leave tokens
    unchanged). Computed in float32, returned in x's dtype.
    """
    xf = x.astype(jnp.float32)
    pairs = xf.reshape(*xf.shape[:-1], -1, 2)
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(xf.shape)
    out = xf * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return out.astype(x.dtype)
