"""Every shipped config loads, documents its command and passes the pre-compile checks."""

from __future__ import annotations

import importlib

import pytest

from m2dit_jax.train import ConfigError, check_config, model_layout

CONFIGS = [
    "shapes_tiny",
    "mask2dit_2b_pretrain",
    "mask2dit_2b_sft",
    "mask2dit_5b_pretrain",
    "mask2dit_5b_sft",
]


def _load(name):
    module = importlib.import_module(f"configs.{name}")
    return module, module.get_config()


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_documents_its_command(name):
    module, config = _load(name)
    assert f"python -m launch.train --config configs/{name}.py" in module.__doc__
    assert config.name == name


def test_shapes_tiny_is_the_demo_pilot():
    _, c = _load("shapes_tiny")
    assert check_config(c, num_devices=1)["fsdp"] == 1
    layout = model_layout(c)
    assert (layout.num_scenes, layout.seq_len) == (3, 120)
    assert c.model.num_heads * c.model.head_dim == 128 and c.model.num_layers == 4
    assert c.train.batch_size == 32 and c.optim.learning_rate == 1e-3
    assert c.model.dtype == "float32" and c.model.in_channels == 24


def test_demo_stages_share_one_model(tmp_path):
    import jax

    from configs import demo, demo_pretrain
    from m2dit_jax.encoders.conv_autoencoder import ConvAutoencoder, init_params

    assert "python -m launch.train --config configs/demo_pretrain.py" in demo_pretrain.__doc__
    assert "--config.init_from=runs/demo/pretrain" in demo.__doc__
    assert "python -m launch.train_autoencoder --config configs/demo_pretrain.py" in demo.__doc__
    stage1, stage2 = demo_pretrain.get_config(), demo.get_config()
    # both stages read the learned pixel codec (stage 0): 16 channels on a 4x4 grid, patch 1
    channels = demo.AUTOENCODER["channels"]
    for c in (stage1, stage2):
        assert c.data.video_encoder == "conv" and c.data.autoencoder == ""
        assert (c.model.in_channels, c.model.patch_size, c.model.sample_height) == (channels, 1, 4)
    codec = str(tmp_path / "autoencoder.npz")
    params = init_params(jax.random.key(0), 24, channels, 8)
    ConvAutoencoder(params, patch_t=2, patch_s=2).save(codec)
    stage1.data.autoencoder = stage2.data.autoencoder = codec
    assert stage1.to_dict()["model"] == stage2.to_dict()["model"]  # stage 2 loads stage 1
    assert (model_layout(stage1).seq_len, model_layout(stage2).seq_len) == (40, 120)
    assert (stage1.diffusion.p_cond, stage2.diffusion.p_cond) == (0.0, 0.25)
    # the demo samples with CFG, so stage 2 learns the empty caption (and the shifted schedule
    # it samples with); stage 1 learns the motion word sooner without either
    assert demo.DEMO_GUIDANCE_SCALE > 1
    assert (stage2.diffusion.caption_dropout, stage2.diffusion.snr_shift_scale) == (0.1, 3.0)
    assert (stage1.diffusion.caption_dropout, stage1.diffusion.snr_shift_scale) == (0.0, 1.0)
    for c in (stage1, stage2):
        assert check_config(c, num_devices=1)["fsdp"] == 1


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("mask2dit")])
def test_release_configs_follow_the_recipe(name):
    _, c = _load(name)
    o = c.optim
    assert (o.learning_rate, o.warmup_steps, o.weight_decay, o.eps) == (1e-5, 100, 0.03, 1e-10)
    assert (o.b1, o.b2, o.schedule) == (0.9, 0.999, "constant")
    assert c.model.dtype == "bfloat16" and c.model.remat == "full"
    assert c.train.batch_size == 8
    sft = name.endswith("sft")
    assert c.diffusion.p_cond == (0.5 if sft else 0.0) and c.data.stage == (2 if sft else 1)
    assert model_layout(c).seq_len == 3 * 226 + 3 * 13 * 30 * 45  # 53,328
    is_5b = "5b" in name
    assert c.model.num_layers == (42 if is_5b else 30)
    assert c.diffusion.snr_shift_scale == (1.0 if is_5b else 3.0)
    c.data.path = "/data/latents"
    assert check_config(c, num_devices=8)["fsdp"] == 8  # the release's 8 GPUs
    with pytest.raises(ConfigError, match="mesh.data\\*mesh.fsdp=64"):
        check_config(c, num_devices=64, process_count=8)  # batch 8 cannot fill 64 DP ranks
    # More chips than samples: shard the 53k-token sequence (Ulysses needs heads % context == 0).
    context, devices = (8, 64) if is_5b else (2, 16)
    c.mesh.update(dict(fsdp=-1, context=context))
    assert check_config(c, num_devices=devices, process_count=devices // 8)["fsdp"] == 8
    c.mesh.update(dict(fsdp=2, context=4))
    if not is_5b:
        with pytest.raises(ConfigError, match="mesh.tensor\\*mesh.context=4"):
            check_config(c, num_devices=8)
    c.mesh.update(dict(fsdp=2, context=1, tensor=-1))
    with pytest.raises(ConfigError, match="mesh.tensor=32"):
        check_config(c, num_devices=64)
