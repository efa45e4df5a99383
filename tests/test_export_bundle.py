"""Bundle format: round trip (f32 / bf16), validation errors, no training needed."""

import json
import os

import numpy as np
import pytest

from m2dit_jax.inference import bundle as bundle_lib
from m2dit_jax.model import create_model, get_model_config

ENCODERS = {
    "text": {"kind": "hashed", "text_len": 8, "dim": 32, "seed": 0},
    "video": {"kind": "space_to_depth", "patch_t": 1, "patch_s": 2},
}
VIDEO = {"num_scenes": 3, "frames": 2, "height": 8, "width": 8}


@pytest.fixture(scope="module")
def model():
    config = get_model_config(
        "tiny", num_layers=1, in_channels=12, out_channels=12, sample_height=4, sample_width=4
    )
    return create_model(config, seed=3)


@pytest.mark.parametrize("dtype, tol", [("float32", 0.0), ("bfloat16", 1e-2)])
def test_roundtrip(model, tmp_path, dtype, tol):
    params = bundle_lib.flat_params(model)
    out = bundle_lib.write_bundle(
        str(tmp_path / "b"),
        params,
        model_config=model.config,
        encoders=ENCODERS,
        video=VIDEO,
        weights_dtype=dtype,
        schedule={"snr_shift_scale": 3.0},
    )
    loaded = bundle_lib.load_bundle(out)
    assert loaded.meta["weights_dtype"] == dtype and loaded.meta["schedule"]["snr_shift_scale"] == 3
    again = bundle_lib.flat_params(loaded.model)
    for key, value in params.items():
        assert again[key].dtype == np.float32
        np.testing.assert_allclose(again[key], value, rtol=tol, atol=tol)
    assert loaded.text_encoder.dim == 32 and loaded.autoencoder.latent_channels == 12
    size = os.path.getsize(os.path.join(out, "model.safetensors"))
    assert size < 4 * sum(v.size for v in params.values()) * (0.6 if dtype == "bfloat16" else 1.1)


def test_bundle_errors(model, tmp_path):
    params = bundle_lib.flat_params(model)
    kwargs = dict(model_config=model.config, encoders=ENCODERS, video=VIDEO)
    with pytest.raises(ValueError, match="weights_dtype"):
        bundle_lib.write_bundle(str(tmp_path / "a"), params, weights_dtype="float16", **kwargs)
    bad_text = {**ENCODERS, "text": {**ENCODERS["text"], "dim": 16}}
    with pytest.raises(ValueError, match="does not match the model"):
        bundle_lib.write_bundle(
            str(tmp_path / "a"), params, model_config=model.config, encoders=bad_text, video=VIDEO
        )
    with pytest.raises(ValueError, match="not an inference bundle"):
        bundle_lib.load_bundle(str(tmp_path))
    # weights from another model size are refused with the offending keys named
    out = bundle_lib.write_bundle(str(tmp_path / "c"), params, **kwargs)
    cfg_path = os.path.join(out, "config.json")
    config = json.load(open(cfg_path))
    config["model"]["num_layers"] = 2
    json.dump(config, open(cfg_path, "w"))
    with pytest.raises(ValueError, match="missing"):
        bundle_lib.load_bundle(out)
    config["version"] = 99
    json.dump(config, open(cfg_path, "w"))
    with pytest.raises(ValueError, match="version 99"):
        bundle_lib.load_bundle(out)


def test_bundle_records_the_extension_mask(model, tmp_path):
    """launch.export writes the run's diffusion.cond_mask_mode into the bundle's source; the
    pipeline extends with that mask, and only a causal-condition bundle allows the cache."""
    from m2dit_jax.inference.pipeline import SamplingPipeline

    params = bundle_lib.flat_params(model)
    kwargs = dict(model_config=model.config, encoders=ENCODERS, video=VIDEO)
    causal = bundle_lib.write_bundle(
        str(tmp_path / "causal"), params, source={"cond_mask_mode": "causal_conditions"}, **kwargs
    )
    pipe = SamplingPipeline.from_pretrained(causal)
    assert pipe.extension_mask == "causal_conditions" and pipe.causal_conditions
    pipe.check_cache_conditions()
    plain = SamplingPipeline.from_pretrained(
        bundle_lib.write_bundle(str(tmp_path / "p"), params, **kwargs)
    )
    assert plain.extension_mask == "mask2dit" and plain.extension_mask_recorded is None
    with pytest.raises(ValueError, match="cond_mask_mode='causal_conditions'"):
        plain.check_cache_conditions()


def test_detail_scale_travels_with_the_bundle(model, tmp_path):
    """A bundle's space-to-depth detail_scale is restored on load (absent = the plain fold),
    so the pipeline decodes the model's latents as the training data encoded them."""
    from m2dit_jax.encoders.pixel import SpaceToDepthAutoencoder
    from m2dit_jax.inference.pipeline import SamplingPipeline

    params = bundle_lib.flat_params(model)
    video = {**ENCODERS["video"], "detail_scale": 2.5}
    out = bundle_lib.write_bundle(
        str(tmp_path / "d"), params, model_config=model.config,
        encoders={**ENCODERS, "video": video}, video=VIDEO,
    )  # fmt: skip
    loaded = bundle_lib.load_bundle(out)
    assert loaded.autoencoder.detail_scale == 2.5
    frames = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    lat = SpaceToDepthAutoencoder(1, 2, detail_scale=2.5).encode(frames[None])
    pipe = SamplingPipeline.from_bundle(loaded)
    np.testing.assert_array_equal(pipe.decode_latents(lat)[0], frames)
    plain = bundle_lib.write_bundle(
        str(tmp_path / "p"), params, model_config=model.config, encoders=ENCODERS, video=VIDEO
    )
    assert bundle_lib.load_bundle(plain).autoencoder.detail_scale == 1.0
    with pytest.raises(ValueError, match="detail_scale"):
        bundle_lib.write_bundle(
            str(tmp_path / "bad"), params, model_config=model.config,
            encoders={**ENCODERS, "video": {**video, "detail_scale": 0}}, video=VIDEO,
        )  # fmt: skip
