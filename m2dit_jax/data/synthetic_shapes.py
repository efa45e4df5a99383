"""``synthetic_shapes``: procedurally generated multi-scene clips with scored attributes.

Each sample is S scenes of ONE object over ONE background colour:

- per video (constant across scenes): the object's ``shape`` and the ``background`` colour;
- per scene: the object's ``colour`` and its ``motion`` direction (left/right/up/down).

Captions state each scene's colour and motion. The shape is stated only in scene 1's caption
("a red square moves left"); later captions say "the object turns blue and moves up" (or
"stays blue" when the colour does not change), so keeping the shape is the model's job. The
background is stated **nowhere**: it is pure cross-scene consistency (scene 1 may pick any
background; later scenes must keep it). Captions carry no scene number, so without mask 1 a
scene cannot tell its caption from the others' (the mask ablation relies on this).

Geometry (defaults for a 16x16, 4-frame scene): the object is ``object_size`` = half the short
side (8 px) and moves ``step`` = (short side - object) // (frames - 1) px per frame (2 px),
always fully inside the frame; its start position is random. Colours and backgrounds are far
apart in RGB so that the analytic detectors in ``m2dit_jax.eval.shapes_detectors`` read them.

Everything is a pure function of (seed, index): no files, deterministic, vectorised numpy.
A fraction of all scripts (colour/motion/shape/background combinations) is held out of
training (``holdout_fraction``) so that the demo can sample scripts the model never saw.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Vocabulary: names and RGB values. Object colours are saturated; backgrounds are neutral.
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
COLOUR_RGB = np.array([[230, 30, 30], [30, 200, 50], [40, 70, 240], [240, 220, 30]], np.uint8)
BACKGROUNDS: tuple[str, ...] = ("black", "grey", "white")
BACKGROUND_RGB = np.array([[15, 15, 15], [128, 128, 128], [245, 245, 245]], np.uint8)
SHAPES: tuple[str, ...] = ("square", "circle", "plus")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# (dy, dx) per frame, in units of `step`.
MOTION_VECTORS = np.array([[0, -1], [0, 1], [-1, 0], [1, 0]], np.int64)


def shape_template(shape: str, size: int) -> np.ndarray:
    """(size, size) bool mask of a shape: a full square, a disk, or a plus (arms size//4 wide)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if size < 4:
        raise ValueError(f"object size must be >= 4 px, got {size}")
    if shape == "square":
        return np.ones((size, size), bool)
    yy, xx = np.mgrid[:size, :size] + 0.5 - size / 2
    if shape == "circle":
        return yy**2 + xx**2 <= (size / 2) ** 2
    arm = max(2, size // 4)
    lo = (size - arm) // 2
    band = (np.arange(size) >= lo) & (np.arange(size) < lo + arm)
    return band[:, None] | band[None, :]


@dataclasses.dataclass(frozen=True)
class ShapesGeometry:
    """Frame size and motion of one scene: (frames, height, width), object size, px/frame."""

    frames: int = 4
    height: int = 16
    width: int = 16
    object_size: int | None = None
    step: int | None = None

    def __post_init__(self):
        for name in ("frames", "height", "width"):
            if getattr(self, name) <= 0:
                raise ValueError(f"synthetic_shapes {name} must be positive")
        short = min(self.height, self.width)
        size = self.object_size if self.object_size is not None else short // 2
        if not 4 <= size < short:
            raise ValueError(f"object_size={size} must be in [4, {short}) for a {short}px frame")
        step = self.step if self.step is not None else (short - size) // max(self.frames - 1, 1)
        if step < 1 or step * (self.frames - 1) > short - size:
            raise ValueError(
                f"motion step={step} px/frame does not fit: {self.frames} frames of a {size}px "
                f"object in a {short}px frame; use bigger frames or fewer frames"
            )
        object.__setattr__(self, "object_size", size)
        object.__setattr__(self, "step", step)


def _index_of(vocab: Sequence[str], value: Any, field: str) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if not 0 <= value < len(vocab):
            raise ValueError(f"{field} index {value} out of range [0, {len(vocab)})")
        return int(value)
    if value not in vocab:
        raise ValueError(f"unknown {field} {value!r}; expected one of {tuple(vocab)}")
    return vocab.index(value)


@dataclasses.dataclass(frozen=True)
class Script:
    """A multi-scene script as vocabulary indices: shape, background, per-scene colour/motion."""

    shape: int
    background: int
    colours: tuple[int, ...]
    motions: tuple[int, ...]

    @classmethod
    def from_scenes(
        cls, scenes: Sequence[Mapping[str, Any]], shape: Any = None, background: Any = None
    ) -> Script:
        """Per-scene dicts ``{"colour", "motion"}`` (names or indices); the shape and background
        come from the arguments or from the first scene's ``shape``/``background`` keys."""
        if not scenes:
            raise ValueError("a script needs at least one scene")
        shape = scenes[0].get("shape") if shape is None else shape
        background = scenes[0].get("background", 0) if background is None else background
        if shape is None:
            raise ValueError("a script needs a shape (argument or scene 1's 'shape' key)")
        for i, s in enumerate(scenes):
            for key in ("colour", "motion"):
                if key not in s:
                    raise ValueError(f"scene {i} of the script has no {key!r}")
        return cls(
            shape=_index_of(SHAPES, shape, "shape"),
            background=_index_of(BACKGROUNDS, background, "background"),
            colours=tuple(_index_of(COLOURS, s["colour"], "colour") for s in scenes),
            motions=tuple(_index_of(MOTIONS, s["motion"], "motion") for s in scenes),
        )

    @property
    def num_scenes(self) -> int:
        return len(self.colours)

    def key(self) -> bytes:
        return bytes([self.shape, self.background, *self.colours, *self.motions])

    def captions(self) -> list[str]:
        """One caption per scene; only scene 1 names the shape; no caption names the background."""
        out = [
            f"a {COLOURS[self.colours[0]]} {SHAPES[self.shape]} moves {MOTIONS[self.motions[0]]}"
        ]
        for i in range(1, self.num_scenes):
            verb = "stays" if self.colours[i] == self.colours[i - 1] else "turns"
            out.append(
                f"the object {verb} {COLOURS[self.colours[i]]} and moves {MOTIONS[self.motions[i]]}"
            )
        return out


def is_held_out(script: Script, fraction: float) -> bool:
    """Deterministic split of all scripts: True for ~``fraction`` of them (by a stable hash)."""
    return (zlib.crc32(script.key()) % 10_000) < round(fraction * 10_000)


def random_script(rng: np.random.Generator, num_scenes: int) -> Script:
    return Script(
        shape=int(rng.integers(len(SHAPES))),
        background=int(rng.integers(len(BACKGROUNDS))),
        colours=tuple(int(c) for c in rng.integers(len(COLOURS), size=num_scenes)),
        motions=tuple(int(m) for m in rng.integers(len(MOTIONS), size=num_scenes)),
    )


def sample_script(
    rng: np.random.Generator, num_scenes: int, holdout_fraction: float, held_out: bool
) -> Script:
    """A random script from the training split (``held_out=False``) or the held-out split."""
    if held_out and holdout_fraction <= 0:
        raise ValueError("held-out scripts need holdout_fraction > 0")
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    for _ in range(10_000):
        script = random_script(rng, num_scenes)
        if holdout_fraction <= 0 or is_held_out(script, holdout_fraction) == held_out:
            return script
    raise ValueError(f"no {'held-out' if held_out else 'training'} script found; check fraction")


def sample_held_out_scripts(
    count: int, num_scenes: int = 3, *, holdout_fraction: float = 0.1, seed: int = 0
) -> list[Script]:
    """``count`` scripts never seen in training with the same ``holdout_fraction``."""
    rng = np.random.default_rng([seed, 0x5EED])
    return [sample_script(rng, num_scenes, holdout_fraction, True) for _ in range(count)]


def render_scene(
    shape: int,
    background: int,
    colour: int,
    motion: int,
    geometry: ShapesGeometry,
    rng: np.random.Generator,
) -> np.ndarray:
    """One scene -> (F, H, W, 3) uint8; the start position is drawn from ``rng``."""
    g = geometry
    size, step = g.object_size, g.step
    travel = step * (g.frames - 1)
    direction = MOTION_VECTORS[motion]
    start = np.empty(2, np.int64)
    for axis, extent in enumerate((g.height, g.width)):
        room = extent - size
        if direction[axis] > 0:
            start[axis] = rng.integers(0, room - travel + 1)
        elif direction[axis] < 0:
            start[axis] = rng.integers(travel, room + 1)
        else:
            start[axis] = rng.integers(0, room + 1)
    tops_lefts = start[None] + np.arange(g.frames)[:, None] * step * direction[None]  # (F, 2)
    template = shape_template(SHAPES[shape], size)
    ry = np.arange(g.height)[None, :] - tops_lefts[:, :1]  # (F, H)
    rx = np.arange(g.width)[None, :] - tops_lefts[:, 1:]  # (F, W)
    in_y, in_x = (ry >= 0) & (ry < size), (rx >= 0) & (rx < size)
    inside = template[np.clip(ry, 0, size - 1)[:, :, None], np.clip(rx, 0, size - 1)[:, None, :]]
    inside &= in_y[:, :, None] & in_x[:, None, :]  # (F, H, W)
    return np.where(inside[..., None], COLOUR_RGB[colour], BACKGROUND_RGB[background]).astype(
        np.uint8
    )


def render_script(
    script: Script,
    geometry: ShapesGeometry,
    seed: int | Sequence[int] = 0,
    scene_frames: Sequence[int] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Script -> (captions (S,), reference clip (S*F, H, W, 3) uint8), scenes concatenated.

    ``scene_frames`` (ragged scenes): scene i keeps the first ``scene_frames[i]`` frames of
    its ``geometry.frames``-frame rendering (geometry.frames = the longest allowed scene), so
    start position, motion step and content do not depend on the lengths: a shorter scene is
    a prefix of the longer one. The clip is then (sum_i F_i, H, W, 3).
    """
    rng = np.random.default_rng(seed)
    scenes = [
        render_scene(script.shape, script.background, c, m, geometry, rng)
        for c, m in zip(script.colours, script.motions)
    ]
    if scene_frames is not None:
        if len(scene_frames) != len(scenes) or not all(
            0 < int(f) <= geometry.frames for f in scene_frames
        ):
            raise ValueError(
                f"scene_frames={tuple(scene_frames)} must be {len(scenes)} counts in "
                f"[1, {geometry.frames}] (the geometry's frames)"
            )
        scenes = [scene[: int(f)] for scene, f in zip(scenes, scene_frames)]
    return script.captions(), np.concatenate(scenes, axis=0)


def single_scenes(
    rng: np.random.Generator,
    count: int,
    geometry: ShapesGeometry,
    holdout_fraction: float,
    held_out: bool = False,
) -> tuple[list[Script], np.ndarray]:
    """``count`` 1-scene scripts of one split and their renders (count, F, H, W, 3) uint8."""
    scripts = [sample_script(rng, 1, holdout_fraction, held_out) for _ in range(count)]
    scenes = [
        render_scene(s.shape, s.background, s.colours[0], s.motions[0], geometry, rng)
        for s in scripts
    ]
    return scripts, np.stack(scenes)


def training_scenes(
    rng: np.random.Generator, count: int, geometry: ShapesGeometry, holdout_fraction: float
) -> np.ndarray:
    """``count`` single scenes of training-split scripts -> (count, F, H, W, 3) uint8 (e.g. to
    train an autoencoder on the same distribution as the diffusion model, never on held-out
    scripts)."""
    return single_scenes(rng, count, geometry, holdout_fraction)[1]


def script_from_captions(captions: Sequence[str]) -> dict[str, Any]:
    """Parse captions made by ``Script.captions`` back to names: shape (scene 1) and
    per-scene colour/motion. Raises ValueError for a caption outside the grammar."""
    colours, motions, shape = [], [], None
    for i, caption in enumerate(captions):
        words = caption.lower().split()
        found_colour = [w for w in words if w in COLOURS]
        found_motion = [w for w in words if w in MOTIONS]
        if len(found_colour) != 1 or len(found_motion) != 1:
            raise ValueError(f"caption {i} ({caption!r}) does not name one colour and one motion")
        colours.append(found_colour[0])
        motions.append(found_motion[0])
        if i == 0:
            found_shape = [w for w in words if w in SHAPES]
            shape = found_shape[0] if found_shape else None
    return {"shape": shape, "colours": colours, "motions": motions}


class SyntheticShapesSource:
    """grain random-access source: ``source[i]`` -> one multi-scene sample dict.

    Keys: ``video`` (S*F, H, W, 3) uint8, ``scene_frames`` (S,) int32, ``captions`` (S,)
    object, ``id`` int64,
    ``attrs_colour`` (S,) int32, ``attrs_motion`` (S,) int32, ``attrs_shape`` int32,
    ``attrs_background`` int32. Sample i is a pure function of (seed, i). ``held_out`` draws
    only the held-out scripts (the evaluation split) instead of only the training ones.
    """

    def __init__(
        self,
        num_samples: int,
        num_scenes: int,
        geometry: ShapesGeometry,
        *,
        seed: int = 0,
        holdout_fraction: float = 0.1,
        held_out: bool = False,
    ):
        if num_samples <= 0 or num_scenes <= 0:
            raise ValueError(
                f"num_samples and num_scenes must be positive: {num_samples}, {num_scenes}"
            )
        if not 0 <= holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
        self.num_samples, self.num_scenes, self.geometry = num_samples, num_scenes, geometry
        self.seed, self.holdout_fraction, self.held_out = seed, holdout_fraction, held_out
        if held_out and holdout_fraction <= 0:
            raise ValueError("the held-out split needs holdout_fraction > 0")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index)

    def sample(self, index: int, scene_frames: Sequence[int] | None = None) -> dict[str, Any]:
        """Sample ``index``; ``scene_frames`` = per-scene frame counts (ragged, each at most
        ``geometry.frames``; see ``render_script``). The script is the same whatever the
        counts. Adds ``scene_frames`` (S,) int32."""
        index = int(index)
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range [0, {self.num_samples})")
        rng = np.random.default_rng([self.seed, index])
        script = sample_script(rng, self.num_scenes, self.holdout_fraction, self.held_out)
        captions, video = render_script(
            script, self.geometry, seed=[self.seed, index, 1], scene_frames=scene_frames
        )
        if scene_frames is None:
            scene_frames = (self.geometry.frames,) * self.num_scenes
        return {
            "video": video,
            "scene_frames": np.asarray(scene_frames, np.int32),
            "captions": np.array(captions, dtype=object),
            "id": np.int64(index),
            "attrs_colour": np.array(script.colours, np.int32),
            "attrs_motion": np.array(script.motions, np.int32),
            "attrs_shape": np.int32(script.shape),
            "attrs_background": np.int32(script.background),
        }

    def __repr__(self) -> str:
        return (
            f"SyntheticShapesSource(num_samples={self.num_samples}, scenes={self.num_scenes}, "
            f"{self.geometry})"
        )
