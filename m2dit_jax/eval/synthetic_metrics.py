"""Scores generated ``synthetic_shapes`` videos against their scripts with the analytic detectors.

Per generated scene i (detections from ``m2dit_jax.eval.shapes_detectors``):
- alignment — does the scene follow *its own* caption: ``colour_ok`` (object colour named in
  caption i) and ``motion_ok`` (direction named in caption i);
- consistency — does the scene agree with scene 1 on what later captions never state:
  ``shape_consistent`` / ``background_consistent`` (detected shape / background equal to
  scene 1's detection), for scenes 2..S only;
- ``shape_ok``: the detected shape equals the one scene 1's caption names (a harder, per-scene
  accuracy number);
- ``object_clean``: the scene shows one object of plausible size in every frame (the object
  mask covers ``OBJECT_AREA`` of the frame) over a clean background (``BACKGROUND_SHARE`` of the
  pixels within ``BACKGROUND_DISTANCE`` of a background colour).

Consistency only counts between clean scenes: noise or a smeared frame "agrees" with itself on
every detector, and would otherwise score 100%. The unfiltered detector agreement is kept as
``shape_agree_raw`` / ``background_agree_raw``: meaningless for a single noisy model, but a fair
comparison between models trained on the same budget (the ablation reports it).

``summarize`` averages these over scenes and videos into the table the demo prints, with the
chance level of each number for a model that ignores its captions / the other scenes.
Extended videos are scored the same way; ``first_scene`` restricts the per-scene numbers to
the newly generated scenes while consistency is still measured against scene 1 of the video.
Scenes of their own lengths (``scene_frames``) are scored the same way, each on its own
frames; a one-frame scene has no ``motion_ok`` (no motion to see).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from m2dit_jax.data.synthetic_shapes import (
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    Script,
)
from m2dit_jax.eval import shapes_detectors

OBJECT_AREA = (0.05, 0.5)  # object pixels / frame pixels, every frame
BACKGROUND_SHARE = 0.5
BACKGROUND_DISTANCE = 60.0

METRICS = (
    "colour_ok",
    "motion_ok",
    "shape_consistent",
    "background_consistent",
    "shape_ok",
    "object_clean",
    "shape_agree_raw",
    "background_agree_raw",
)
# What a model gets by guessing uniformly (alignment) or picking independently per scene
# (consistency); printed next to the measured numbers.
CHANCE = {
    "colour_ok": 1.0 / len(COLOURS),
    "motion_ok": 1.0 / len(MOTIONS),
    "shape_consistent": 1.0 / len(SHAPES),
    "background_consistent": 1.0 / len(BACKGROUNDS),
    "shape_ok": 1.0 / len(SHAPES),
    "object_clean": float("nan"),
    "shape_agree_raw": 1.0 / len(SHAPES),
    "background_agree_raw": 1.0 / len(BACKGROUNDS),
}
SUMMARY_NAMES = {
    "colour_ok": "alignment/colour",
    "motion_ok": "alignment/motion",
    "shape_consistent": "consistency/shape",
    "background_consistent": "consistency/background",
    "shape_ok": "shape matches caption 1",
    "object_clean": "clean object + background",
    "shape_agree_raw": "shape agrees (unfiltered)",
    "background_agree_raw": "background agrees (unfiltered)",
}


def score_video(
    video: np.ndarray,
    script: Script,
    *,
    first_scene: int = 0,
    scene_frames: Sequence[int] | None = None,
) -> list[dict]:
    """(S*F, H, W, 3) uint8 video of ``script.num_scenes`` scenes -> one row per scored scene.

    Each row holds the detections and the bool metrics above (consistency keys only for
    scenes after the first). ``first_scene`` skips the rows of earlier (condition) scenes.
    ``scene_frames``: pixel frames of each scene when they differ (ragged).
    """
    from m2dit_jax.eval.consistency import split_scenes

    num_scenes = script.num_scenes
    if not 0 <= first_scene < num_scenes:
        raise ValueError(f"first_scene={first_scene} must be in [0, {num_scenes})")
    detections = shapes_detectors.detect_scenes(video, num_scenes, scene_frames)
    if scene_frames is None:
        scenes = np.asarray(video).reshape(num_scenes, -1, *np.shape(video)[1:])
    else:
        scenes = split_scenes(video, num_scenes, scene_frames)
    clean = [is_clean_scene(scene) for scene in scenes]
    reference = detections[0]
    rows = []
    for i in range(first_scene, num_scenes):
        d = detections[i]
        row = {
            "scene": i,
            "detected": d,
            "colour_ok": d["colour"] == COLOURS[script.colours[i]],
            "motion_ok": d["motion"] == MOTIONS[script.motions[i]],
            "shape_ok": d["shape"] == SHAPES[script.shape],
            "object_clean": clean[i],
        }
        if len(scenes[i]) < 2:  # a one-frame shot shows no motion: not scored
            del row["motion_ok"]
        if i > 0:
            both = clean[i] and clean[0]
            row["shape_consistent"] = both and d["shape"] == reference["shape"]
            row["background_consistent"] = both and d["background"] == reference["background"]
            row["shape_agree_raw"] = d["shape"] == reference["shape"]
            row["background_agree_raw"] = d["background"] == reference["background"]
        rows.append(row)
    return rows


def is_clean_scene(scene: np.ndarray) -> bool:
    """One plausible object in every frame over a mostly clean background (see module doc)."""
    mask = shapes_detectors.object_mask(scene)
    area = mask.reshape(mask.shape[0], -1).mean(axis=1)
    if not np.all((area >= OBJECT_AREA[0]) & (area <= OBJECT_AREA[1])):
        return False
    pixels = scene.reshape(-1, 3).astype(np.float64)
    dist = np.linalg.norm(pixels[:, None, :] - BACKGROUND_RGB[None].astype(np.float64), axis=-1)
    return bool(np.mean(dist.min(axis=1) <= BACKGROUND_DISTANCE) >= BACKGROUND_SHARE)


def summarize(rows: Sequence[dict]) -> dict[str, float]:
    """Mean of every metric over the rows that have it (NaN when none has it)."""
    out = {}
    for key in METRICS:
        values = [float(r[key]) for r in rows if key in r]
        out[key] = float(np.mean(values)) if values else float("nan")
    out["num_scenes_scored"] = len(rows)
    return out


def score_videos(
    videos: Sequence[np.ndarray],
    scripts: Sequence[Script],
    *,
    first_scene: int = 0,
    scene_frames: Sequence[Sequence[int] | None] | None = None,
) -> tuple[dict[str, float], list[list[dict]]]:
    """Scores many videos; returns (summary over all scored scenes, per-video rows).
    ``scene_frames``: per video, its per-scene pixel frames (None: equal scenes)."""
    if len(videos) != len(scripts) or not videos:
        raise ValueError(
            f"need matching non-empty lists, got {len(videos)} videos and {len(scripts)} scripts"
        )
    if scene_frames is None:
        scene_frames = [None] * len(videos)
    elif len(scene_frames) != len(videos):
        raise ValueError(f"need one scene_frames per video, got {len(scene_frames)}")
    per_video = [
        score_video(v, s, first_scene=first_scene, scene_frames=f)
        for v, s, f in zip(videos, scripts, scene_frames)
    ]
    return summarize([r for rows in per_video for r in rows]), per_video


def format_table(columns: dict[str, dict[str, float]], *, chance: bool = True) -> str:
    """A plain-text table: one row per metric, one column per summary (e.g. generated/extended)."""
    names = list(columns)
    width = max(len(v) for v in SUMMARY_NAMES.values()) + 2
    header = "metric".ljust(width) + "".join(n.rjust(14) for n in names)
    if chance:
        header += "chance".rjust(10)
    lines = [header, "-" * len(header)]
    for key in METRICS:
        line = SUMMARY_NAMES[key].ljust(width)
        for n in names:
            value = columns[n].get(key, float("nan"))
            line += ("-" if np.isnan(value) else f"{100 * value:.1f}%").rjust(14)
        if chance:
            c = CHANCE[key]
            line += ("-" if np.isnan(c) else f"{100 * c:.0f}%").rjust(10)
        lines.append(line)
    return "\n".join(lines)
