"""The lean loop: metrics fetched once per log window, batches read ahead, bounded run-ahead."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from test_train_common import tiny_config

from m2dit_jax.train import loop, train_and_evaluate


def test_metrics_reach_the_host_once_per_log_window(tmp_path, monkeypatch):
    fetches = []
    original = loop.MetricsWindow.fetch

    def counting(self):
        fetches.append(len(self))
        return original(self)

    monkeypatch.setattr(loop.MetricsWindow, "fetch", counting)
    result = train_and_evaluate(tiny_config(log_every=3, checkpoint_every=100), str(tmp_path))
    assert fetches == [3, 3]  # 6 steps, log_every=3: two transfers, not six
    assert len(result["losses"]) == 6 and np.isfinite(result["losses"]).all()
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [3, 6]
    assert rows[0]["compile_s"] > 0 and "compile_s" not in rows[1]
    for r in rows:
        assert r["step_time_s"] > 0 and r["data_time_s"] > 0 and r["mfu"] > 0


def test_in_flight_waits_only_beyond_its_bound():
    waited = []

    class Token:
        def __init__(self, i):
            self.i = i

        def block_until_ready(self):
            waited.append(self.i)
            return self

    bound = loop.InFlight(max_in_flight=2)
    for i in range(5):
        bound.add(Token(i))
    assert waited == [0, 1, 2] and [t.i for t in bound.pending] == [3, 4]


def test_window_summary_means_states_and_skips():
    rows = [
        {"loss": np.float32(1.0), "learning_rate": np.float32(0.1), "skipped": np.bool_(False)},
        {"loss": np.float32(3.0), "learning_rate": np.float32(0.2), "skipped": np.bool_(True)},
    ]
    out = loop.MetricsWindow.summarize(rows)
    assert out["loss"] == 2.0 and np.isclose(out["learning_rate"], 0.2)
    assert out["skipped_in_window"] == 1
    window = loop.MetricsWindow()
    window.add({"loss": jnp.float32(2.0)}, 0.5)
    assert len(window) == 1 and window.fetch()[0]["loss"] == 2.0 and window.data_time == 0.5


def test_the_whole_run_is_under_the_configs_logical_rules(tmp_path):
    from m2dit_jax.data import make_dataset
    from m2dit_jax.sharding import current_rules

    seen = []

    def factory(*args, **kwargs):
        seen.append(dict(current_rules())["embed"])
        return make_dataset(*args, **kwargs)

    config = tiny_config(num_steps=2, checkpoint_every=100)
    config.mesh.update(dict(fsdp=2, num_devices=2))
    config.mesh.logical_rules = "embed=fsdp"  # the state replicated over context (old default)
    result = train_and_evaluate(config, str(tmp_path), dataset_factory=factory)
    assert seen == ["fsdp"] and len(result["losses"]) == 2
    assert dict(current_rules())["embed"] == ("fsdp", "context")  # the default, restored
