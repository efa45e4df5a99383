"""A tiny random-weight pixel-space bundle (hashed captions, space-to-depth video) for tests
that sample through ``SamplingPipeline`` without training."""

from __future__ import annotations

from m2dit_jax.inference import bundle as bundle_lib
from m2dit_jax.model import create_model, get_model_config

ENCODERS = {
    "text": {"kind": "hashed", "text_len": 8, "dim": 32, "seed": 0},
    "video": {"kind": "space_to_depth", "patch_t": 1, "patch_s": 2},
}


def write_tiny_bundle(path: str, video: dict, *, seed: int = 0) -> str:
    """A 1-layer model on 8x8 px frames (latents 4x4x12) exported to ``path``; ``video`` is the
    bundle's video spec ({"num_scenes", "frames", "height": 8, "width": 8})."""
    config = get_model_config(
        "tiny", num_layers=1, in_channels=12, out_channels=12, sample_height=4, sample_width=4
    )
    model = create_model(config, seed=seed)
    return bundle_lib.write_bundle(
        path, bundle_lib.flat_params(model), model_config=model.config, encoders=ENCODERS,
        video=video,
    )  # fmt: skip
