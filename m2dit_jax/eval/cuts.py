"""Shot-cut accuracy: are the scene boundaries of a multi-scene video visible as hard cuts?

Cuts are found with PySceneDetect's ``ContentDetector`` run on the frame arrays (no files):
a frame starts a new shot when the mean HSV difference to the previous frame reaches
``threshold`` (0..255 scale; 30 here, PySceneDetect's default is 27: on small synthetic frames
decoded from H.264, codec noise on dark backgrounds pushes a few in-scene frames over 27).
A detected cut is the index of the first frame of the new shot. The true boundaries of S
equal scenes of F frames are frames F, 2F, ..., (S-1)F; of scenes of their own lengths
F_1, ..., F_S (ragged) the first frame of every scene after the first, F_1, F_1 + F_2, ...
(``boundaries_from_frames``). Detected cuts are matched one-to-one
to boundaries within ``tolerance`` (default ±1) frames, nearest first:

- ``boundary_recall``: matched boundaries / true boundaries;
- ``spurious``: detected cuts matched to no boundary (cuts inside a scene, or too far off a
  boundary — a cut shifted by more than ``tolerance`` counts as a miss *and* a spurious cut).

On ground-truth renders whose consecutive scenes differ in background the detector finds every
boundary and nothing else; a model that keeps the background across scenes (as Mask²DiT is
meant to) makes cuts that only the object's colour and position mark, which is harder.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_THRESHOLD = 30.0
TOLERANCE = 1
INSTALL_HINT = "pip install scenedetect==0.7.2 (or this project's extra: pip install -e '.[eval]')"


def _detector(threshold: float, min_scene_len: int):
    try:
        from scenedetect import FrameTimecode
        from scenedetect.detectors import ContentDetector
    except ImportError as err:
        raise ImportError(f"shot-cut detection needs PySceneDetect: {INSTALL_HINT}") from err
    return FrameTimecode, ContentDetector(threshold=threshold, min_scene_len=min_scene_len)


def _check_video(video) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"video must be (F, H, W, 3) uint8, got {video.shape} {video.dtype}")
    return video


def detect_cuts(
    video: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD, min_scene_len: int = 0
) -> list[int]:
    """Indices of the frames that start a new shot in ``video`` (F, H, W, 3) uint8 RGB.

    ``min_scene_len`` > 0 enables PySceneDetect's merge filter (cuts closer than that many
    frames are merged); 0 keeps every frame over the threshold, which suits short scenes.
    """
    video = _check_video(video)
    frame_timecode, detector = _detector(threshold, min_scene_len)
    cuts = []
    for i, frame in enumerate(video):
        bgr = np.ascontiguousarray(frame[..., ::-1])  # OpenCV's channel order
        cuts += detector.process_frame(frame_timecode(i, 25.0), bgr)
    if len(video):
        cuts += detector.post_process(frame_timecode(len(video) - 1, 25.0))
    return sorted({int(c) for c in cuts if 0 < int(c) < len(video)})


def scene_boundaries(num_scenes: int, frames_per_scene: int) -> list[int]:
    """First frame of every scene after the first: [F, 2F, ..., (S-1)F]."""
    if num_scenes < 1 or frames_per_scene < 1:
        raise ValueError(
            f"need num_scenes, frames_per_scene >= 1: {num_scenes}, {frames_per_scene}"
        )
    return [s * frames_per_scene for s in range(1, num_scenes)]


def check_scene_frames(
    scene_frames: Sequence[int],
    *,
    num_scenes: int | None = None,
    total: int | None = None,
    where: str = "scene_frames",
) -> tuple[int, ...]:
    """``scene_frames`` as a tuple of positive ints, checked against ``num_scenes`` scenes and
    a video of ``total`` frames (when given); a ValueError starting with ``where`` otherwise."""
    try:
        counts = list(scene_frames)
    except TypeError:
        counts = None
    if not counts or not all(
        isinstance(f, (int, np.integer)) and not isinstance(f, bool) and f >= 1 for f in counts
    ):
        raise ValueError(
            f"{where} must be a non-empty list of positive integers, got {scene_frames!r}"
        )
    counts = tuple(int(f) for f in counts)
    if num_scenes is not None and len(counts) != num_scenes:
        raise ValueError(
            f"{where} {list(counts)} has {len(counts)} entries for {num_scenes} scenes"
        )
    if total is not None and sum(counts) != total:
        raise ValueError(
            f"{where} {list(counts)} add up to {sum(counts)} frames, but the video has {total}"
        )
    return counts


def boundaries_from_frames(scene_frames: Sequence[int]) -> list[int]:
    """First frame of every scene after the first for scenes of ``scene_frames`` frames each:
    the cumulative starts [F_1, F_1 + F_2, ..., F_1 + ... + F_{S-1}]."""
    counts = check_scene_frames(scene_frames)
    return [int(b) for b in np.cumsum(counts)[:-1]]


def match_cuts(
    detected: Sequence[int], boundaries: Sequence[int], *, tolerance: int = TOLERANCE
) -> dict:
    """One-to-one matching of detected cuts to true boundaries within ``tolerance`` frames.

    Pairs are taken nearest first. Returns ``hits`` ({boundary: cut}), ``missed`` (boundaries
    without a cut) and ``spurious`` (cuts without a boundary), all sorted.
    """
    pairs = sorted(
        (abs(c - b), b, c) for b in boundaries for c in detected if abs(c - b) <= tolerance
    )
    hits: dict[int, int] = {}
    used: set[int] = set()
    for _, b, c in pairs:
        if b not in hits and c not in used:
            hits[b] = c
            used.add(c)
    return {
        "hits": dict(sorted(hits.items())),
        "missed": sorted(b for b in boundaries if b not in hits),
        "spurious": sorted(c for c in detected if c not in used),
    }


def video_cut_accuracy(
    video: np.ndarray,
    num_scenes: int,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    tolerance: int = TOLERANCE,
    boundaries: Sequence[int] | None = None,
    scene_frames: Sequence[int] | None = None,
) -> dict:
    """Cuts of one video of ``num_scenes`` equal scenes, of scenes of ``scene_frames`` frames
    each (ragged; they must add up to the video's frames), or explicit ``boundaries``.

    Returns ``detected``, ``boundaries``, ``hits``, ``missed``, ``spurious`` and
    ``boundary_recall`` (NaN for a single-scene video, which has no boundary).
    """
    video = _check_video(video)
    if boundaries is None and scene_frames is not None:
        counts = check_scene_frames(scene_frames, num_scenes=num_scenes, total=len(video))
        boundaries = boundaries_from_frames(counts)
    if boundaries is None:
        if num_scenes < 1 or len(video) % num_scenes:
            raise ValueError(f"{len(video)} frames do not split into {num_scenes} equal scenes")
        boundaries = scene_boundaries(num_scenes, len(video) // num_scenes)
    detected = detect_cuts(video, threshold=threshold)
    match = match_cuts(detected, boundaries, tolerance=tolerance)
    recall = len(match["hits"]) / len(boundaries) if boundaries else float("nan")
    return {
        "detected": detected,
        "boundaries": list(boundaries),
        **match,
        "boundary_recall": recall,
    }


def summarize_cuts(rows: Sequence[dict]) -> dict[str, float]:
    """Totals over videos: ``boundary_recall`` (all boundaries pooled), ``boundaries``,
    ``boundaries_detected``, ``spurious_cuts``, ``spurious_per_video``, ``num_videos``."""
    total = sum(len(r["boundaries"]) for r in rows)
    found = sum(len(r["hits"]) for r in rows)
    spurious = sum(len(r["spurious"]) for r in rows)
    return {
        "boundary_recall": found / total if total else float("nan"),
        "boundaries": total,
        "boundaries_detected": found,
        "spurious_cuts": spurious,
        "spurious_per_video": spurious / len(rows) if rows else float("nan"),
        "num_videos": len(rows),
    }
