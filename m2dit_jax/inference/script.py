"""Sampling scripts: the YAML a user writes to describe a multi-scene video.

    # examples/three_scenes.yaml
    negative: "blurry, low quality"   # optional default negative caption for every scene
    sampler:                          # optional; these are the defaults
      name: ddim                      # ddim | dpm
      steps: 50
      guidance_scale: 6.0
      seed: 0
      dynamic_cfg: false              # CogVideoX's use_dynamic_cfg (guidance rises over steps)
    window: 3                         # optional: scenes per model call when extending
    scenes:                           # required, at least one
      - caption: "a red square moves left"
        negative: "a green square"    # optional, overrides the default negative
      - "the object turns blue and moves up"   # a bare string is a caption
      - caption: "a close-up"
        seconds: 2                    # optional shot length: seconds (at the model's fps) ...
      - caption: "a wide shot"
        frames: 25                    # ... or pixel frames; default: the model's frames

``load_script(path)`` / ``parse_script(data)`` validate everything and raise a ValueError that
names the file and the field (missing caption, empty scene list, unknown key, bad value).
A scene's ``frames`` / ``seconds`` (not both) ask for a shot of its own length; the pipeline
turns them into latent frames with its autoencoder's frame rule (``SamplingPipeline``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import yaml

SAMPLERS = ("ddim", "dpm")
_TOP_KEYS = {"scenes", "negative", "sampler", "window"}
_SCENE_KEYS = {"caption", "negative", "frames", "seconds"}
_SAMPLER_KEYS = {"name", "steps", "guidance_scale", "seed", "dynamic_cfg"}


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    """One scene: its caption, optional negative, optional length (pixel frames or seconds;
    None = the model's default scene length)."""

    caption: str
    negative: str | None = None
    frames: int | None = None
    seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    name: str = "ddim"
    steps: int = 50
    guidance_scale: float = 6.0
    seed: int = 0
    dynamic_cfg: bool = False


@dataclasses.dataclass(frozen=True)
class SampleScript:
    """A validated script: scenes in order, sampler options, extension window (None = model's)."""

    scenes: tuple[SceneSpec, ...]
    sampler: SamplerOptions = SamplerOptions()
    window: int | None = None

    @property
    def captions(self) -> list[str]:
        return [s.caption for s in self.scenes]

    @property
    def negatives(self) -> list[str | None]:
        return [s.negative for s in self.scenes]

    @property
    def has_lengths(self) -> bool:
        """Whether any scene asks for its own length (``frames`` or ``seconds``)."""
        return any(s.frames is not None or s.seconds is not None for s in self.scenes)


def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string, got {value!r}")
    return value.strip()


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def parse_script(data: Any, *, source: str = "script") -> SampleScript:
    """A parsed YAML document (dict) -> SampleScript; ``source`` names it in error messages."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping with a 'scenes' list, got {type(data)}")
    _check_keys(data, _TOP_KEYS, source)
    if "scenes" not in data:
        raise ValueError(f"{source}: missing 'scenes' (a list of scenes with a 'caption' each)")
    raw_scenes = data["scenes"]
    if not isinstance(raw_scenes, list):
        raise ValueError(f"{source}: 'scenes' must be a list, got {type(raw_scenes).__name__}")
    if not raw_scenes:
        raise ValueError(f"{source}: 'scenes' is empty; list at least one scene with a caption")
    default_negative = None
    if data.get("negative") is not None:
        default_negative = _text(data["negative"], f"{source}: 'negative'")
    scenes = []
    for i, raw in enumerate(raw_scenes, start=1):
        where = f"{source}: scene {i}"
        if isinstance(raw, str):
            raw = {"caption": raw}
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be a caption string or a mapping, got {raw!r}")
        _check_keys(raw, _SCENE_KEYS, where)
        if raw.get("caption") is None:
            raise ValueError(f"{where} has no 'caption'")
        negative = default_negative
        if raw.get("negative") is not None:
            negative = _text(raw["negative"], f"{where} 'negative'")
        frames = seconds = None
        if raw.get("frames") is not None and raw.get("seconds") is not None:
            raise ValueError(f"{where}: give 'frames' or 'seconds', not both")
        if raw.get("frames") is not None:
            frames = _int(raw["frames"], f"{where} 'frames'", 1)
        if raw.get("seconds") is not None:
            seconds = raw["seconds"]
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
                raise ValueError(f"{where} 'seconds' must be a number > 0, got {seconds!r}")
            seconds = float(seconds)
        caption = _text(raw["caption"], f"{where} 'caption'")
        scenes.append(SceneSpec(caption, negative, frames, seconds))
    sampler_data = data.get("sampler") or {}
    if not isinstance(sampler_data, dict):
        raise ValueError(f"{source}: 'sampler' must be a mapping, got {sampler_data!r}")
    _check_keys(sampler_data, _SAMPLER_KEYS, f"{source}: sampler")
    defaults = SamplerOptions()
    name = sampler_data.get("name", defaults.name)
    if name not in SAMPLERS:
        raise ValueError(f"{source}: sampler.name must be one of {SAMPLERS}, got {name!r}")
    scale = sampler_data.get("guidance_scale", defaults.guidance_scale)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
        raise ValueError(f"{source}: sampler.guidance_scale must be a number >= 0, got {scale!r}")
    dynamic = sampler_data.get("dynamic_cfg", defaults.dynamic_cfg)
    if not isinstance(dynamic, bool):
        raise ValueError(f"{source}: sampler.dynamic_cfg must be true or false, got {dynamic!r}")
    sampler = SamplerOptions(
        name=name,
        steps=_int(sampler_data.get("steps", defaults.steps), f"{source}: sampler.steps", 1),
        guidance_scale=float(scale),
        seed=_int(sampler_data.get("seed", defaults.seed), f"{source}: sampler.seed", 0),
        dynamic_cfg=dynamic,
    )
    window = data.get("window")
    if window is not None:
        window = _int(window, f"{source}: 'window'", 2)
    return SampleScript(tuple(scenes), sampler, window)


def load_script(path: str) -> SampleScript:
    """Reads and validates a YAML script file."""
    if not os.path.isfile(path):
        raise ValueError(f"script file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from err
    return parse_script(data, source=path)


def script_to_dict(script: SampleScript) -> dict[str, Any]:
    """The inverse of ``parse_script`` (for writing example scripts)."""
    out: dict[str, Any] = {
        "sampler": dataclasses.asdict(script.sampler),
        "scenes": [
            {
                "caption": s.caption,
                **({"negative": s.negative} if s.negative else {}),
                **({"frames": s.frames} if s.frames is not None else {}),
                **({"seconds": s.seconds} if s.seconds is not None else {}),
            }
            for s in script.scenes
        ],
    }
    if script.window is not None:
        out["window"] = script.window
    return out
