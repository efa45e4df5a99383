"""Data pipelines: multi-scene clips + captions from synthetic, video, TFDS and latents sources."""

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

__all__ = [
    "LATENTS_FORMAT_VERSION",
    "LatentFormatError",
    "LatentRecord",
    "LatentShardSource",
    "decode_record",
    "encode_record",
    "read_latent_shard",
    "write_latent_shard",
]
