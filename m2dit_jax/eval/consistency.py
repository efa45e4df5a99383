"""The paper's three multi-scene numbers from pluggable embedding functions.

Mask²DiT reports (percent, higher is better):
- visual consistency: how alike the scenes of one video look — mean cosine similarity between
  the image embeddings of frames taken from *different* scenes;
- semantic consistency: how well each scene matches its own caption — mean cosine similarity
  between a scene's frame embeddings and its caption's text embedding (a CLIP score);
- sequence consistency: the mean of the two (the paper's table satisfies exactly this, e.g.
  (70.95 + 23.94) / 2 = 47.45 for Mask²DiT).

The feature models are not part of the release, so the caller provides them (no download here):
``image_embed(frames (N, H, W, 3) uint8) -> (N, D)`` and ``text_embed(captions) -> (M, D)`` in a
shared space, e.g. CLIP ViT-L/14 image and text towers. ``frames_per_scene`` keyframes are
taken uniformly from every scene. Scenes of their own lengths (``scene_frames``) are split by
those counts; every scene then gives the same number of keyframes (at most its shortest
scene's frames).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ImageEmbedFn = Callable[[np.ndarray], np.ndarray]
TextEmbedFn = Callable[[Sequence[str]], np.ndarray]


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must return a 2-D (N, D) array, got shape {x.shape}")
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    if not np.all(norm > 0):
        raise ValueError(f"{name} returned a zero-length embedding")
    return x / norm


def split_scenes(
    video: np.ndarray, num_scenes: int, scene_frames: Sequence[int] | None = None
) -> np.ndarray | list[np.ndarray]:
    """(S*F, H, W, 3) -> (S, F, H, W, 3) for equal scenes; with ``scene_frames`` (pixel frames
    per scene, adding up to the video's frames) a list of S (F_i, H, W, 3) arrays."""
    video = np.asarray(video)
    if scene_frames is not None:
        from m2dit_jax.eval.cuts import check_scene_frames

        if video.ndim != 4:
            raise ValueError(f"video must be (frames, H, W, 3), got shape {video.shape}")
        counts = check_scene_frames(scene_frames, num_scenes=num_scenes, total=video.shape[0])
        return np.split(video, np.cumsum(counts)[:-1])
    if video.ndim != 4 or num_scenes <= 0 or video.shape[0] % num_scenes:
        raise ValueError(
            f"video of shape {video.shape} cannot be split into {num_scenes} equal scenes"
        )
    return video.reshape(num_scenes, video.shape[0] // num_scenes, *video.shape[1:])


def keyframe_indices(frames: int, count: int) -> np.ndarray:
    """``count`` frame indices spread uniformly over ``frames`` (all when count >= frames)."""
    if count <= 0:
        raise ValueError(f"frames_per_scene must be positive, got {count}")
    if count >= frames:
        return np.arange(frames)
    return np.round(np.linspace(0, frames - 1, count)).astype(int)


def video_consistency(
    video: np.ndarray,
    captions: Sequence[str],
    *,
    image_embed: ImageEmbedFn,
    text_embed: TextEmbedFn,
    frames_per_scene: int = 4,
    scene_frames: Sequence[int] | None = None,
) -> dict[str, float]:
    """The three numbers (percent) for one video (S*F, H, W, 3) with S = len(captions);
    ``scene_frames``: pixel frames of each scene when they differ (ragged)."""
    num_scenes = len(captions)
    if num_scenes == 0:
        raise ValueError("captions is empty: one caption per scene is needed")
    scenes = split_scenes(video, num_scenes, scene_frames)
    k = min(len(s) for s in scenes)
    k = len(keyframe_indices(k, frames_per_scene))  # same keyframe count for every scene
    keyframes = np.stack([s[keyframe_indices(len(s), k)] for s in scenes])  # (S, K, H, W, 3)
    img = _unit(image_embed(keyframes.reshape(-1, *keyframes.shape[2:])), "image_embed")
    if img.shape[0] != num_scenes * k:
        raise ValueError(f"image_embed returned {img.shape[0]} rows for {num_scenes * k} frames")
    txt = _unit(text_embed(list(captions)), "text_embed")
    if txt.shape != (num_scenes, img.shape[1]):
        raise ValueError(
            f"text_embed must return ({num_scenes}, {img.shape[1]}) to match the image "
            f"embeddings, got {txt.shape}"
        )
    img = img.reshape(num_scenes, k, -1)
    semantic = float(np.mean(np.einsum("skd,sd->sk", img, txt)))
    if num_scenes > 1:
        sim = np.einsum("akd,bld->abkl", img, img)  # (S, S, K, K)
        cross = ~np.eye(num_scenes, dtype=bool)
        visual = float(np.mean(sim[cross]))
    else:
        visual = float("nan")
    return {
        "visual_consistency": 100.0 * visual,
        "semantic_consistency": 100.0 * semantic,
        "sequence_consistency": 100.0 * (visual + semantic) / 2.0,
    }


def dataset_consistency(
    videos: Sequence[np.ndarray],
    captions: Sequence[Sequence[str]],
    *,
    image_embed: ImageEmbedFn,
    text_embed: TextEmbedFn,
    frames_per_scene: int = 4,
    scene_frames: Sequence[Sequence[int] | None] | None = None,
) -> dict[str, float]:
    """Means of ``video_consistency`` over a set of videos (each with its own caption list
    and, optionally, its own per-scene frame counts in ``scene_frames``)."""
    if len(videos) == 0 or len(videos) != len(captions):
        raise ValueError(
            f"need matching non-empty lists, got {len(videos)} videos and "
            f"{len(captions)} caption lists"
        )
    if scene_frames is None:
        scene_frames = [None] * len(videos)
    elif len(scene_frames) != len(videos):
        raise ValueError(f"need one scene_frames per video, got {len(scene_frames)}")
    rows = [
        video_consistency(
            v,
            c,
            image_embed=image_embed,
            text_embed=text_embed,
            frames_per_scene=frames_per_scene,
            scene_frames=f,
        )
        for v, c, f in zip(videos, captions, scene_frames)
    ]
    return {key: float(np.nanmean([r[key] for r in rows])) for key in rows[0]}
