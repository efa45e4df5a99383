"""Analytic detectors for ``synthetic_shapes`` scenes (no learned weights).

Each function takes one scene ``(F, H, W, 3) uint8`` and returns a vocabulary name from
``m2dit_jax.data.synthetic_shapes`` (or ``"none"`` when no object is visible):

- background: per-channel median of all pixels (the object covers < 50% of the frame, so the
  median lies inside the background cluster), snapped to the nearest background colour;
- object mask: pixels farther than ``OBJECT_DISTANCE`` (RGB) from that median, restricted to
  the largest 8-connected component per frame (drops speckle in generated frames);
- colour: median RGB of the object pixels, snapped to the nearest object colour;
- motion: least-squares slope of the object centroid over frames, dominant axis and sign
  (``"none"`` below ``MIN_SPEED`` px/frame);
- shape: the object's bounding box resized to 16x16 and compared (IoU) with each shape
  template; majority vote over frames. Size-invariant, so a generated object of the wrong
  size still gets its shape read.

``shape_report(scenes, shapes)`` sums the shape detector over many scenes: mean object area per
captioned shape and the confusion matrix (``benchmarks/shape_probe.py`` prints both).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from m2dit_jax.data.synthetic_shapes import (
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    MOTIONS,
    SHAPES,
    shape_template,
)

OBJECT_DISTANCE = 70.0
MIN_SPEED = 0.5
MIN_OBJECT_PIXELS = 3
_TEMPLATE_SIZE = 16
_TEMPLATES = np.stack([shape_template(s, _TEMPLATE_SIZE) for s in SHAPES])  # (K, 16, 16)
NONE = "none"


def _check_scene(video) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"a scene must be (F, H, W, 3), got shape {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"a scene must be uint8, got {video.dtype}")
    return video


def _nearest(palette: np.ndarray, rgb: np.ndarray) -> int:
    return int(np.argmin(((palette.astype(np.float64) - rgb) ** 2).sum(-1)))


def _background_rgb(video: np.ndarray) -> np.ndarray:
    return np.median(video.reshape(-1, 3).astype(np.float64), axis=0)


def object_mask(video) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, H, W) bool: the object's pixels (largest blob per frame)."""
    video = _check_scene(video)
    far = np.linalg.norm(video.astype(np.float64) - _background_rgb(video), axis=-1)
    raw = far > OBJECT_DISTANCE
    out = np.zeros_like(raw)
    for f in range(raw.shape[0]):
        labels, n = ndimage.label(raw[f], structure=np.ones((3, 3)))
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            out[f] = labels == 1 + int(np.argmax(sizes))
    return out


def detect_background(video) -> str:
    """Name of the scene's background colour."""
    video = _check_scene(video)
    return BACKGROUNDS[_nearest(BACKGROUND_RGB, _background_rgb(video))]


def detect_colour(video, mask: np.ndarray | None = None) -> str:
    """Name of the object's colour, or "none" when no object is visible."""
    video = _check_scene(video)
    mask = object_mask(video) if mask is None else mask
    if mask.sum() < MIN_OBJECT_PIXELS:
        return NONE
    return COLOURS[_nearest(COLOUR_RGB, np.median(video[mask].astype(np.float64), axis=0))]


def detect_motion(video, mask: np.ndarray | None = None) -> str:
    """Direction the object's centroid moves (left/right/up/down), or "none"."""
    video = _check_scene(video)
    mask = object_mask(video) if mask is None else mask
    frames, centroids = [], []
    for f in range(mask.shape[0]):
        ys, xs = np.nonzero(mask[f])
        if len(ys) >= MIN_OBJECT_PIXELS:
            frames.append(f)
            centroids.append((ys.mean(), xs.mean()))
    if len(frames) < 2:
        return NONE
    t = np.asarray(frames, np.float64)
    t -= t.mean()
    c = np.asarray(centroids)
    slope = (t[:, None] * (c - c.mean(0))).sum(0) / (t**2).sum()  # (dy, dx) px / frame
    if np.abs(slope).max() < MIN_SPEED:
        return NONE
    dy, dx = slope
    if abs(dx) >= abs(dy):
        return MOTIONS[1] if dx > 0 else MOTIONS[0]
    return MOTIONS[3] if dy > 0 else MOTIONS[2]


def _frame_shape_scores(frame_mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(frame_mask)
    crop = frame_mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    iy = (np.arange(_TEMPLATE_SIZE) + 0.5) * crop.shape[0] / _TEMPLATE_SIZE
    ix = (np.arange(_TEMPLATE_SIZE) + 0.5) * crop.shape[1] / _TEMPLATE_SIZE
    resized = crop[iy.astype(int)[:, None], ix.astype(int)[None, :]]
    inter = (_TEMPLATES & resized).sum((1, 2))
    union = (_TEMPLATES | resized).sum((1, 2))
    return inter / np.maximum(union, 1)


def detect_shape(video, mask: np.ndarray | None = None) -> str:
    """Name of the object's shape (majority over frames), or "none"."""
    video = _check_scene(video)
    mask = object_mask(video) if mask is None else mask
    votes = np.zeros(len(SHAPES))
    for f in range(mask.shape[0]):
        if mask[f].sum() >= MIN_OBJECT_PIXELS:
            scores = _frame_shape_scores(mask[f])
            votes[int(np.argmax(scores))] += 1
    return SHAPES[int(np.argmax(votes))] if votes.any() else NONE


def shape_report(scenes: Sequence[np.ndarray], shapes: Sequence[int]) -> dict:
    """How generated objects follow their captioned shape.

    ``scenes``: N single scenes (F, H, W, 3) uint8; ``shapes``: (N,) captioned shape indices.
    Returns {"area": {shape name: mean object pixels per frame}, "confusion": (K, K + 1) list
    of counts, rows = captioned shape, columns = detected shape then "none"}.
    """
    if len(scenes) != len(shapes):
        raise ValueError(f"need one shape per scene, got {len(scenes)} scenes, {len(shapes)}")
    areas = {name: [] for name in SHAPES}
    confusion = np.zeros((len(SHAPES), len(SHAPES) + 1), int)
    for scene, shape in zip(scenes, shapes):
        mask = object_mask(scene)
        areas[SHAPES[shape]].append(float(mask.sum((1, 2)).mean()))
        found = detect_shape(scene, mask)
        confusion[shape, SHAPES.index(found) if found in SHAPES else len(SHAPES)] += 1
    return {
        "area": {k: float(np.mean(v)) if v else float("nan") for k, v in areas.items()},
        "confusion": confusion.tolist(),
    }


def detect(video_scene) -> dict[str, str]:
    """(F, H, W, 3) uint8 -> {"colour", "shape", "motion", "background"} names."""
    video = _check_scene(video_scene)
    mask = object_mask(video)
    return {
        "colour": detect_colour(video, mask),
        "shape": detect_shape(video, mask),
        "motion": detect_motion(video, mask),
        "background": detect_background(video),
    }


def detect_scenes(video, num_scenes: int, scene_frames=None) -> list[dict[str, str]]:
    """(S*F, H, W, 3) uint8 multi-scene clip -> one ``detect`` dict per scene; with
    ``scene_frames`` (pixel frames per scene) the scenes are split by those counts."""
    video = np.asarray(video)
    if scene_frames is not None:
        from m2dit_jax.eval.consistency import split_scenes

        return [detect(scene) for scene in split_scenes(video, num_scenes, scene_frames)]
    if num_scenes <= 0 or video.ndim != 4 or video.shape[0] % num_scenes:
        raise ValueError(
            f"video of shape {video.shape} cannot be split into num_scenes={num_scenes} scenes"
        )
    frames = video.shape[0] // num_scenes
    return [detect(video[i * frames : (i + 1) * frames]) for i in range(num_scenes)]
