"""The demo config (configs/shapes_tiny.py) trains: its loss goes down within a few steps."""

from __future__ import annotations

import json
import os

import numpy as np
from test_train_common import COMPILE_CACHE

from configs.shapes_tiny import get_config
from m2dit_jax.train import train_and_evaluate


def test_shapes_tiny_loss_goes_down(tmp_path):
    config = get_config()
    config.mesh.update(dict(fsdp=1, num_devices=1))
    config.train.update(
        dict(
            num_steps=30,
            log_every=10,
            checkpoint_every=30,
            progress_bar=False,
            compilation_cache_dir=COMPILE_CACHE,
        )
    )
    config.eval.update(dict(batches=1, every=20))
    result = train_and_evaluate(config, str(tmp_path))
    losses = np.asarray(result["losses"])
    assert losses.shape == (30,) and np.isfinite(losses).all()
    assert losses[-5:].mean() < 0.85 * losses[:5].mean(), losses
    # Logged metrics carry what a user watches: per-scene loss, grad norm, lr, throughput, MFU.
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    last = rows[-2]  # rows[-1] is the held-out evaluation
    for key in (
        "loss",
        "loss_per_scene/2",
        "grad_norm",
        "learning_rate",
        "video_tokens_per_s",
        "mfu",
        "step_time_s",
    ):
        assert key in last, sorted(last)
    assert "data_time_s" in last
    assert rows[-1]["eval/loss"] > 0 and os.listdir(os.path.join(tmp_path, "tb"))
    # eval.every=20 -> a held-out loss at step 20 too, on the same fixed batches and noise.
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in evals] == [20, 30], evals
