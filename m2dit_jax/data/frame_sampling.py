"""Frame sampling rules of the release (pure functions of frame counts and an rng).

Stage 1: ``frames`` frames at stride ``stride`` from a random start inside the middle
``middle_fraction`` of the clip (if the span does not fit there but fits the whole clip,
the start is drawn over the whole clip). Stage 2: the largest stride in ``strides`` whose span
fits the shot, from a random start inside the shot.

Ragged scenes (``ragged=True``): each scene has its own pixel frame count, an *allowed* count
in ``[min_frames, max_frames]`` that obeys the encoder's frame rule ("multiple": a multiple of
``patch_t`` with space_to_depth, any count otherwise; "4k+1": 1, 5, 9, .. for a CogVideoX
VAE). A count is always rounded *down* to the rule (a clip cannot show frames it lacks).
``FrameRule`` holds these rules; ``fit_token_budget`` shortens a sample's longest scenes until
its total pixel frames fit ``token_budget``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from m2dit_jax.data.config import FOLD_ENCODERS


def span(frames: int, stride: int) -> int:
    """Source frames covered by ``frames`` samples at ``stride``."""
    return (frames - 1) * stride + 1


def stage1_offsets(
    num_frames: int, frames: int, stride: int, middle_fraction: float, rng: np.random.Generator
) -> np.ndarray | None:
    """(frames,) source frame indices, or None when the clip is too short."""
    need = span(frames, stride)
    margin = (1.0 - middle_fraction) / 2
    lo = math.floor(num_frames * margin + 1e-9)
    hi = math.ceil(num_frames * (1.0 - margin) - 1e-9)
    if hi - lo < need:
        lo, hi = 0, num_frames
    if hi - lo < need:
        return None
    start = int(rng.integers(lo, hi - need + 1))
    return start + stride * np.arange(frames)


def stage2_stride(num_frames: int, frames: int, strides: Sequence[int]) -> int | None:
    """Largest stride in ``strides`` whose span fits ``num_frames``; None if none fits."""
    fitting = [s for s in strides if span(frames, s) <= num_frames]
    return max(fitting) if fitting else None


def stage2_offsets(
    num_frames: int, frames: int, strides: Sequence[int], rng: np.random.Generator
) -> np.ndarray | None:
    """(frames,) source frame indices of a shot, or None when even stride 1 does not fit."""
    stride = stage2_stride(num_frames, frames, strides)
    if stride is None:
        return None
    start = int(rng.integers(0, num_frames - span(frames, stride) + 1))
    return start + stride * np.arange(frames)


@dataclasses.dataclass(frozen=True)
class ClipSampling:
    """Which frames a pixel source decodes per scene, and at what size (from the data config)."""

    frames: int
    height: int
    width: int
    stage1_stride: int
    stage2_strides: tuple[int, ...]
    middle_fraction: float

    @classmethod
    def from_config(cls, config: Any) -> ClipSampling:
        return cls(
            frames=int(config.frames),
            height=int(config.height),
            width=int(config.width),
            stage1_stride=int(config.stage1_stride),
            stage2_strides=tuple(int(s) for s in config.stage2_strides),
            middle_fraction=float(config.middle_fraction),
        )

    def offsets(
        self, num_frames: int, stage: int, rng: np.random.Generator, frames: int | None = None
    ) -> np.ndarray | None:
        """(frames,) source frame indices by the stage's rule, or None when too short.

        ``frames`` overrides the configured count (a ragged scene's own length)."""
        frames = self.frames if frames is None else int(frames)
        if stage == 1:
            return stage1_offsets(num_frames, frames, self.stage1_stride, self.middle_fraction, rng)
        return stage2_offsets(num_frames, frames, self.stage2_strides, rng)


FRAME_RULES = ("multiple", "4k+1")


@dataclasses.dataclass(frozen=True)
class FrameRule:
    """Which per-scene pixel frame counts a ragged config allows.

    rule: "multiple" (counts are multiples of ``multiple``) or "4k+1" (counts 4k+1: a
      CogVideoX VAE turns 4k+1 pixel frames into k+1 latent frames).
    multiple: ``patch_t`` for the space_to_depth encoder, else 1 (ignored by "4k+1").
    min_frames, max_frames: the allowed range (both obey the rule; checked by the config).
    token_budget: the most pixel frames a sample's scenes may have together (0 = no limit).
    choices: when non-empty, the only counts allowed (each obeying the rule, inside the
      range): a coarse set bounds the number of distinct layouts, i.e. compiled steps
      (len(choices) ** S at most).
    """

    rule: str
    multiple: int
    min_frames: int
    max_frames: int
    token_budget: int = 0
    choices: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config: Any) -> FrameRule:
        s2d = config.video_encoder in FOLD_ENCODERS
        return cls(
            rule=str(config.frame_rule),
            multiple=int(config.patch_t) if s2d else 1,
            min_frames=int(config.min_frames),
            max_frames=int(config.max_frames),
            token_budget=int(config.token_budget),
            choices=tuple(sorted(int(f) for f in config.get("frame_choices", ()) or ())),
        )

    def obeys(self, frames: int) -> bool:
        if frames <= 0:
            return False
        if self.choices and self.min_frames <= frames <= self.max_frames:
            return frames in self.choices
        if self.rule == "4k+1":
            return (frames - 1) % 4 == 0
        return frames % self.multiple == 0

    def round_down(self, frames: int) -> int:
        """The largest count <= ``frames`` that obeys the rule (0 when there is none)."""
        if frames <= 0:
            return 0
        if self.choices and frames >= self.choices[0]:
            return max(c for c in self.choices if c <= frames)
        if self.rule == "4k+1":
            return (frames - 1) // 4 * 4 + 1
        return frames // self.multiple * self.multiple

    @property
    def allowed(self) -> tuple[int, ...]:
        """Every allowed per-scene count, ascending."""
        return tuple(f for f in range(self.min_frames, self.max_frames + 1) if self.obeys(f))

    def clamp(self, frames: int) -> int | None:
        """A clip of ``frames`` available frames -> the count it gets: capped at max_frames,
        rounded down to the rule; None when that is below min_frames (too short)."""
        n = self.round_down(min(int(frames), self.max_frames))
        return n if n >= self.min_frames else None

    def latent_frames(self, frames: int, patch_t: int = 1) -> int:
        """Latent frames of a scene of ``frames`` pixel frames ("4k+1": k+1; else / patch_t)."""
        if self.rule == "4k+1":
            return (frames - 1) // 4 + 1
        return frames // patch_t

    def fit_budget(self, scene_frames: Sequence[int]) -> tuple[int, ...]:
        """Shorten the longest scenes (first one on ties) to the next allowed count until the
        sample's total pixel frames fit ``token_budget`` (0 = unchanged)."""
        frames = [int(f) for f in scene_frames]
        if self.token_budget <= 0:
            return tuple(frames)
        while sum(frames) > self.token_budget:
            i = int(np.argmax(frames))
            shorter = self.round_down(frames[i] - 1)
            if shorter < self.min_frames:
                raise ValueError(
                    f"token_budget={self.token_budget} cannot fit {len(frames)} scenes of at "
                    f"least min_frames={self.min_frames}"
                )
            frames[i] = shorter
        return tuple(frames)

    def draw(self, rng: np.random.Generator, num_scenes: int) -> tuple[int, ...]:
        """S per-scene counts drawn uniformly from ``allowed``, then fit to the budget."""
        allowed = np.asarray(self.allowed)
        return self.fit_budget(int(f) for f in rng.choice(allowed, size=num_scenes))

    def for_duration(self, seconds: float, fps: float) -> int | None:
        """A shot of ``seconds`` sampled at ``fps`` -> its frame count (None: too short)."""
        return self.clamp(int(math.floor(seconds * fps + 1e-6)))
