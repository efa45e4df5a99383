"""Configuration of the CogVideoX VAE (the fields of a diffusers ``vae/config.json``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

_BLOCK_DOWN = "CogVideoXDownBlock3D"
_BLOCK_UP = "CogVideoXUpBlock3D"


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture + latent scaling of ``AutoencoderKLCogVideoX``.

    Defaults are the released CogVideoX-2B VAE (CogVideoX-5B differs only in
    ``scaling_factor`` = 0.7).
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    latent_channels: int = 16
    layers_per_block: int = 3
    norm_eps: float = 1e-6
    norm_num_groups: int = 32
    temporal_compression_ratio: int = 4
    sample_height: int = 480
    sample_width: int = 720
    scaling_factor: float = 1.15258426
    shift_factor: float | None = None
    # diffusers' chunk sizes (fixed there; the VAE was trained with them).
    sample_frames_per_chunk: int = 8
    latent_frames_per_chunk: int = 2

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        if not self.block_out_channels:
            raise ValueError("VAEConfig.block_out_channels must not be empty")
        for c in (*self.block_out_channels, self.block_out_channels[-1]):
            if c % self.norm_num_groups:
                raise ValueError(
                    f"VAEConfig: channels {c} not divisible by norm_num_groups "
                    f"{self.norm_num_groups}"
                )
        level = math.log2(self.temporal_compression_ratio)
        if level != int(level) or level >= len(self.block_out_channels):
            raise ValueError(
                f"VAEConfig.temporal_compression_ratio={self.temporal_compression_ratio} must be "
                f"a power of 2 below 2**{len(self.block_out_channels)}"
            )

    @property
    def temporal_levels(self) -> int:
        """How many down/up blocks also halve/double time."""
        return int(math.log2(self.temporal_compression_ratio))

    @property
    def spatial_ratio(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def latent_frames(self, frames: int) -> int:
        """Latent frames of an F-frame video under diffusers' chunking (49 -> 13, 17 -> 5)."""
        total = 0
        for start, stop in chunk_bounds(frames, self.sample_frames_per_chunk):
            n = stop - start
            for _ in range(self.temporal_levels):
                n = 1 + (n - 1) // 2 if n % 2 else n // 2
            total += n
        return total

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> VAEConfig:
        """From a diffusers ``vae/config.json`` dict (unknown keys are ignored)."""
        for key, want in (("down_block_types", _BLOCK_DOWN), ("up_block_types", _BLOCK_UP)):
            types = config.get(key)
            if types is not None and any(t != want for t in types):
                raise ValueError(f"VAE config {key} must all be {want!r}, got {types}")
        if config.get("use_quant_conv") or config.get("use_post_quant_conv"):
            raise ValueError(
                "VAE config with use_quant_conv/use_post_quant_conv is not CogVideoX's"
            )
        if config.get("act_fn", "silu") not in ("silu", "swish"):
            raise ValueError(f"VAE config act_fn must be silu, got {config['act_fn']!r}")
        n_down = len(config.get("down_block_types") or cls.block_out_channels)
        blocks = tuple(config.get("block_out_channels", cls.block_out_channels))
        if n_down != len(blocks):
            raise ValueError(
                f"VAE config has {n_down} block types but {len(blocks)} block_out_channels"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in fields}
        if "temporal_compression_ratio" in kwargs:
            kwargs["temporal_compression_ratio"] = int(kwargs["temporal_compression_ratio"])
        return cls(**kwargs)


def chunk_bounds(frames: int, per_chunk: int) -> list[tuple[int, int]]:
    """diffusers' temporal chunks: the first holds ``per_chunk + frames % per_chunk`` frames
    (9 of 49 for encode), the rest ``per_chunk`` each; fewer frames than that is one chunk."""
    if frames < 1:
        raise ValueError(f"need at least one frame, got {frames}")
    num = max(frames // per_chunk, 1)
    rem = frames % per_chunk
    bounds = []
    for i in range(num):
        start = per_chunk * i + (0 if i == 0 else rem)
        bounds.append((start, min(per_chunk * (i + 1) + rem, frames)))
    return bounds
