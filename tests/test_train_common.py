"""Shared tiny training configs for the trainer tests, and the config-check tests."""

from __future__ import annotations

import os
import tempfile

import pytest

from m2dit_jax.data import default_data_config
from m2dit_jax.model import get_model_config
from m2dit_jax.train import ConfigError, check_config, default_trainer_config

# One XLA cache for every trainer test run in this session (and the multi-host workers):
# resumed runs compile exactly what the first run compiled.
COMPILE_CACHE = os.path.join(tempfile.gettempdir(), f"m2dit_train_test_cache_{os.getuid()}")


def tiny_config(heads: int = 2, **train_overrides):
    """2 scenes x 2 frames of 8x8 px -> 24 tokens/sample; a 1-layer model with ``heads`` heads
    of 16; batch 8."""
    config = default_trainer_config()
    config.name = "test_tiny"
    config.data = default_data_config()
    config.data.update(
        dict(
            num_scenes=2,
            frames=2,
            height=8,
            width=8,
            text_encoder="hashed",
            text_len=4,
            text_dim=16,
            video_encoder="space_to_depth",
            patch_t=1,
            patch_s=2,
            num_samples=4096,
        )
    )
    config.model = get_model_config(
        "tiny",
        num_layers=1,
        num_heads=heads,
        head_dim=16,
        in_channels=12,
        out_channels=12,
        text_dim=16,
        text_len=4,
        time_embed_dim=32,
        sample_frames=2,
        sample_height=4,
        sample_width=4,
    )
    config.optim.update(dict(learning_rate=1e-3, warmup_steps=2, ema_decay=0.9))
    config.mesh.update(dict(data=1, fsdp=1, context=1, tensor=1, num_devices=1))
    config.train.update(
        dict(
            num_steps=6,
            batch_size=8,
            log_every=1,
            checkpoint_every=2,
            keep_checkpoints=5,
            progress_bar=False,
            peak_tflops_per_device=1.0,
            tensorboard=False,
            compilation_cache_dir=COMPILE_CACHE,
        )
    )
    config.train.update(train_overrides)
    config.eval.batches = 0
    return config


def _message(config, devices=8, processes=1) -> str:
    config.mesh.num_devices = 0
    with pytest.raises(ConfigError) as info:
        check_config(config, num_devices=devices, process_count=processes)
    return str(info.value)


def test_tiny_config_is_valid_on_1_and_8_devices():
    config = tiny_config()
    assert check_config(config, num_devices=1) == dict(data=1, fsdp=1, context=1, tensor=1)
    config.mesh.update(dict(fsdp=-1, num_devices=0))
    assert check_config(config, num_devices=8)["fsdp"] == 8


def test_batch_not_divisible_by_data_parallel_size_names_fields():
    config = tiny_config(batch_size=12)
    config.mesh.update(dict(data=2, fsdp=4))
    msg = _message(config)
    assert "train.batch_size=12" in msg and "mesh.data*mesh.fsdp=8" in msg


def test_grad_accumulation_must_leave_whole_microbatches_per_device():
    config = tiny_config(batch_size=16)
    config.optim.grad_accum_steps = 4
    config.mesh.update(dict(fsdp=8))
    assert "train.batch_size/optim.grad_accum_steps=4" in _message(config)


def test_heads_not_divisible_by_tensor_names_fields():
    config = tiny_config()
    config.mesh.update(dict(fsdp=2, tensor=4))
    assert "model.num_heads=2 is not divisible by mesh.tensor=4" in _message(config)


def test_context_parallelism_needs_heads_divisible_by_tensor_times_context():
    config = tiny_config()
    config.mesh.update(dict(fsdp=2, context=2, tensor=2))
    assert "model.num_heads=2 is not divisible by mesh.tensor*mesh.context=4" in _message(config)


def test_sequence_not_divisible_by_context_names_fields():
    config = tiny_config()
    config.model.text_len = config.data.text_len = 5  # 2*5 + 16 = 26 tokens
    config.mesh.update(dict(fsdp=2, context=4))
    msg = _message(config)
    assert "sequence length 26" in msg and "mesh.context=4" in msg


def test_unknown_keys_are_named():
    config = tiny_config()
    config.train.lerning_rate = 1.0
    config.model.num_layer = 3
    config.extra = 1
    msg = _message(config, devices=1)
    assert "train.lerning_rate" in msg and "model.num_layer" in msg and "extra" in msg


def test_mesh_must_match_device_count_and_batch_the_processes():
    config = tiny_config(batch_size=9)
    config.mesh.update(dict(data=3, fsdp=1))
    msg = _message(config, devices=8, processes=2)
    assert "needs 3 devices but 8 are present" in msg
    assert "train.batch_size=9 is not divisible by the process count 2" in msg


def test_data_and_model_sections_must_agree():
    config = tiny_config()
    config.data.patch_s = 1
    config.data.text_dim = 8
    msg = _message(config, devices=1)
    assert "data.text_dim=8 != model.text_dim=16" in msg
    assert "model.in_channels=12" in msg


def test_diffusion_probabilities_are_range_checked():
    config = tiny_config()
    config.diffusion.p_cond = 1.5
    config.diffusion.caption_dropout = -0.1
    msg = _message(config, devices=1)
    assert "diffusion.p_cond=1.5 must be in [0, 1]" in msg
    assert "diffusion.caption_dropout=-0.1 must be in [0, 1]" in msg
