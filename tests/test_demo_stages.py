"""`launch.demo`'s two stages share one model: model.* overrides reach both, mismatches fail
before any training."""

import json
import os

import pytest

from configs.demo import get_config, get_pretrain_config
from launch.demo import check_stages_share_model, run_demo, stage_one_overrides


def test_model_overrides_reach_stage_one():
    stage2 = {"model.num_layers": 2, "train.num_steps": 10}
    stage1 = stage_one_overrides(stage2, {"train.num_steps": 5})
    assert stage1 == {"train.num_steps": 5, "model.num_layers": 2}
    check_stages_share_model(get_pretrain_config(stage1), get_config(stage2))
    # stage 1's own value wins, and then the stages differ
    assert stage_one_overrides(stage2, {"model.num_layers": 3})["model.num_layers"] == 3


def test_different_models_fail_before_training(tmp_path):
    workdir = str(tmp_path / "demo")
    with pytest.raises(ValueError, match=r"model\.num_layers: 3 \(stage 1\) vs 4 \(stage 2\)"):
        run_demo(workdir, pretrain_overrides={"model.num_layers": 3})
    assert not os.path.exists(workdir)  # nothing was trained or written


def test_stage_zero_reuses_its_codec_only_for_the_same_settings(tmp_path):
    from configs.demo import AUTOENCODER
    from launch.demo import train_stage_zero

    path = str(tmp_path / "autoencoder.npz")
    open(path, "wb").close()  # stands in for a trained file: it is not read when reused
    with open(tmp_path / "autoencoder.json", "w") as f:
        json.dump({"settings": dict(AUTOENCODER), "report": {}}, f)
    train_stage_zero(path, get_pretrain_config(), dict(AUTOENCODER))  # same settings: reused
    with pytest.raises(ValueError, match=r"other stage-0 settings \(steps: .*delete it"):
        train_stage_zero(path, get_pretrain_config(), {**AUTOENCODER, "steps": 7})
