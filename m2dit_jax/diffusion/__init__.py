"""Diffusion: the CogVideoX schedule, the Mask²DiT objective, samplers and generation."""

from m2dit_jax.diffusion.generation import (
    extend,
    extend_chain,
    generate,
    guidance_per_timestep,
    initial_noise,
    sample_from_noise,
)
from m2dit_jax.diffusion.objective import (
    diffusion_loss,
    eval_loss_fn,
    loss_fn,
    merge_scenes,
    sample_generate_mask,
    split_scenes,
)
from m2dit_jax.diffusion.samplers import SAMPLERS, ddim_sample, dpm_sample
from m2dit_jax.diffusion.schedule import CogVideoXSchedule

__all__ = [
    "SAMPLERS",
    "ddim_sample",
    "dpm_sample",
    "extend",
    "extend_chain",
    "generate",
    "guidance_per_timestep",
    "initial_noise",
    "sample_from_noise",
    "CogVideoXSchedule",
    "diffusion_loss",
    "eval_loss_fn",
    "loss_fn",
    "merge_scenes",
    "sample_generate_mask",
    "split_scenes",
]
