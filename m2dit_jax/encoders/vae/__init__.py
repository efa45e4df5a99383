"""The CogVideoX 3D causal VAE in Flax (port of diffusers' ``AutoencoderKLCogVideoX``)."""

from m2dit_jax.encoders.vae.config import VAEConfig, chunk_bounds
from m2dit_jax.encoders.vae.model import CogVideoXVAE, pixels_to_unit, unit_to_pixels
from m2dit_jax.encoders.vae.tiling import SpatialTiling
from m2dit_jax.encoders.vae.weights import load_diffusers_vae, load_vae_state, save_diffusers_vae

__all__ = [
    "CogVideoXVAE",
    "SpatialTiling",
    "VAEConfig",
    "chunk_bounds",
    "load_diffusers_vae",
    "load_vae_state",
    "save_diffusers_vae",
    "pixels_to_unit",
    "unit_to_pixels",
]
