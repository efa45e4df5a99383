"""Scores generated ``synthetic_shapes`` videos against their scripts with the analytic detectors.

Per generated scene i (detections from ``m2dit_jax.eval.shapes_detectors``):
- alignment — does the scene follow *its own* caption: ``colour_ok`` (object colour named in
  caption i) and ``motion_ok`` (direction named in caption i);
- consistency — does the scene agree with scene 1 on what later captions never state:
  ``shape_consistent`` / ``background_consistent`` (detected shape / background equal to
  scene 1's detection), for scenes 2..S only;
- ``shape_ok``: the detected shape equals the one scene 1's caption names (a harder, per-scene
  accuracy number); ``object_visible``: the detectors found an object at all.

``summarize`` averages these over scenes and videos into the table the demo prints, with the
chance level of each number for a model that ignores its captions / the other scenes.
Extended videos are scored the same way; ``first_scene`` restricts the per-scene numbers to
the newly generated scenes while consistency is still measured against scene 1 of the video.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from m2dit_jax.data.synthetic_shapes import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, Script
from m2dit_jax.eval import shapes_detectors

METRICS = (
    "colour_ok",
    "motion_ok",
    "shape_consistent",
    "background_consistent",
    "shape_ok",
    "object_visible",
)
# What a model gets by guessing uniformly (alignment) or picking independently per scene
# (consistency); printed next to the measured numbers.
CHANCE = {
    "colour_ok": 1.0 / len(COLOURS),
    "motion_ok": 1.0 / len(MOTIONS),
    "shape_consistent": 1.0 / len(SHAPES),
    "background_consistent": 1.0 / len(BACKGROUNDS),
    "shape_ok": 1.0 / len(SHAPES),
    "object_visible": float("nan"),
}
SUMMARY_NAMES = {
    "colour_ok": "alignment/colour",
    "motion_ok": "alignment/motion",
    "shape_consistent": "consistency/shape",
    "background_consistent": "consistency/background",
    "shape_ok": "shape matches caption 1",
    "object_visible": "object visible",
}


def score_video(video: np.ndarray, script: Script, *, first_scene: int = 0) -> list[dict]:
    """(S*F, H, W, 3) uint8 video of ``script.num_scenes`` scenes -> one row per scored scene.

    Each row holds the detections and the bool metrics above (consistency keys only for
    scenes after the first). ``first_scene`` skips the rows of earlier (condition) scenes.
    """
    num_scenes = script.num_scenes
    if not 0 <= first_scene < num_scenes:
        raise ValueError(f"first_scene={first_scene} must be in [0, {num_scenes})")
    detections = shapes_detectors.detect_scenes(video, num_scenes)
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
            "object_visible": d["colour"] != shapes_detectors.NONE,
        }
        if i > 0:
            row["shape_consistent"] = (
                d["shape"] == reference["shape"] and d["shape"] != shapes_detectors.NONE
            )
            row["background_consistent"] = d["background"] == reference["background"]
        rows.append(row)
    return rows


def summarize(rows: Sequence[dict]) -> dict[str, float]:
    """Mean of every metric over the rows that have it (NaN when none has it)."""
    out = {}
    for key in METRICS:
        values = [float(r[key]) for r in rows if key in r]
        out[key] = float(np.mean(values)) if values else float("nan")
    out["num_scenes_scored"] = len(rows)
    return out


def score_videos(
    videos: Sequence[np.ndarray], scripts: Sequence[Script], *, first_scene: int = 0
) -> tuple[dict[str, float], list[list[dict]]]:
    """Scores many videos; returns (summary over all scored scenes, per-video rows)."""
    if len(videos) != len(scripts) or not videos:
        raise ValueError(
            f"need matching non-empty lists, got {len(videos)} videos and {len(scripts)} scripts"
        )
    per_video = [score_video(v, s, first_scene=first_scene) for v, s in zip(videos, scripts)]
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
