"""Load a diffusers ``vae/`` folder (config.json + safetensors) into ``CogVideoXVAE``."""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from m2dit_jax.encoders.vae.config import VAEConfig
from m2dit_jax.encoders.vae.model import CogVideoXVAE
from m2dit_jax.encoders.weights_io import (
    assign_torch_state,
    load_safetensors,
    read_config,
    save_torch_state,
)


def load_vae_state(vae: CogVideoXVAE, tensors: Mapping[str, np.ndarray], param_dtype=jnp.float32):
    """Copy a diffusers ``AutoencoderKLCogVideoX`` state dict into ``vae`` (in place).

    Every tensor must map onto a parameter and vice versa; errors name the keys."""
    assign_torch_state(vae, tensors, what="CogVideoX VAE", param_dtype=param_dtype)


def load_diffusers_vae(
    path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=jnp.float32
) -> CogVideoXVAE:
    """A diffusers ``vae/`` folder (or a pipeline folder holding one) -> ``CogVideoXVAE``.

    ``dtype`` is the compute dtype (bf16 halves memory on accelerators; parity is f32).
    """
    path = os.fspath(path)
    if os.path.isdir(os.path.join(path, "vae")) and not os.path.isfile(
        os.path.join(path, "config.json")
    ):
        path = os.path.join(path, "vae")
    config = VAEConfig.from_diffusers(read_config(path))
    vae = CogVideoXVAE(config, seed=None, dtype=dtype, param_dtype=param_dtype)
    load_vae_state(vae, load_safetensors(path), param_dtype)
    return vae


def save_diffusers_vae(vae: CogVideoXVAE, path: str | os.PathLike) -> None:
    """Write ``vae`` as a diffusers ``vae/`` folder (config.json + safetensors, float32)."""
    import dataclasses

    cfg = dataclasses.asdict(vae.config)
    for key in ("sample_frames_per_chunk", "latent_frames_per_chunk"):
        cfg.pop(key)  # fixed inside diffusers, not config fields
    n = len(vae.config.block_out_channels)
    config = {
        "_class_name": "AutoencoderKLCogVideoX",
        **cfg,
        "block_out_channels": list(vae.config.block_out_channels),
        "down_block_types": ["CogVideoXDownBlock3D"] * n,
        "up_block_types": ["CogVideoXUpBlock3D"] * n,
        "act_fn": "silu",
    }
    save_torch_state(vae, path, config, weights_name="diffusion_pytorch_model.safetensors")
