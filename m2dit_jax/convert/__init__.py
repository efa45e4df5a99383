"""Weight import/export: diffusers CogVideoX transformer folders and our own params format."""

from m2dit_jax.convert.diffusers import load_diffusers_transformer, save_diffusers_transformer
from m2dit_jax.convert.mapping import config_from_diffusers, config_to_diffusers
from m2dit_jax.convert.native import load_params, save_params

__all__ = [
    "config_from_diffusers",
    "config_to_diffusers",
    "load_diffusers_transformer",
    "load_params",
    "save_diffusers_transformer",
    "save_params",
]
