"""A lossless space-to-depth "autoencoder" for pixel-space training on CPU.

``encode`` folds each (patch_t x patch_s x patch_s x 3) block of pixels into channels and maps
uint8 [0, 255] to float [-1, 1]; ``decode`` is the exact inverse (up to rounding to uint8).
It stands in for the CogVideoX VAE (``m2dit_jax.encoders.vae``) where frames are tiny.

``detail_scale`` != 1 rewrites each colour's block of n = patch_t * patch_s^2 pixels in an
orthonormal 3D DCT-II basis (the Haar basis for 2x2x2 blocks): coefficient 0 is the block's
mean (times sqrt(n)), the n - 1 others its detail, and those are multiplied by
``detail_scale``. Still exactly invertible; the diffusion noise is white in every basis, so
a scale s gives the detail s^2 times the SNR at every timestep (and s^2 times the weight in
the loss): an object's outline is then decided at higher noise, with its position, instead
of being blurred away later. Latent channels are (coefficient, colour) instead of
(frame, row, column, colour). 1.0 (default) is the plain fold, bit for bit.
"""

from __future__ import annotations

import numpy as np


def dct_matrix(n: int) -> np.ndarray:
    """(n, n) orthonormal DCT-II matrix; row 0 is the constant (mean) vector."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (i + 0.5) * k / n)
    m[0] /= np.sqrt(2.0)
    return m


def block_basis(patch_t: int, patch_s: int, detail_scale: float) -> np.ndarray:
    """(n, n) float64 forward transform of a flattened (patch_t, patch_s, patch_s) block:
    the 3D DCT with every row but the first (the mean) multiplied by ``detail_scale``."""
    basis = np.kron(np.kron(dct_matrix(patch_t), dct_matrix(patch_s)), dct_matrix(patch_s))
    scale = np.full(basis.shape[0], float(detail_scale))
    scale[0] = 1.0
    return basis * scale[:, None]


class SpaceToDepthAutoencoder:
    """(B, F, H, W, 3) uint8 <-> (B, F/pt, H/ps, W/ps, 3*pt*ps*ps) float32."""

    def __init__(self, patch_t: int = 1, patch_s: int = 1, detail_scale: float = 1.0):
        if patch_t <= 0 or patch_s <= 0:
            raise ValueError(f"patch_t and patch_s must be positive, got {patch_t}, {patch_s}")
        number = isinstance(detail_scale, (int, float)) and not isinstance(detail_scale, bool)
        if not (number and detail_scale > 0):
            raise ValueError(f"detail_scale must be a positive number, got {detail_scale!r}")
        if detail_scale != 1.0 and patch_t * patch_s * patch_s == 1:
            raise ValueError("detail_scale needs blocks of more than one pixel (patch_t/patch_s)")
        self.patch_t, self.patch_s = patch_t, patch_s
        self.detail_scale = float(detail_scale)
        self._forward = self._inverse = None
        if self.detail_scale != 1.0:
            basis = block_basis(patch_t, patch_s, self.detail_scale)
            self._forward = basis.astype(np.float32)
            self._inverse = np.linalg.inv(basis).astype(np.float32)

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
        x = (x.reshape(b, lf, lh, lw, c).astype(np.float32) / 127.5) - 1.0
        return self._mix(x, self._forward)

    def to_pixels(self, latents) -> np.ndarray:
        """(B, F', h, w, C) latents -> (B, F, H, W, 3) float32 pixels in [-1, 1] (unclipped)."""
        latents = np.asarray(latents, np.float32)
        if latents.ndim != 5 or latents.shape[-1] != self.latent_channels:
            raise ValueError(
                f"latents must be (B, F, h, w, {self.latent_channels}), got shape {latents.shape}"
            )
        b, lf, lh, lw, _ = latents.shape
        pt, ps = self.patch_t, self.patch_s
        x = self._mix(latents, self._inverse)
        x = x.reshape(b, lf, lh, lw, pt, ps, ps, 3).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return x.reshape(b, lf * pt, lh * ps, lw * ps, 3)

    def decode(self, latents) -> np.ndarray:
        return np.clip(np.round((self.to_pixels(latents) + 1.0) * 127.5), 0, 255).astype(np.uint8)

    @staticmethod
    def _mix(x: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
        """Applies ``matrix`` to each colour's block vector (channels laid out (n, 3))."""
        if matrix is None:
            return x
        blocks = x.reshape(*x.shape[:-1], matrix.shape[0], 3)
        return np.einsum("kj,...jc->...kc", matrix, blocks).reshape(x.shape).astype(np.float32)
