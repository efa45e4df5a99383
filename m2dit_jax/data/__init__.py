"""Data pipelines: multi-scene clips + captions from synthetic, video, TFDS and latents sources."""

from m2dit_jax.data.bad_input import SKIP_REASONS, BadSample
from m2dit_jax.data.config import default_data_config, validate_data_config
from m2dit_jax.data.latents_format import (
    LATENTS_FORMAT_VERSION,
    LatentFormatError,
    LatentRecord,
    LatentShardSource,
    decode_record,
    encode_record,
    read_latent_shard,
    write_latent_shard,
)
from m2dit_jax.data.pipeline import make_dataset

__all__ = [
    "SKIP_REASONS",
    "BadSample",
    "default_data_config",
    "make_dataset",
    "validate_data_config",
    "LATENTS_FORMAT_VERSION",
    "LatentFormatError",
    "LatentRecord",
    "LatentShardSource",
    "decode_record",
    "encode_record",
    "read_latent_shard",
    "write_latent_shard",
]
