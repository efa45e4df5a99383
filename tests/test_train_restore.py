"""What a restart finds in its workdir: every restore outcome is either right or loud."""

from __future__ import annotations

import os

import pytest
from test_train_common import tiny_config

from m2dit_jax.train import train_and_evaluate
from m2dit_jax.train.checkpointing import CheckpointMismatch, NoRestorableCheckpoint


def _listing(workdir):
    return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """2 steps with checkpoints 2 (and nothing else) in a fresh workdir."""
    workdir = str(tmp_path_factory.mktemp("trained"))
    train_and_evaluate(tiny_config(num_steps=2), workdir)
    return workdir


def test_a_changed_architecture_names_the_differing_paths_and_moves_nothing(trained):
    before = _listing(trained)
    config = tiny_config(num_steps=4)
    config.model.num_layers = 2
    with pytest.raises(CheckpointMismatch, match="does not match") as info:
        train_and_evaluate(config, trained)
    message = str(info.value)
    assert "params/blocks/1/" in message and "not in the checkpoint" in message
    assert _listing(trained) == before
    assert not os.path.exists(os.path.join(trained, "checkpoints_unrestorable"))


def test_a_changed_shape_names_checkpoint_and_model_shapes(trained):
    config = tiny_config(num_steps=4)
    config.model.time_embed_dim = 64
    with pytest.raises(CheckpointMismatch) as info:
        train_and_evaluate(config, trained)
    assert "checkpoint (" in str(info.value) and "vs model (" in str(info.value)


def test_a_changed_dtype_is_a_mismatch(trained):
    config = tiny_config(num_steps=4)
    config.model.param_dtype = "bfloat16"
    with pytest.raises(CheckpointMismatch, match="checkpoint float32 vs model bfloat16"):
        train_and_evaluate(config, trained)


def test_no_readable_checkpoint_stops_and_moves_nothing(tmp_path):
    workdir = str(tmp_path)
    train_and_evaluate(tiny_config(num_steps=2), workdir)
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "2", "state")):
        for name in files:
            os.remove(os.path.join(root, name))  # every array file and the metadata gone
    with pytest.raises(NoRestorableCheckpoint, match="none restores") as info:
        train_and_evaluate(tiny_config(num_steps=4), workdir)
    assert "step 2:" in str(info.value) and "move" in str(info.value)
    assert _listing(workdir) == ["2"]
    assert not os.path.exists(os.path.join(workdir, "checkpoints_unrestorable"))


def test_the_cli_exits_4_on_a_mismatch_and_says_why(trained, tmp_path):
    import subprocess
    import sys

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    config_file = tmp_path / "tiny_cfg.py"
    config_file.write_text(
        "import sys\n"
        f"sys.path.insert(0, {tests_dir!r})\n"
        "from test_train_common import tiny_config\n\n\n"
        "def get_config():\n"
        "    return tiny_config(num_steps=4)\n"
    )
    root = os.path.dirname(tests_dir)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=root)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config", str(config_file), "--workdir", trained,
         "--config.model.num_layers=2"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "does not match" in proc.stderr and "params/blocks/1/" in proc.stderr


def test_a_url_workdir_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="URL workdirs are not supported.*mount"):
        train_and_evaluate(tiny_config(num_steps=1), "gs://bucket/runs/x")


def test_an_error_that_is_not_about_the_files_propagates_and_moves_nothing(trained, monkeypatch):
    from m2dit_jax.train.checkpointing import Checkpointer

    def broken(self, step, target, data_iterator):
        raise TypeError("a bug, not a broken checkpoint")

    monkeypatch.setattr(Checkpointer, "restore", broken)
    before = _listing(trained)
    with pytest.raises(TypeError, match="a bug"):
        train_and_evaluate(tiny_config(num_steps=4), trained)
    assert _listing(trained) == before
    assert not os.path.exists(os.path.join(trained, "checkpoints_unrestorable"))
