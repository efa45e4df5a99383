"""End to end on CPU: a few training steps -> export -> load the bundle -> sample -> extend."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from launch import export as export_cli
from launch import sample as sample_cli
from m2dit_jax import export as export_lib
from m2dit_jax import media


def _tiny_config():
    from configs import shapes_tiny

    config = shapes_tiny.get_config()
    config.model.num_layers = 1
    config.model.num_heads = 2
    config.model.head_dim = 16
    config.model.time_embed_dim = 32
    config.diffusion.p_cond = 0.5  # exercise mask-2 training too
    config.train.num_steps = 2
    config.train.batch_size = 8
    config.train.log_every = 1
    config.train.checkpoint_every = 2
    config.eval.batches = 0
    config.optim.warmup_steps = 1
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from m2dit_jax.train import train_and_evaluate

    workdir = str(tmp_path_factory.mktemp("run"))
    result = train_and_evaluate(_tiny_config(), workdir)
    assert result["step"] == 2
    return workdir


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bundle"))
    diffusers_dir = os.path.join(out, "diffusers")
    summary = export_cli.main(
        ["--workdir", trained, "--out", out, "--bf16", "--diffusers", diffusers_dir]
    )
    assert summary["step"] == 2 and summary["weights"] == "ema"
    return out


def test_export_bundle_contents(bundle, trained):
    with open(os.path.join(bundle, "config.json")) as f:
        config = json.load(f)
    assert config["format"] == "m2dit_bundle" and config["weights_dtype"] == "bfloat16"
    assert config["model"]["num_layers"] == 1 and config["video"]["num_scenes"] == 3
    assert config["encoders"]["text"] == {"kind": "hashed", "text_len": 8, "dim": 64, "seed": 0}
    assert config["schedule"]["snr_shift_scale"] == 1.0
    assert "launch.sample --model" in open(os.path.join(bundle, "README.md")).read()
    with open(os.path.join(bundle, "diffusers", "config.json")) as f:
        assert json.load(f)["num_layers"] == 1

    # the bundle holds the EMA of the last checkpoint (bf16-rounded)
    from m2dit_jax.inference.bundle import flat_params, load_bundle

    ema = export_lib.restore_weights(export_lib.find_checkpoint(trained)[1], "ema")
    loaded = flat_params(load_bundle(bundle).model)
    assert set(loaded) == set(ema)
    for key, value in ema.items():
        np.testing.assert_allclose(loaded[key], value, rtol=1e-2, atol=1e-2)


def _script(tmp_path, name, scenes, steps=2):
    path = tmp_path / name
    lines = [f"sampler: {{steps: {steps}, guidance_scale: 2.0, seed: 0}}", "scenes:"]
    lines += [f"  - caption: {c}" for c in scenes]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_sample_and_extend_cli(bundle, tmp_path):
    script = _script(
        tmp_path,
        "three.yaml",
        [
            "a red circle moves right",
            "the object turns blue and moves down",
            "the object turns yellow and moves left",
        ],
    )
    out = str(tmp_path / "out.mp4")
    paths = sample_cli.main(
        ["--model", bundle, "--script", script, "--out", out, "--gif", "--sheet", "--scale", "2"]
    )
    assert out in paths
    video = media.read_video(out)
    assert video.shape == (12, 32, 32, 3)
    with Image.open(str(tmp_path / "out.gif")) as im:
        assert im.n_frames == 12 and im.size == (32, 32 + 3)
    with Image.open(str(tmp_path / "out_sheet.png")) as im:
        assert im.size[0] == 3 * 4 * 32 + 2 * 6 + 2 * 6

    more = _script(tmp_path, "more.yaml", ["the object turns green and moves up"] * 2)
    longer = str(tmp_path / "longer.mp4")
    sample_cli.main(["--model", bundle, "--script", more, "--extend", out, "--out", longer])
    extended = media.read_video(longer, size=(16, 16))
    assert extended.shape == (20, 16, 16, 3)
    # the condition scenes come back as the (re-encoded) input scenes
    original = media.read_video(out, size=(16, 16))
    # (two lossy H.264 encodes of 32x32 frames apart: a few levels, not the tens between scenes)
    assert np.abs(extended[:12].astype(int) - original).mean() < 10
    assert (
        np.abs(extended[:12].astype(int) - original).mean()
        < np.abs(extended[:12].astype(int) - original[::-1]).mean()
    )
    with open(sample_cli.sidecar_path(longer)) as f:
        assert len(json.load(f)["captions"]) == 5


@pytest.mark.parametrize(
    "text, message",
    [
        ("scenes:\n  - negative: blurry\n", "scene 1 has no 'caption'"),
        ("scenes: []\n", "'scenes' is empty"),
    ],
)
def test_sample_cli_rejects_bad_scripts(tmp_path, capsys, text, message):
    script = tmp_path / "bad.yaml"
    script.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        sample_cli.main(["--model", str(tmp_path), "--script", str(script), "--out", "x.mp4"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_sample_cli_rejects_unreadable_video(bundle, tmp_path, capsys):
    script = _script(tmp_path, "one.yaml", ["the object turns green and moves up"])
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    (tmp_path / "broken.mp4.scenes.json").write_text(json.dumps({"captions": ["a", "b", "c"]}))
    with pytest.raises(SystemExit) as exit_info:
        sample_cli.main(
            ["--model", bundle, "--script", script, "--extend", str(broken), "--out", "y.mp4"]
        )
    assert exit_info.value.code == 2
    assert "cannot read video" in capsys.readouterr().err


def test_sample_cli_extend_needs_captions(bundle, tmp_path, capsys):
    script = _script(tmp_path, "one.yaml", ["the object turns green and moves up"])
    video = media.write_mp4(str(tmp_path / "v.mp4"), np.zeros((12, 16, 16, 3), np.uint8))
    with pytest.raises(SystemExit):
        sample_cli.main(
            ["--model", bundle, "--script", script, "--extend", video, "--out", "z.mp4"]
        )
    assert "--previous-script" in capsys.readouterr().err


def test_export_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2
    assert "config.json" in capsys.readouterr().err


def test_demo_writes_every_artifact(tmp_path):
    from configs import demo as demo_configs
    from launch import demo

    workdir = str(tmp_path / "demo")
    overrides = {
        "model.num_layers": 1,
        "model.num_heads": 2,
        "model.head_dim": 16,
        "model.time_embed_dim": 32,
        "train.num_steps": 2,
        "train.batch_size": 8,
        "train.checkpoint_every": 2,
        "eval.batches": 0,
        "optim.warmup_steps": 1,
    }
    report = demo.run_demo(
        workdir,
        num_eval=3,
        num_extend=2,
        num_saved=2,
        sample_steps=2,
        overrides=overrides,
        pretrain_overrides=overrides,
        autoencoder={"steps": 2, "hidden": 8, "num_clips": 8, "batch_size": 4},
    )
    # stage 0 wrote the pixel codec both stages read, and the bundle carries a copy
    codec = os.path.join(workdir, "autoencoder.npz")
    assert report["config"]["overrides"]["data.autoencoder"] == codec
    assert os.path.isfile(os.path.join(workdir, "bundle", "autoencoder.npz"))
    # stage 1 (1-scene pretraining) ran in WORKDIR/pretrain and stage 2 started from it
    assert report["pretrain"]["steps"] == 2
    assert os.listdir(os.path.join(workdir, "pretrain", "checkpoints")) == ["2"]
    assert report["config"]["overrides"]["init_from"] == os.path.join(workdir, "pretrain")
    samples = os.path.join(workdir, "samples")
    for name, frames in (("script_00", 12), ("script_01", 12), ("extended_00", 20)):
        assert media.read_video(os.path.join(samples, name + ".mp4")).shape[0] == frames
        with Image.open(os.path.join(samples, name + ".gif")) as im:
            assert im.n_frames == frames
    with Image.open(os.path.join(workdir, "contact_sheet.png")) as im:
        assert im.size[0] == 5 * 4 * 64 + 4 * 6 + 2 * 6  # widest row: the 5-scene extension
    with open(os.path.join(workdir, "eval.json")) as f:
        saved = json.load(f)
    assert saved["metrics"]["generated"]["num_scenes_scored"] == 9
    assert saved["metrics"]["extended"]["num_scenes_scored"] == 4
    assert saved["metrics"]["reference"]["colour_ok"] == 1.0
    assert report["train"]["steps"] == 2
    assert len(saved["per_extended_video"]) == 2
    with pytest.raises(ValueError, match="unknown config key"):
        demo_configs.get_config({"train.no_such_key": 1})
    with pytest.raises(ValueError, match="unknown config key"):
        demo_configs.get_config({"no_such_section.steps": 1})
    with pytest.raises(ValueError, match="init_from is set for stage 2"):
        demo.run_demo(str(tmp_path / "other"), overrides={"init_from": workdir})
    with pytest.raises(ValueError, match="needs a model trained with caption dropout"):
        demo.run_demo(
            str(tmp_path / "cfg"), guidance_scale=2.0, overrides={"diffusion.caption_dropout": 0.0}
        )
    assert report["sampling"]["guidance_scale"] == demo_configs.DEMO_GUIDANCE_SCALE
