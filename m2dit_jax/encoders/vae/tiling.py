"""Optional spatial tiling for large frames, with diffusers' overlap-and-blend semantics.

Each overlapping tile is encoded/decoded on its own (with the usual temporal chunking), then
each tile is linearly blended into its upper and left neighbours over the overlap and
cropped; identical to ``AutoencoderKLCogVideoX.enable_tiling(...)``. Memory then scales with
the tile, not the frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class SpatialTiling:
    """Tile size in pixels and the overlap fractions (diffusers' defaults: half the sample
    size of the checkpoint, 1/6 vertical and 1/5 horizontal overlap)."""

    tile_height: int = 240
    tile_width: int = 360
    overlap_height: float = 1 / 6
    overlap_width: float = 1 / 5

    def __post_init__(self):
        if self.tile_height <= 0 or self.tile_width <= 0:
            raise ValueError(f"SpatialTiling tile size must be positive, got {self}")
        for name in ("overlap_height", "overlap_width"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"SpatialTiling.{name} must be in [0, 1), got {self}")

    def latent_tile(self, ratio: int) -> tuple[int, int]:
        return int(self.tile_height / ratio), int(self.tile_width / ratio)

    def applies_to_pixels(self, hw) -> bool:
        return hw[0] > self.tile_height or hw[1] > self.tile_width

    def applies_to_latents(self, hw, ratio: int) -> bool:
        lh, lw = self.latent_tile(ratio)
        return hw[0] > lh or hw[1] > lw


def _blend(prev: jax.Array, tile: jax.Array, extent: int, axis: int) -> jax.Array:
    """Linear cross-fade of ``prev``'s last ``extent`` rows into ``tile``'s first rows."""
    extent = min(prev.shape[axis], tile.shape[axis], extent)
    if extent <= 0:
        return tile
    ramp = np.arange(extent, dtype=np.float64) / extent
    shape = [1] * tile.ndim
    shape[axis] = extent
    w_new = jnp.asarray(ramp.astype(np.float32).reshape(shape))
    w_old = jnp.asarray((1.0 - ramp).astype(np.float32).reshape(shape))
    n = prev.shape[axis]
    tail = jax.lax.slice_in_dim(prev, n - extent, n, axis=axis)
    head = jax.lax.slice_in_dim(tile, 0, extent, axis=axis)
    body = jax.lax.slice_in_dim(tile, extent, tile.shape[axis], axis=axis)
    return jnp.concatenate([tail * w_old + head * w_new, body], axis=axis)


def _tile_and_blend(fn: Callable, x: jax.Array, in_tile, in_step, blend, keep) -> jax.Array:
    height, width = x.shape[2:4]
    rows = []
    for i in range(0, height, in_step[0]):
        row = []
        for j in range(0, width, in_step[1]):
            row.append(fn(x[:, :, i : i + in_tile[0], j : j + in_tile[1]]))
        rows.append(row)
    # diffusers blends in place, so a tile's neighbours are the already-blended tiles.
    blended: list[list[jax.Array]] = []
    for i, row in enumerate(rows):
        out_row = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = _blend(blended[i - 1][j], tile, blend[0], axis=2)
            if j > 0:
                tile = _blend(out_row[j - 1], tile, blend[1], axis=3)
            out_row.append(tile)
        blended.append(out_row)
    cropped = [
        jnp.concatenate([t[:, :, : keep[0], : keep[1]] for t in row], axis=3) for row in blended
    ]
    return jnp.concatenate(cropped, axis=2)


def tiled_encode(encode: Callable, video: jax.Array, tiling: SpatialTiling, ratio: int):
    """Encoder moments of ``video`` computed tile by tile (pixel tiles -> latent tiles)."""
    lat_h, lat_w = tiling.latent_tile(ratio)
    step = (
        int(tiling.tile_height * (1 - tiling.overlap_height)),
        int(tiling.tile_width * (1 - tiling.overlap_width)),
    )
    blend = (int(lat_h * tiling.overlap_height), int(lat_w * tiling.overlap_width))
    keep = (lat_h - blend[0], lat_w - blend[1])
    return _tile_and_blend(
        encode, video, (tiling.tile_height, tiling.tile_width), step, blend, keep
    )


def tiled_decode(decode: Callable, z: jax.Array, tiling: SpatialTiling, ratio: int):
    """Decoded video of latents ``z`` computed tile by tile (latent tiles -> pixel tiles)."""
    lat_h, lat_w = tiling.latent_tile(ratio)
    step = (int(lat_h * (1 - tiling.overlap_height)), int(lat_w * (1 - tiling.overlap_width)))
    if min(step) <= 0:
        raise ValueError(f"SpatialTiling {tiling} gives an empty latent tile step at ratio {ratio}")
    blend = (
        int(tiling.tile_height * tiling.overlap_height),
        int(tiling.tile_width * tiling.overlap_width),
    )
    keep = (tiling.tile_height - blend[0], tiling.tile_width - blend[1])
    return _tile_and_blend(decode, z, (lat_h, lat_w), step, blend, keep)
