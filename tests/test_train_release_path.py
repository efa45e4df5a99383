"""The release recipe's path through ``train_and_evaluate`` on a tiny model: bf16 compute over
f32 master weights, scanned layers, full remat, the ``auto`` backend, padded captions, the
``latents`` source with fp16 shards, mask 2 sampled by the objective with a random target —
and a bit-exact resume."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from test_train_common import COMPILE_CACHE

from m2dit_jax.data import default_data_config
from m2dit_jax.data import latents_format as lf
from m2dit_jax.model import get_model_config
from m2dit_jax.train import default_trainer_config, train_and_evaluate

S, F, H, W, C, T, D = 3, 2, 4, 4, 16, 6, 8


def _write_shards(directory, count=16, seed=0):
    rng = np.random.default_rng(seed)
    records = [
        lf.LatentRecord(
            id=f"clip{i}",
            captions=[f"scene {s} of clip {i}" for s in range(S)],
            latents=rng.standard_normal((S, F, H, W, C)).astype(np.float16),
            text_embeds=rng.standard_normal((S, T, D)).astype(np.float16),
            text_mask=np.ones((S, T), bool),
            meta={"vae": "test", "fps": 8},
        )
        for i in range(count)
    ]
    lf.write_latent_shard(os.path.join(directory, "train.array_record-00000-of-00001"), records)
    return os.path.join(directory, "train.array_record-*")


def release_like_config(path: str, eval_path: str, **train):
    config = default_trainer_config()
    config.name = "release_path"
    config.model = get_model_config(
        "tiny",
        num_layers=2,
        in_channels=C,
        out_channels=C,
        text_dim=D,
        text_len=T,
        text_pad_to=8,  # padded caption blocks, as 226 -> 256
        sample_frames=F,
        sample_height=H,
        sample_width=W,
        dtype="bfloat16",
        param_dtype="float32",
        remat="full",
        scan_layers=True,
        attention_backend="auto",
    )
    config.data = default_data_config()
    config.data.update(dict(source="latents", path=path, num_scenes=S, stage=2))
    config.diffusion.update(dict(p_cond=1.0, target_scene="random", snr_shift_scale=1.0))
    config.optim.update(dict(learning_rate=1e-3, warmup_steps=1, ema_decay=0.9))
    config.mesh.update(dict(data=1, fsdp=2, context=1, tensor=1, num_devices=2))
    config.train.update(
        dict(
            num_steps=4,
            batch_size=4,
            log_every=2,
            checkpoint_every=2,
            progress_bar=False,
            tensorboard=False,
            compilation_cache_dir=COMPILE_CACHE,
        )
    )
    config.train.update(train)
    config.eval.update(dict(batches=1, path=eval_path))
    return config


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    os.makedirs(root / "train")
    os.makedirs(root / "heldout")
    return _write_shards(str(root / "train")), _write_shards(str(root / "heldout"), 4, seed=1)


def test_release_path_trains_resumes_bit_exactly_and_evaluates(shards, tmp_path, caplog):
    train, heldout = shards
    with caplog.at_level(logging.INFO, logger="m2dit_jax.attention"):
        straight = train_and_evaluate(release_like_config(train, heldout), str(tmp_path / "a"))
    assert any("attention backend 'auto' -> 'xla'" in r.message for r in caplog.records)
    losses = np.asarray(straight["losses"])
    assert losses.shape == (4,) and np.isfinite(losses).all()
    assert np.isfinite(straight["eval"]["loss"]) and np.isfinite(straight["eval"]["loss_ema"])

    first = train_and_evaluate(
        release_like_config(train, heldout, stop_at_step=2), str(tmp_path / "b")
    )
    second = train_and_evaluate(release_like_config(train, heldout), str(tmp_path / "b"))
    assert second["start_step"] == 2
    assert first["losses"] + second["losses"] == straight["losses"]
    assert second["eval"] == straight["eval"]  # fixed held-out batches and noise

    with open(tmp_path / "a" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f if "loss" in json.loads(line)]
    # p_cond=1, target "random" over scenes 2..3: scene 1 is always a clean condition.
    assert all(r["num_cond"] == 4 for r in rows)
    assert all(r["loss_per_scene/0"] == 0.0 for r in rows)
    assert any(r["loss_per_scene/1"] > 0 for r in rows) and any(
        r["loss_per_scene/2"] > 0 for r in rows
    )
