"""Writes an evaluation report (``m2dit_jax.eval.report``): JSON, a markdown table, a PNG plot.

The plot shows, per scene position (scene 1, 2, ...), the mean over videos of every per-scene
score in percent: cut found at the scene's start, synthetic colour / motion alignment and
shape / background consistency, semantic (CLIP) score — those the report has. Pillow only.
Videos whose scenes have their own lengths (ragged) count by scene position like the others;
the per-video table gives every video's frames per scene.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from m2dit_jax.eval.synthetic_metrics import SUMMARY_NAMES

SCENE_SCORES = {
    "cut_found": ("cut found", (40, 40, 40)),
    "colour_ok": ("colour", (220, 60, 50)),
    "motion_ok": ("motion", (240, 160, 30)),
    "shape_consistent": ("shape consistent", (60, 150, 60)),
    "background_consistent": ("background consistent", (50, 110, 220)),
    "semantic": ("semantic (CLIP)", (150, 80, 190)),
}


def to_json(value: Any) -> Any:
    """A copy with NaN -> None, numpy scalars -> Python and dict keys -> str (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def scene_means(report: dict) -> dict[str, list[float | None]]:
    """Per score in ``SCENE_SCORES``: its mean (percent) at every scene position, or None."""
    depth = max((r["num_scenes"] for r in report["videos"]), default=0)
    out = {}
    for key in SCENE_SCORES:
        means = []
        for s in range(depth):
            values = [
                float(r["scenes"][s][key])
                for r in report["videos"]
                if s < r["num_scenes"] and r["scenes"][s].get(key) is not None
            ]
            if key != "semantic":
                values = [100.0 * v for v in values]
            means.append(float(np.mean(values)) if values else None)
        if any(m is not None for m in means):
            out[key] = means
    return out


def plot_scene_scores(report: dict, path: str) -> str:
    """Grouped bar chart of ``scene_means`` (0..100%) saved as a PNG; returns the path."""
    means = scene_means(report)
    depth = max((len(v) for v in means.values()), default=1)
    bar, gap, left, top, height = 14, 24, 44, 16, 200
    group = max(1, len(means)) * bar
    width = left + depth * (group + gap) + gap + 170
    img = Image.new("RGB", (width, top + height + 40), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    base = top + height
    for pct in (0, 25, 50, 75, 100):
        y = base - pct * height / 100
        draw.line([(left, y), (left + depth * (group + gap) + gap, y)], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{pct}%", fill=(90, 90, 90))
    for s in range(depth):
        x0 = left + gap + s * (group + gap)
        for j, (key, values) in enumerate(means.items()):
            value = values[s] if s < len(values) else None
            if value is None:
                continue
            y = base - max(0.0, min(100.0, value)) * height / 100
            x = x0 + j * bar
            draw.rectangle([x, y, x + bar - 2, base], fill=SCENE_SCORES[key][1])
        draw.text((x0, base + 6), f"scene {s + 1}", fill=(20, 20, 20))
    lx = left + depth * (group + gap) + gap + 10
    for j, key in enumerate(means):
        label, colour = SCENE_SCORES[key]
        draw.rectangle([lx, top + 16 * j, lx + 10, top + 16 * j + 10], fill=colour)
        draw.text((lx + 16, top + 16 * j - 1), label, fill=(20, 20, 20))
    if not means:
        draw.text((left + gap, top + height / 2), "no per-scene scores", fill=(20, 20, 20))
    ragged = report.get("num_ragged") or 0
    footer = f"mean over {report['num_videos']} videos" + (f" ({ragged} ragged)" if ragged else "")
    draw.text((left, base + 22), footer, fill=(90, 90, 90))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path


def _pct(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}%"


def _scene_pct(scenes: list[dict], key: str) -> str:
    values = [s[key] for s in scenes if s.get(key) is not None]
    return _pct(100 * float(np.mean(values))) if values else "-"


def summary_rows(report: dict) -> list[tuple[str, str]]:
    """(metric, value) pairs of the report's summary."""
    c = report["cuts"]
    rows = [
        (
            f"cut boundary recall (±{c['tolerance']} frame)",
            f"{_pct(100 * c['boundary_recall'] if c['boundaries'] else None)} "
            f"({c['boundaries_detected']}/{c['boundaries']})",
        ),
        ("spurious cuts", f"{c['spurious_cuts']} ({c['spurious_per_video']:.2f} per video)"),
    ]
    f = report.get("fvd")
    if f:
        note = ", rank-deficient: use hundreds of videos" if f["rank_deficient"] else ""
        rows.append(
            (
                f"FVD (I3D; {f['num_real']} reference vs {f['num_generated']} videos{note})",
                f"{f['fvd']:.1f}",
            )
        )
    for key, value in (report.get("consistency") or {}).items():
        rows.append((key.replace("_", " "), _pct(value, 2)))
    s = report.get("synthetic")
    if s:
        for key, name in SUMMARY_NAMES.items():
            value = s.get(key)
            rows.append((f"synthetic: {name}", _pct(None if value is None else 100 * value)))
    return rows


def scene_frames_text(row: dict) -> str:
    """A report row's frames per scene: "4" for equal scenes, "3+7+5" for ragged ones."""
    frames = row.get("scene_frames")
    if not frames:
        fps = row.get("frames_per_scene")
        return "-" if fps is None else str(fps)
    if len(set(frames)) == 1:
        return str(frames[0])
    return "+".join(str(f) for f in frames)


def markdown(report: dict, plot_file: str | None = None) -> str:
    """The report as markdown: a summary table, a per-video table and the plot."""
    lines = [
        "# Evaluation report",
        "",
        f"{report['num_videos']} videos in `{report['videos_dir']}`"
        + (
            f" ({report['num_ragged']} with scenes of their own lengths)."
            if report.get("num_ragged")
            else "."
        ),
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {m} | {v} |" for m, v in summary_rows(report)]
    lines += [
        "",
        "| video | scenes | cuts found | spurious | visual | semantic | colour | motion "
        "| frames per scene |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["videos"]:
        cons = r["consistency"] or {}
        generated = [s for s in r["scenes"] if s["generated"]]
        lines.append(
            f"| {r['file']} | {r['num_scenes']} | {len(r['cuts']['hits'])}/"
            f"{len(r['cuts']['boundaries'])} | {len(r['cuts']['spurious'])} | "
            f"{_pct(cons.get('visual_consistency'), 2)} | "
            f"{_pct(cons.get('semantic_consistency'), 2)} | "
            f"{_scene_pct(generated, 'colour_ok')} | {_scene_pct(generated, 'motion_ok')} | "
            f"{scene_frames_text(r)} |"
        )
    if plot_file:
        lines += ["", f"![per-scene scores]({plot_file})"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: str) -> list[str]:
    """Writes ``out`` (JSON) and, next to it, ``<stem>.md`` and ``<stem>.png``; returns paths."""
    stem = os.path.splitext(out)[0]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(to_json(report), f, indent=2, allow_nan=False)
    png = plot_scene_scores(report, stem + ".png")
    with open(stem + ".md", "w") as f:
        f.write(markdown(report, os.path.basename(png)))
    return [out, stem + ".md", png]
