"""Scores a folder of sampled videos: shot cuts, FVD, CLIP-style consistency, synthetic detectors.

``evaluate(videos_dir, ...)`` reads every ``*.mp4`` / ``*.gif`` in ``videos_dir`` with the
``<file>.scenes.json`` sidecar that ``launch.sample`` writes next to it (``captions``: one per
scene; ``scene_frames``: the pixel frames of every scene, which may differ from scene to scene;
``frames_per_scene``: their common count when they are equal, null otherwise — an older sidecar
with only ``frames_per_scene``, or neither, means equal scenes) and returns a JSON-ready report:

- ``cuts``: shot-cut accuracy of the scene boundaries (``m2dit_jax.eval.cuts``), always;
- ``fvd``: I3D FVD against the videos of ``reference_dir`` (``m2dit_jax.eval.fvd``), when given;
- ``consistency``: the paper's visual / semantic / sequence consistency
  (``m2dit_jax.eval.consistency``), when the caller plugs ``image_embed`` and ``text_embed``;
- ``synthetic``: the analytic ``synthetic_shapes`` detectors (``synthetic_metrics``) for the
  videos whose captions are in that task's grammar.

``scripts_dir`` (optional) holds the YAML script of every video as ``<stem>.yaml``; its scenes
must be the last scenes of the sidecar's captions. Earlier scenes are conditions (a video
extended with ``launch.sample --extend``): they are not scored as generated scenes, but cuts and
consistency still look at them. Every bad input raises a ValueError naming the file.
Scenes of their own lengths ("ragged") are split by ``scene_frames`` everywhere: the true cut
boundaries are the scenes' cumulative starts, and consistency and the synthetic detectors look
at each scene's own frames.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from m2dit_jax import media
from m2dit_jax.data import synthetic_shapes
from m2dit_jax.eval import consistency, cuts, synthetic_metrics

VIDEO_EXTENSIONS = (".mp4", ".gif")
SIDECAR_SUFFIX = ".scenes.json"
SCRIPT_EXTENSIONS = (".yaml", ".yml")
SYNTHETIC_KEYS = ("colour_ok", "motion_ok", "shape_consistent", "background_consistent")


@dataclasses.dataclass
class SampledVideo:
    """One video of the folder with what its sidecar (and script) say about it.

    ``scene_frames``: pixel frames of every scene (an int is taken as that many frames for
    every scene, the layout of equal scenes)."""

    path: str
    frames: np.ndarray  # (sum(scene_frames), H, W, 3) uint8
    captions: list[str]
    scene_frames: tuple[int, ...]
    first_scene: int = 0  # scenes before it are conditions of an extended video

    def __post_init__(self):
        if isinstance(self.scene_frames, (int, np.integer)) and not isinstance(
            self.scene_frames, bool
        ):
            self.scene_frames = (int(self.scene_frames),) * len(self.captions)
        self.scene_frames = cuts.check_scene_frames(
            self.scene_frames, num_scenes=len(self.captions), where=f"{self.path}: scene_frames"
        )

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def num_scenes(self) -> int:
        return len(self.captions)

    @property
    def ragged(self) -> bool:
        """Whether the scenes have different frame counts."""
        return len(set(self.scene_frames)) > 1

    @property
    def frames_per_scene(self) -> int | None:
        """The frames of every scene when they are equal; None for ragged scenes (see
        ``scene_frames``)."""
        return None if self.ragged else self.scene_frames[0]

    @property
    def scene_starts(self) -> list[int]:
        """First frame of every scene (0 first)."""
        return [0, *cuts.boundaries_from_frames(self.scene_frames)]


def list_videos(folder: str, what: str = "--videos") -> list[str]:
    """Sorted video files (.mp4/.gif) of ``folder``; raises when there is none."""
    if not os.path.isdir(folder):
        raise ValueError(f"{what} {folder}: not a directory")
    paths = sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if f.endswith(VIDEO_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))
    )
    if not paths:
        raise ValueError(f"{what} {folder}: no {'/'.join(VIDEO_EXTENSIONS)} videos in it")
    return paths


@dataclasses.dataclass(frozen=True)
class Sidecar:
    """What ``<video>.scenes.json`` says: captions, and the scene lengths when it records them
    (``scene_frames`` per scene; ``frames_per_scene`` when equal)."""

    captions: list[str]
    frames_per_scene: int | None
    scene_frames: tuple[int, ...] | None


def read_sidecar(video_path: str) -> tuple[list[str], int | None]:
    """(captions, frames_per_scene or None) from ``<video>.scenes.json``; None also for a
    sidecar whose ``scene_frames`` differ (see ``read_scene_sidecar``)."""
    side = read_scene_sidecar(video_path)
    fps = side.frames_per_scene
    if fps is None and side.scene_frames is not None and len(set(side.scene_frames)) == 1:
        fps = side.scene_frames[0]
    return side.captions, fps


def read_scene_sidecar(video_path: str) -> Sidecar:
    """The validated sidecar of ``video_path``: ``captions`` (non-empty strings), optional
    ``frames_per_scene`` (a positive int or null) and optional ``scene_frames`` (one positive
    int per caption, all equal to ``frames_per_scene`` when both are given)."""
    path = video_path + SIDECAR_SUFFIX
    if not os.path.isfile(path):
        raise ValueError(
            f"{video_path}: no sidecar {os.path.basename(path)} (launch.sample writes one next "
            "to every video: its per-scene captions)"
        )
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable JSON ({err})") from err
    captions = data.get("captions") if isinstance(data, dict) else None
    if not isinstance(captions, list) or not captions:
        raise ValueError(f"{path}: 'captions' must be a non-empty list of strings")
    if not all(isinstance(c, str) and c for c in captions):
        raise ValueError(f"{path}: 'captions' must be a non-empty list of strings")
    fps = data.get("frames_per_scene")
    if fps is not None and (not isinstance(fps, int) or isinstance(fps, bool) or fps < 1):
        raise ValueError(f"{path}: 'frames_per_scene' must be a positive integer, got {fps!r}")
    scene_frames = data.get("scene_frames")
    if scene_frames is not None:
        if not isinstance(scene_frames, list) or not all(
            isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in scene_frames
        ):
            raise ValueError(
                f"{path}: 'scene_frames' must be a list of positive integers (pixel frames per "
                f"scene), got {scene_frames!r}"
            )
        if len(scene_frames) != len(captions):
            raise ValueError(
                f"{path}: 'scene_frames' has {len(scene_frames)} entries for its "
                f"{len(captions)} captions (one per scene)"
            )
        if fps is not None and any(f != fps for f in scene_frames):
            raise ValueError(
                f"{path}: 'scene_frames' {scene_frames} disagree with 'frames_per_scene' {fps} "
                "(set it to null for scenes of different lengths)"
            )
        scene_frames = tuple(scene_frames)
    return Sidecar(captions, fps, scene_frames)


def _script_scenes(scripts_dir: str, video_path: str) -> list[str]:
    from m2dit_jax.inference.script import load_script

    stem = os.path.splitext(os.path.basename(video_path))[0]
    for ext in SCRIPT_EXTENSIONS:
        path = os.path.join(scripts_dir, stem + ext)
        if os.path.isfile(path):
            return load_script(path).captions
    raise ValueError(f"{video_path}: no script {stem}.yaml in --scripts {scripts_dir}")


def load_video(
    path: str, *, frame_size: tuple[int, int] | None = None, scripts_dir: str | None = None
) -> SampledVideo:
    """Reads a video + sidecar (+ its script) and checks that they agree."""
    side = read_scene_sidecar(path)
    captions, frames_per_scene, scene_frames = side.captions, side.frames_per_scene, None
    frames = media.read_video(path, size=frame_size)
    if side.scene_frames is not None:
        scene_frames = side.scene_frames
        if sum(scene_frames) != len(frames):
            raise ValueError(
                f"{path}: {len(frames)} frames, but the 'scene_frames' {list(scene_frames)} of "
                f"its sidecar {os.path.basename(path + SIDECAR_SUFFIX)} add up to "
                f"{sum(scene_frames)}"
            )
    elif frames_per_scene is None:
        if len(frames) % len(captions):
            raise ValueError(
                f"{path}: {len(frames)} frames do not split into the {len(captions)} equal "
                "scenes of its sidecar"
            )
        frames_per_scene = len(frames) // len(captions)
    elif len(frames) != len(captions) * frames_per_scene:
        raise ValueError(
            f"{path}: {len(frames)} frames, but its sidecar says {len(captions)} scenes x "
            f"{frames_per_scene} frames"
        )
    first_scene = 0
    if scripts_dir is not None:
        scenes = _script_scenes(scripts_dir, path)
        if len(scenes) > len(captions) or captions[len(captions) - len(scenes) :] != scenes:
            raise ValueError(
                f"{path}: its script's {len(scenes)} captions are not the last captions of "
                f"its sidecar {captions}"
            )
        first_scene = len(captions) - len(scenes)
    if scene_frames is None:
        scene_frames = (frames_per_scene,) * len(captions)
    return SampledVideo(path, frames, captions, scene_frames, first_scene)


def synthetic_script(captions: Sequence[str]) -> synthetic_shapes.Script | None:
    """The ``synthetic_shapes`` script the captions describe, or None if outside its grammar."""
    try:
        parsed = synthetic_shapes.script_from_captions(captions)
    except ValueError:
        return None
    if parsed["shape"] is None:
        return None
    scenes = [{"colour": c, "motion": m} for c, m in zip(parsed["colours"], parsed["motions"])]
    return synthetic_shapes.Script.from_scenes(scenes, shape=parsed["shape"], background=0)


def _scene_semantic(video: SampledVideo, image_embed, text_embed) -> list[float]:
    scenes = consistency.split_scenes(video.frames, video.num_scenes, _ragged_frames(video))
    return [
        consistency.video_consistency(
            scene, [caption], image_embed=image_embed, text_embed=text_embed
        )["semantic_consistency"]
        for scene, caption in zip(scenes, video.captions)
    ]


def _ragged_frames(video: SampledVideo) -> tuple[int, ...] | None:
    """The per-scene counts to split by: None for equal scenes (the reshape path)."""
    return video.scene_frames if video.ragged else None


def score_video(
    video: SampledVideo,
    *,
    cut_threshold: float = cuts.DEFAULT_THRESHOLD,
    tolerance: int = cuts.TOLERANCE,
    image_embed: consistency.ImageEmbedFn | None = None,
    text_embed: consistency.TextEmbedFn | None = None,
) -> dict[str, Any]:
    """Per-video row: cut matching, consistency, synthetic rows and one entry per scene."""
    cut = cuts.video_cut_accuracy(
        video.frames,
        video.num_scenes,
        threshold=cut_threshold,
        tolerance=tolerance,
        scene_frames=video.scene_frames,
    )
    starts = video.scene_starts
    scenes = [
        {
            "scene": i,
            "caption": c,
            "generated": i >= video.first_scene,
            "frames": video.scene_frames[i],
            "cut_found": (starts[i] in cut["hits"]) if i else None,
        }
        for i, c in enumerate(video.captions)
    ]
    row: dict[str, Any] = {
        "file": video.name,
        "num_scenes": video.num_scenes,
        "frames_per_scene": video.frames_per_scene,  # None when the scenes differ
        "scene_frames": list(video.scene_frames),
        "first_scene": video.first_scene,
        "cuts": cut,
        "consistency": None,
        "synthetic": None,
        "scenes": scenes,
    }
    if image_embed is not None and text_embed is not None:
        row["consistency"] = consistency.video_consistency(
            video.frames,
            video.captions,
            image_embed=image_embed,
            text_embed=text_embed,
            scene_frames=_ragged_frames(video),
        )
        for scene, value in zip(scenes, _scene_semantic(video, image_embed, text_embed)):
            scene["semantic"] = value
    script = synthetic_script(video.captions)
    if script is not None:
        rows = synthetic_metrics.score_video(
            video.frames,
            script,
            first_scene=video.first_scene,
            scene_frames=_ragged_frames(video),
        )
        row["synthetic"] = rows
        for r in rows:
            scenes[r["scene"]].update({k: bool(r[k]) for k in SYNTHETIC_KEYS if k in r})
    return row


def i3d_features(
    videos: Sequence[np.ndarray], extractor, *, sampling: str = "uniform", progress: bool = True
) -> np.ndarray:
    """(N, 400) I3D features of videos of any length and frame size: each is cut to 16 frames
    (``i3d.frame_indices``), then videos of one frame size go through ``extractor`` together."""
    from m2dit_jax.eval import i3d

    clips = [v[i3d.frame_indices(len(v), i3d.FRAMES, sampling)] for v in videos]
    out = np.zeros((len(clips), i3d.NUM_CLASSES), np.float32)
    groups: dict[tuple, list[int]] = {}
    for i, clip in enumerate(clips):
        groups.setdefault(clip.shape, []).append(i)
    step = extractor.batch_size
    with tqdm(total=len(clips), desc="I3D", unit="video", disable=not progress) as bar:
        for idx in groups.values():
            for start in range(0, len(idx), step):
                chunk = idx[start : start + step]
                out[chunk] = extractor(np.stack([clips[i] for i in chunk]))
                bar.update(len(chunk))
    return out


def evaluate(
    videos_dir: str,
    *,
    scripts_dir: str | None = None,
    reference_dir: str | None = None,
    image_embed: consistency.ImageEmbedFn | None = None,
    text_embed: consistency.TextEmbedFn | None = None,
    frame_size: tuple[int, int] | None = None,
    cut_threshold: float = cuts.DEFAULT_THRESHOLD,
    tolerance: int = cuts.TOLERANCE,
    fvd_devices: int | None = None,
    frame_sampling: str = "uniform",
    progress: bool = True,
) -> dict[str, Any]:
    """The report of a folder of sampled videos (see the module doc); strict JSON after
    ``report_output.to_json``. ``frame_size`` resizes every video on reading (box filter, e.g.
    back to the model's frame size); ``fvd_devices`` = how many local devices I3D is split
    over (all)."""
    if (image_embed is None) != (text_embed is None):
        raise ValueError("consistency needs both image_embed and text_embed")
    if scripts_dir is not None and not os.path.isdir(scripts_dir):
        raise ValueError(f"--scripts {scripts_dir}: not a directory")
    paths = list_videos(videos_dir)
    ref_paths = list_videos(reference_dir, "--reference") if reference_dir else []
    rows, frames = [], []
    for path in tqdm(paths, desc="videos", unit="video", disable=not progress):
        video = load_video(path, frame_size=frame_size, scripts_dir=scripts_dir)
        rows.append(
            score_video(
                video,
                cut_threshold=cut_threshold,
                tolerance=tolerance,
                image_embed=image_embed,
                text_embed=text_embed,
            )
        )
        frames.append(video.frames)
    report: dict[str, Any] = {
        "videos_dir": os.path.abspath(videos_dir),
        "num_videos": len(rows),
        "num_ragged": sum(len(set(r["scene_frames"])) > 1 for r in rows),
        "cuts": {
            **cuts.summarize_cuts([r["cuts"] for r in rows]),
            "threshold": cut_threshold,
            "tolerance": tolerance,
        },
        "fvd": None,
        "consistency": None,
        "synthetic": None,
        "videos": rows,
    }
    if ref_paths:
        refs = [media.read_video(p, size=frame_size) for p in ref_paths]
        report["fvd"] = _fvd(frames, refs, fvd_devices, frame_sampling, progress)
        report["fvd"]["reference_dir"] = os.path.abspath(reference_dir)
    scored = [r for r in rows if r["consistency"] is not None]
    if scored:
        keys = scored[0]["consistency"]
        report["consistency"] = {
            k: float(np.nanmean([r["consistency"][k] for r in scored])) for k in keys
        }
    synthetic = [r for r in rows if r["synthetic"] is not None]
    if synthetic:
        summary = synthetic_metrics.summarize([s for r in synthetic for s in r["synthetic"]])
        report["synthetic"] = {**summary, "num_videos": len(synthetic)}
    return report


def _fvd(generated, references, devices, sampling, progress) -> dict[str, Any]:
    import jax

    from m2dit_jax.eval import fvd, i3d

    if len(generated) < 2 or len(references) < 2:
        raise ValueError(
            f"FVD needs >= 2 videos on each side, got {len(generated)} generated and "
            f"{len(references)} reference videos"
        )
    if devices is None:
        extractor = i3d.default_features()
    else:
        extractor = i3d.I3DFeatures(devices=jax.local_devices()[:devices])
    real = i3d_features(references, extractor, sampling=sampling, progress=progress)
    gen = i3d_features(generated, extractor, sampling=sampling, progress=progress)
    return {**fvd.fvd_from_features(real, gen), "frame_sampling": sampling}


def load_embedder(spec: str) -> tuple[Callable, Callable]:
    """``"module:function"`` -> (image_embed, text_embed): ``function()`` returns the pair."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--embedder must be 'module:function', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--embedder {spec}: {err}") from err
    pair = factory()
    if not (isinstance(pair, tuple) and len(pair) == 2 and all(callable(f) for f in pair)):
        raise ValueError(f"--embedder {spec}: must return (image_embed, text_embed) callables")
    return pair
