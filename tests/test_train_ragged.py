"""Training on scenes of their own lengths: one compiled step per layout, real steps, the
held-out evaluation on ragged batches, and batches that mix layouts refused."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_train_common import tiny_config

from m2dit_jax.train import train_and_evaluate
from m2dit_jax.train.step import batch_scene_frames


def test_ragged_synthetic_run_compiles_one_step_per_layout(tmp_path):
    config = tiny_config(log_every=3, checkpoint_every=100)
    config.data.update(dict(ragged=True, min_frames=1, max_frames=2, frame_choices=(1, 2)))
    config.eval.update(dict(batches=1, every=6))
    result = train_and_evaluate(config, str(tmp_path))
    assert len(result["losses"]) == 6 and np.isfinite(result["losses"]).all()
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    layouts = [r["scene_layouts_compiled"] for r in rows if "scene_layouts_compiled" in r]
    # 2 choices ** 2 scenes = at most 4 layouts (the equal ones share the equal step)
    assert layouts and 1 <= layouts[-1] <= 3
    assert any(np.isfinite(r.get("eval/loss", np.nan)) for r in rows)


def test_batch_scene_frames():
    assert batch_scene_frames({}) is None
    assert batch_scene_frames({"scene_frames": np.array([[2, 2], [2, 2]])}) is None
    assert batch_scene_frames({"scene_frames": np.array([[3, 1], [3, 1]])}) == (3, 1)
    with pytest.raises(ValueError, match="bucketing"):
        batch_scene_frames({"scene_frames": np.array([[3, 1], [1, 3]])})


def test_packed_run_reports_fill_and_bounds_compiles(tmp_path):
    config = tiny_config(log_every=3, checkpoint_every=100)
    config.data.update(
        dict(ragged=True, min_frames=1, max_frames=2, frame_choices=(1, 2), pack_tokens=96,
             pack_frame_tokens=4, pack_text_tokens=4, pack_plans=2)
    )  # fmt: skip
    config.train.batch_size = 2
    result = train_and_evaluate(config, str(tmp_path))
    assert len(result["losses"]) == 6 and np.isfinite(result["losses"]).all()
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert all(0.75 < r["data/pack_fill"] <= 1.0 for r in rows)
    assert rows[-1]["scene_layouts_compiled"] <= 2
