"""Diffusion: the CogVideoX schedule, the Mask²DiT objective, samplers and generation."""

from m2dit_jax.diffusion.objective import (
    diffusion_loss,
    loss_fn,
    merge_scenes,
    sample_generate_mask,
    split_scenes,
)
from m2dit_jax.diffusion.schedule import CogVideoXSchedule

__all__ = [
    "CogVideoXSchedule",
    "diffusion_loss",
    "loss_fn",
    "merge_scenes",
    "sample_generate_mask",
    "split_scenes",
]
