"""``manifest`` source: real videos listed in a JSONL manifest, decoded with PyAV.

Each line is one of
    {"video": "clips/a.mp4", "caption": "..."}                       single-scene clip
    {"video": "clips/a.mp4", "caption": "...", "start": 2.0, "end": 6.5}  (optional window)
    {"video": "films/b.mp4", "shots": [{"start": s, "end": e, "caption": "..."}, ...]}
Paths are relative to the manifest's directory; times are seconds.

Stage 1 units are clips: every single-scene line and every shot of a multi-shot line; a
sample is S unrelated clips. Stage 2 units are multi-shot lines with >= S shots; a sample is
S consecutive shots (random first shot). Invalid lines are dropped while indexing and
counted (``bad_manifest_line``, ``empty_caption``, ``too_few_shots``); files are checked when
loaded (``missing_file``, ``unreadable_video``, ``too_short``).

Ragged scenes (``ragged=True``): stage 1 clips take the per-scene frame counts the pipeline
draws for the batch (at ``stage1_stride``); a clip too short for its count is ``too_short``.
Stage 2 keeps each shot's real length: a unit is one window of S consecutive shots of a
multi-shot line, and its layout (pixel frames per shot = floor(duration * fps), capped at
``max_frames``, rounded down to the frame rule, fit to ``token_budget``) comes from the shot
times alone, before any decoding (``unit_layouts``, which the pipeline buckets by). A shot
shorter than ``min_frames`` is counted once as ``too_short`` and every window holding it is
dropped; a multi-shot line whose shots lack times is a ``bad_manifest_line``. Shot frames are
decoded at ``start + k / fps``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from m2dit_jax.data.bad_input import BadSample, empty_counts, log_once
from m2dit_jax.data.frame_sampling import ClipSampling, FrameRule
from m2dit_jax.data.video_io import decode_frames, probe


@dataclasses.dataclass(frozen=True)
class Shot:
    caption: str
    start: float | None = None  # seconds; None = whole file
    end: float | None = None


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    video: str  # absolute path
    shots: tuple[Shot, ...]
    line: int
    multi_shot: bool


def _valid_caption(caption: Any) -> bool:
    return isinstance(caption, str) and bool(caption.strip())


def _parse_shot(obj: Any, where: str) -> Shot:
    if not isinstance(obj, dict):
        raise BadSample("bad_manifest_line", where, "a shot is not a JSON object")
    if not _valid_caption(obj.get("caption")):
        raise BadSample("empty_caption", where, "a caption is empty or missing")
    start, end = obj.get("start"), obj.get("end")
    if (start is None) != (end is None):
        raise BadSample("bad_manifest_line", where, "give both 'start' and 'end' or neither")
    if start is not None:
        if not all(isinstance(t, (int, float)) for t in (start, end)) or not 0 <= start < end:
            raise BadSample("bad_manifest_line", where, f"bad shot times {start!r}..{end!r}")
        start, end = float(start), float(end)
    return Shot(obj["caption"].strip(), start, end)


def parse_manifest(path: str, *, strict: bool = False) -> tuple[list[ManifestEntry], dict]:
    """Manifest file -> (valid entries, skip counts by reason). Strict mode raises ValueError."""
    if not os.path.isfile(path):
        raise ValueError(f"manifest {path!r} does not exist")
    root = os.path.dirname(os.path.abspath(path))
    entries, counts = [], empty_counts()
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise BadSample("bad_manifest_line", where, f"not valid JSON: {e}") from e
                if not isinstance(obj, dict) or not isinstance(obj.get("video"), str):
                    raise BadSample("bad_manifest_line", where, "needs a string 'video' field")
                video = os.path.join(root, obj["video"])
                if "shots" in obj:
                    if not isinstance(obj["shots"], list) or not obj["shots"]:
                        raise BadSample("bad_manifest_line", where, "'shots' must be a list")
                    shots = tuple(_parse_shot(s, where) for s in obj["shots"])
                    entries.append(ManifestEntry(video, shots, number, True))
                else:
                    entries.append(ManifestEntry(video, (_parse_shot(obj, where),), number, False))
            except BadSample as error:
                if strict:
                    raise ValueError(str(error)) from error
                log_once(error)
                counts[error.reason] += 1
    return entries, counts


class ManifestSource:
    """Pipeline source over a manifest (see module docstring); samples are (S*F, H, W, 3)."""

    def __init__(self, config):
        self.path = config.path
        self.num_scenes = int(config.num_scenes)
        self.clip = ClipSampling.from_config(config)
        self.stage = int(config.stage)
        self.ragged = bool(config.get("ragged", False))
        self.rule = FrameRule.from_config(config) if self.ragged else None
        self.fps = float(config.get("fps", 0.0))
        self.unit_layouts = None
        entries, self.initial_skips = parse_manifest(self.path, strict=bool(config.strict))
        if self.ragged and self.stage == 2:
            self._index_ragged_windows(entries, bool(config.strict))
        elif self.stage == 1:
            self.units = [(e, i) for e in entries for i in range(len(e.shots))]
            self.units_per_sample = self.num_scenes
        else:
            self.units = []
            for e in entries:
                if len(e.shots) >= self.num_scenes:
                    self.units.append((e, 0))
                    continue
                error = BadSample(
                    "too_few_shots",
                    f"{self.path}:{e.line}",
                    f"{len(e.shots)} shots, stage 2 needs {self.num_scenes}",
                )
                if config.strict:
                    raise ValueError(str(error))
                log_once(error)
                self.initial_skips["too_few_shots"] += 1
            self.units_per_sample = 1
        self.num_units = len(self.units)
        if not self.num_units:
            raise ValueError(f"manifest {self.path!r} has no usable entries for stage {self.stage}")

    def _skip(self, error: BadSample, strict: bool) -> None:
        if strict:
            raise ValueError(str(error))
        log_once(error)
        self.initial_skips[error.reason] += 1

    def _index_ragged_windows(self, entries: list[ManifestEntry], strict: bool) -> None:
        """Stage 2, ragged: units = windows (entry, first shot); layouts from shot times."""
        self.units, self.unit_layouts, self.units_per_sample = [], [], 1
        s = self.num_scenes
        for e in entries:
            where = f"{self.path}:{e.line}"
            if len(e.shots) < s:
                self._skip(
                    BadSample("too_few_shots", where, f"{len(e.shots)} shots, stage 2 needs {s}"),
                    strict,
                )
                continue
            if any(shot.start is None for shot in e.shots):
                self._skip(
                    BadSample(
                        "bad_manifest_line",
                        where,
                        "ragged stage 2 needs every shot's 'start' and 'end'",
                    ),
                    strict,
                )
                continue
            frames = []
            for k, shot in enumerate(e.shots):
                n = self.rule.for_duration(shot.end - shot.start, self.fps)
                if n is None:
                    self._skip(
                        BadSample(
                            "too_short",
                            f"{where}#shot{k}",
                            f"{shot.end - shot.start:.3f}s at fps={self.fps} gives fewer than "
                            f"min_frames={self.rule.min_frames} frames",
                        ),
                        strict,
                    )
                frames.append(n)
            for first in range(len(e.shots) - s + 1):
                window = frames[first : first + s]
                if None in window:
                    continue
                self.units.append((e, first))
                self.unit_layouts.append(self.rule.fit_budget(window))

    def _ragged_shot(self, entry: ManifestEntry, shot: Shot, frames: int, rng) -> np.ndarray:
        """``frames`` frames of a shot at ``fps`` from a random start inside the shot."""
        name = entry.video
        if not os.path.exists(name):
            raise BadSample("missing_file", name, "file does not exist")
        _, src_fps = probe(name)
        available = int(np.floor((shot.end - shot.start) * self.fps + 1e-6))
        k0 = int(rng.integers(0, available - frames + 1))
        times = (k0 + np.arange(frames)) / self.fps
        offsets = np.floor(times * src_fps + 1e-6).astype(int)
        return decode_frames(
            name,
            offsets.tolist(),
            start_time=shot.start,
            height=self.clip.height,
            width=self.clip.width,
            name=name,
        )

    def _clip(
        self, entry: ManifestEntry, shot: Shot, rng, stage: int, frames: int | None = None
    ) -> np.ndarray:
        name = entry.video
        if not os.path.exists(name):
            raise BadSample("missing_file", name, "file does not exist")
        total, fps = probe(name)
        start = shot.start or 0.0
        end = min(shot.end, total / fps) if shot.end is not None else total / fps
        available = int(np.floor((end - start) * fps + 1e-6))
        offsets = self.clip.offsets(available, stage, rng, frames)
        if offsets is None:
            need = self.clip.frames if frames is None else frames
            raise BadSample(
                "too_short",
                f"{name}@{start:.2f}s",
                f"{available} frames, stage {stage} needs {need} (stride rules)",
            )
        return decode_frames(
            name,
            offsets,
            start_time=start,
            height=self.clip.height,
            width=self.clip.width,
            name=name,
        )

    def load(
        self, units: Sequence[int], rng: np.random.Generator, scene_frames=None
    ) -> dict[str, Any]:
        if self.ragged and self.stage == 2:
            entry, first = self.units[units[0]]
            layout = self.unit_layouts[units[0]]
            shots = entry.shots[first : first + self.num_scenes]
            clips = [self._ragged_shot(entry, s, f, rng) for s, f in zip(shots, layout)]
            return {
                "video": np.concatenate(clips, axis=0),
                "scene_frames": np.asarray(layout, np.int32),
                "captions": np.array([s.caption for s in shots], dtype=object),
                "id": f"{os.path.basename(entry.video)}#{first}-{first + self.num_scenes - 1}",
            }
        if self.ragged and scene_frames is None:
            raise ValueError("ragged stage-1 manifest samples need their scene_frames")
        if self.stage == 1:
            picked = [self.units[u] for u in units]
            scenes = [(e, e.shots[i]) for e, i in picked]
            ident = "|".join(f"{os.path.basename(e.video)}#{i}" for e, i in picked)
        else:
            entry = self.units[units[0]][0]
            first = int(rng.integers(0, len(entry.shots) - self.num_scenes + 1))
            scenes = [(entry, s) for s in entry.shots[first : first + self.num_scenes]]
            ident = f"{os.path.basename(entry.video)}#{first}-{first + self.num_scenes - 1}"
        if scene_frames is None:
            scene_frames = (self.clip.frames,) * self.num_scenes
        clips = [
            self._clip(e, s, rng, self.stage, int(f) if self.ragged else None)
            for (e, s), f in zip(scenes, scene_frames)
        ]
        return {
            "video": np.concatenate(clips, axis=0),
            "scene_frames": np.asarray(scene_frames, np.int32),
            "captions": np.array([s.caption for _, s in scenes], dtype=object),
            "id": ident,
        }
