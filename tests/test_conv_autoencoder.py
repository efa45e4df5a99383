"""The demo's learned pixel codec: training, files, the data pipeline, config checks, bundles."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from m2dit_jax.data import default_data_config, make_dataset, synthetic_shapes
from m2dit_jax.data.config import validate_data_config
from m2dit_jax.data.pipeline import EncodeStage
from m2dit_jax.encoders.conv_autoencoder import (
    TARGET_RMS,
    ConvAutoencoder,
    read_channels,
    train_conv_autoencoder,
)

GEOMETRY = synthetic_shapes.ShapesGeometry()  # 4 frames, 16x16 px


def _scenes(rng, n):
    return synthetic_shapes.training_scenes(rng, n, GEOMETRY, 0.1)


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    """A tiny codec (4 latent channels) trained for 200 steps, saved to a file."""
    ae, report = train_conv_autoencoder(
        _scenes, patch_t=2, patch_s=2, channels=4, hidden=16, steps=200, batch_size=16,
        num_clips=64, learning_rate=3e-3,
    )  # fmt: skip
    path = str(tmp_path_factory.mktemp("codec") / "autoencoder.npz")
    ae.save(path)
    return ae, report, path


def test_codec_learns_and_round_trips_through_its_file(codec):
    ae, report, path = codec
    assert report["steps"] == 200 and report["loss"] < 0.2  # from ~0.6 at init (noisy latents)
    video = _scenes(np.random.default_rng(5), 3)
    lat = ae.encode(video)
    assert lat.shape == (3, 2, 4, 4, 4) and lat.dtype == np.float32
    assert ae.latent_shape(4, 16, 16) == (2, 4, 4, 4) and ae.latent_channels == 4
    pixels = ae.to_pixels(lat)
    assert pixels.shape == (3, 4, 16, 16, 3)
    # the decoder draws the clip back (pixels in [-1, 1]: MSE well under the clip's variance)
    target = video.astype(np.float32) / 127.5 - 1
    assert np.mean((pixels - target) ** 2) < 0.5 * np.var(target)
    assert ae.decode(lat).dtype == np.uint8
    # latents are scaled to the target RMS on the training clips
    assert (
        abs(np.sqrt(np.mean(ae.encode(_scenes(np.random.default_rng(0), 64)) ** 2)) - TARGET_RMS)
        < 0.1
    )
    again = ConvAutoencoder.load(path)
    assert (again.patch_t, again.patch_s, again.scale) == (2, 2, ae.scale)
    np.testing.assert_array_equal(again.encode(video), lat)
    np.testing.assert_array_equal(again.to_pixels(lat), pixels)
    assert read_channels(path) == 4


def test_bad_files_and_inputs_are_named(codec, tmp_path):
    ae, _, _ = codec
    with pytest.raises(ValueError, match="does not exist: train one"):
        ConvAutoencoder.load(str(tmp_path / "missing.npz"))
    other = str(tmp_path / "other.npz")
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="is not a m2dit_conv_autoencoder file"):
        ConvAutoencoder.load(other)
    with pytest.raises(ValueError, match="fold channels"):
        ConvAutoencoder(ae.params, patch_t=1, patch_s=2)
    with pytest.raises(ValueError, match="multiples of 4"):
        ae.latent_shape(4, 18, 16)
    with pytest.raises(ValueError, match=r"latents must be \(B, F, h, w, 4\)"):
        ae.to_pixels(np.zeros((1, 2, 4, 4, 5)))
    with pytest.raises(ValueError, match="steps, batch_size and num_clips"):
        train_conv_autoencoder(_scenes, patch_t=2, patch_s=2, steps=0)


def _data_config(path: str):
    c = default_data_config()
    c.update(
        source="synthetic_shapes", num_scenes=2, frames=4, height=16, width=16,
        text_encoder="hashed", text_len=8, text_dim=32, video_encoder="conv", patch_t=2,
        patch_s=2, autoencoder=path, num_workers=0,
    )  # fmt: skip
    return c


def test_data_pipeline_encodes_each_scene_with_the_codec(codec):
    ae, _, path = codec
    batch = next(iter(make_dataset(_data_config(path), seed=0, batch_size=2)))
    assert batch["latents"].shape == (2, 4, 4, 4, 4)  # 2 scenes x 2 latent frames, 4x4 x 4
    scenes = batch["video"].reshape(4, 4, 16, 16, 3)
    expected = ae.encode(scenes).reshape(2, 4, 4, 4, 4)
    np.testing.assert_allclose(batch["latents"], expected, atol=1e-5)
    np.testing.assert_array_equal(batch["scene_frames"], [[2, 2], [2, 2]])
    # Without grain workers the latents are the jax.Array still computing (the train loop
    # places it without waiting); a grain worker returns numpy, as every other encoder does.
    assert isinstance(batch["latents"], jax.Array)
    config = _data_config(path)
    config.num_workers = 1
    raw = {k: batch[k] for k in ("video", "captions")}
    out = EncodeStage(config)({**raw, "scene_frames": batch["video_scene_frames"]})
    assert isinstance(out["latents"], np.ndarray)
    np.testing.assert_allclose(out["latents"], expected, atol=1e-5)


def test_config_checks_need_the_codec_file_and_its_channels(codec, tmp_path):
    from configs.demo import get_pretrain_config
    from m2dit_jax.train.config_checks import check_config

    _, _, path = codec
    c = _data_config("")
    with pytest.raises(ValueError, match="autoencoder.*is required"):
        validate_data_config(c)
    c = _data_config(path)
    c.video_encoder = "space_to_depth"
    with pytest.raises(ValueError, match="autoencoder.*applies to video_encoder='conv' only"):
        validate_data_config(c)
    c = _data_config(path)
    c.patch_t = 1
    with pytest.raises(ValueError, match="patch_t=2, patch_s=2; the data config has patch_t=1"):
        next(iter(make_dataset(c, seed=0, batch_size=1)))
    # the demo's stage 1 with this 4-channel codec: the model must take 4 channels
    config = get_pretrain_config({"data.autoencoder": path})
    with pytest.raises(ValueError, match=r"data.autoencoder=.* gives 4 latent channels"):
        check_config(config, num_devices=1)
    ok = get_pretrain_config(
        {"data.autoencoder": path, "model.in_channels": 4, "model.out_channels": 4}
    )
    check_config(ok, num_devices=1)
    missing = get_pretrain_config({"data.autoencoder": str(tmp_path / "none.npz")})
    with pytest.raises(ValueError, match="does not exist"):
        check_config(missing, num_devices=1)


def test_bundles_carry_the_codec(codec, tmp_path):
    from m2dit_jax.inference import bundle as bundle_lib
    from m2dit_jax.inference.pipeline import SamplingPipeline
    from m2dit_jax.inference.script import SamplerOptions
    from m2dit_jax.model import create_model, get_model_config

    ae, _, path = codec
    config = get_model_config(
        "tiny", num_layers=1, in_channels=4, out_channels=4, patch_size=1, sample_frames=2,
        sample_height=4, sample_width=4,
    )  # fmt: skip
    model = create_model(config, seed=0)
    encoders = {
        "text": {"kind": "hashed", "text_len": 8, "dim": 32, "seed": 0},
        "video": {"kind": "conv", "patch_t": 2, "patch_s": 2, "channels": 4, "file": path},
    }
    video = {"num_scenes": 2, "frames": 4, "height": 16, "width": 16}
    out = str(tmp_path / "bundle")
    bundle_lib.write_bundle(
        out, bundle_lib.flat_params(model), model_config=model.config, encoders=encoders,
        video=video,
    )  # fmt: skip
    assert os.path.isfile(os.path.join(out, bundle_lib.AUTOENCODER_FILE))
    assert bundle_lib.read_bundle_config(out)["encoders"]["video"]["file"] == "autoencoder.npz"
    loaded = bundle_lib.load_bundle(out)
    assert isinstance(loaded.autoencoder, ConvAutoencoder)
    pipe = SamplingPipeline.from_bundle(loaded)
    assert pipe.autoencoder.kind == "conv" and pipe.latent_shape == (2, 4, 4, 4)
    lat = pipe.sample_latents([["a red square moves left", "the object stays red and moves up"]],
                              SamplerOptions(name="ddim", steps=2, seed=0))  # fmt: skip
    assert lat.shape == (1, 4, 4, 4, 4)
    clip = next(iter(pipe.decode_latents(lat)))
    assert clip.shape == (8, 16, 16, 3)
    bad = {**encoders, "video": {**encoders["video"], "channels": 8}}
    with pytest.raises(ValueError, match="video encoder gives 8 latent channels"):
        bundle_lib.check_encoders(bad, model.config.to_dict())


def test_train_autoencoder_cli(tmp_path):
    import subprocess
    import sys

    out = str(tmp_path / "codec.npz")
    command = [
        sys.executable, "-m", "launch.train_autoencoder", "--config", "configs/demo_pretrain.py",
        "--out", out, "--set", "steps=2", "--set", "hidden=8", "--set", "num_clips=8",
        "--set", "batch_size=2",
    ]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert ConvAutoencoder.load(out).hidden == 8 and f"wrote {out}" in done.stdout
    again = subprocess.run(command, cwd=root, capture_output=True, text=True)
    assert again.returncode == 2 and "exists; delete it" in again.stderr


def test_codec_fidelity_benchmark(codec, tmp_path):
    import json

    from benchmarks.codec_fidelity import agreement, main, split_scenes

    scripts, scenes = split_scenes(6, held_out=True)
    assert agreement(scenes, scripts) == {  # the detectors on the renders themselves
        "shape": 1.0, "colour": 1.0, "motion": 1.0, "background": 1.0
    }  # fmt: skip
    _, _, path = codec
    out = str(tmp_path / "fidelity.json")
    report = main([path, "--num", "6", "--out", out])
    assert set(report[path]) == {"train", "held_out"}
    with open(out) as f:
        assert json.load(f) == report
    row = report[path]["held_out"]
    assert 0 <= row["decoded"]["shape"] <= 1 and row["mse"] > 0
