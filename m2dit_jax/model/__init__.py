"""The Mask²DiT transformer (CogVideoX-compatible) in Flax NNX."""

from m2dit_jax.model.config import get_model_config, validate_config
from m2dit_jax.model.create import create_model, param_shardings
from m2dit_jax.model.transformer import Mask2DiT

__all__ = ["Mask2DiT", "create_model", "get_model_config", "param_shardings", "validate_config"]
