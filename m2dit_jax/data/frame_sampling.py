"""Frame sampling rules of the release (pure functions of frame counts and an rng).

Stage 1: ``frames`` frames at stride ``stride`` from a random start inside the middle
``middle_fraction`` of the clip (if the span does not fit there but fits the whole clip,
the start is drawn over the whole clip). Stage 2: the largest stride in ``strides`` whose span
fits the shot, from a random start inside the shot.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


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

    def offsets(self, num_frames: int, stage: int, rng: np.random.Generator) -> np.ndarray | None:
        """(frames,) source frame indices by the stage's rule, or None when too short."""
        if stage == 1:
            return stage1_offsets(
                num_frames, self.frames, self.stage1_stride, self.middle_fraction, rng
            )
        return stage2_offsets(num_frames, self.frames, self.stage2_strides, rng)
