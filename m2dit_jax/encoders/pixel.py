"""A lossless space-to-depth "autoencoder" for pixel-space training on CPU.

``encode`` folds each (patch_t x patch_s x patch_s x 3) block of pixels into channels and maps
uint8 [0, 255] to float [-1, 1]; ``decode`` is the exact inverse (up to rounding to uint8).
It stands in for the CogVideoX VAE (``m2dit_jax.encoders.vae``) where frames are tiny.
"""

from __future__ import annotations

import numpy as np


class SpaceToDepthAutoencoder:
    """(B, F, H, W, 3) uint8 <-> (B, F/pt, H/ps, W/ps, 3*pt*ps*ps) float32."""

    def __init__(self, patch_t: int = 1, patch_s: int = 1):
        if patch_t <= 0 or patch_s <= 0:
            raise ValueError(f"patch_t and patch_s must be positive, got {patch_t}, {patch_s}")
        self.patch_t, self.patch_s = patch_t, patch_s

    @property
    def latent_channels(self) -> int:
        return 3 * self.patch_t * self.patch_s**2

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        for name, size, p in (
            ("frames", frames, self.patch_t),
            ("height", height, self.patch_s),
            ("width", width, self.patch_s),
        ):
            if size % p:
                raise ValueError(f"video {name}={size} is not divisible by the patch {p}")
        return (
            frames // self.patch_t,
            height // self.patch_s,
            width // self.patch_s,
            self.latent_channels,
        )

    def encode(self, video) -> np.ndarray:
        video = np.asarray(video)
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"video must be (B, F, H, W, 3), got shape {video.shape}")
        b, f, h, w, _ = video.shape
        pt, ps = self.patch_t, self.patch_s
        lf, lh, lw, c = self.latent_shape(f, h, w)
        x = video.reshape(b, lf, pt, lh, ps, lw, ps, 3).transpose(0, 1, 3, 5, 2, 4, 6, 7)
        return (x.reshape(b, lf, lh, lw, c).astype(np.float32) / 127.5) - 1.0

    def decode(self, latents) -> np.ndarray:
        latents = np.asarray(latents, np.float32)
        if latents.ndim != 5 or latents.shape[-1] != self.latent_channels:
            raise ValueError(
                f"latents must be (B, F, h, w, {self.latent_channels}), got shape {latents.shape}"
            )
        b, lf, lh, lw, _ = latents.shape
        pt, ps = self.patch_t, self.patch_s
        x = latents.reshape(b, lf, lh, lw, pt, ps, ps, 3).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        x = x.reshape(b, lf * pt, lh * ps, lw * ps, 3)
        return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
