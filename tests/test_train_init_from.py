"""config.init_from: training starts from a diffusers CogVideoX transformer folder."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from test_train_common import tiny_config

from m2dit_jax.convert import save_diffusers_transformer
from m2dit_jax.data import make_dataset
from m2dit_jax.model import create_model
from m2dit_jax.rng import stream
from m2dit_jax.train import train_and_evaluate
from m2dit_jax.train.program import make_loss


def test_training_starts_from_the_diffusers_weights(tmp_path):
    config = tiny_config(num_steps=1)
    pretrained = create_model(config.model, seed=7)
    folder = str(tmp_path / "transformer")
    save_diffusers_transformer(pretrained, folder)
    config.init_from = folder
    result = train_and_evaluate(config, str(tmp_path / "run"))

    # The first step's loss is the loss of the saved weights on the first batch and step key.
    batch = next(make_dataset(config.data, seed=0, batch_size=8))
    batch = {k: batch[k] for k in ("latents", "text_embeds")}
    rng = jax.random.fold_in(stream(0, "train"), 0)
    expected, _ = jax.jit(lambda b: make_loss(config)(pretrained, b, rng))(batch)
    np.testing.assert_allclose(result["losses"][0], float(expected), rtol=1e-5)
    random_init = train_and_evaluate(tiny_config(num_steps=1), str(tmp_path / "random"))
    assert abs(random_init["losses"][0] - result["losses"][0]) > 1e-4


def test_init_from_is_applied_only_without_a_checkpoint_to_resume(tmp_path, monkeypatch):
    from m2dit_jax import convert

    config = tiny_config(num_steps=4, stop_at_step=2)
    folder = str(tmp_path / "transformer")
    save_diffusers_transformer(create_model(config.model, seed=7), folder)
    config.init_from = folder
    first = train_and_evaluate(config, str(tmp_path / "run"))
    assert first["step"] == 2

    def refuse(*args, **kwargs):
        raise AssertionError("init_from was loaded although a checkpoint restores")

    monkeypatch.setattr(convert, "load_diffusers_transformer", refuse)
    config.train.stop_at_step = 0
    second = train_and_evaluate(config, str(tmp_path / "run"))
    assert second["start_step"] == 2 and second["step"] == 4


def test_init_from_must_match_the_model_config(tmp_path):
    config = tiny_config(num_steps=1)
    other = tiny_config().model
    other.num_layers = 2
    save_diffusers_transformer(create_model(other, seed=0), str(tmp_path / "t"))
    config.init_from = str(tmp_path / "t")
    with pytest.raises(ValueError, match="model.num_layers=1 but .* has 2"):
        train_and_evaluate(config, str(tmp_path / "run"))


def _first_loss_of(params, config, rng_step=0):
    """The loss the first step of ``config`` computes for ``params`` (same batch and key)."""
    from m2dit_jax.model import Mask2DiT

    model = create_model(config.model, seed=0)
    from flax import nnx

    graphdef, state = nnx.split(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    model = nnx.merge(graphdef, state)
    assert isinstance(model, Mask2DiT)
    batch = next(make_dataset(config.data, seed=int(config.seed), batch_size=8))
    batch = {k: batch[k] for k in ("latents", "text_embeds")}
    rng = jax.random.fold_in(stream(int(config.seed), "train"), rng_step)
    value, _ = jax.jit(lambda b: make_loss(config)(model, b, rng))(batch)
    return float(value)


@pytest.mark.parametrize("which", ["ema", "params"])
def test_stage_two_starts_from_the_stage_one_workdir(tmp_path, which):
    import orbax.checkpoint as ocp

    stage1 = str(tmp_path / "stage1")
    train_and_evaluate(tiny_config(num_steps=2), stage1)
    saved = ocp.StandardCheckpointer().restore(os.path.join(stage1, "checkpoints", "2", "state"))

    config = tiny_config(num_steps=1)
    config.diffusion.p_cond = 0.5  # stage 2 trains scene extension too
    config.init_from = stage1
    config.init_from_weights = which
    result = train_and_evaluate(config, str(tmp_path / "stage2"))
    assert result["start_step"] == 0  # a fresh run: step, optimizer and data start anew
    expected = _first_loss_of(saved[which], config)
    np.testing.assert_allclose(result["losses"][0], expected, rtol=1e-5)


def test_init_from_step_selectors_and_params_folder(tmp_path):
    from m2dit_jax.convert import save_params
    from m2dit_jax.train.init_from import resolve_init_from

    run = str(tmp_path / "run")
    train_and_evaluate(tiny_config(num_steps=4), run)  # checkpoints 2 and 4
    assert resolve_init_from(run).step == 4
    assert resolve_init_from(run + "@2").step == 2
    assert resolve_init_from(os.path.join(run, "checkpoints", "2")).kind == "checkpoint"
    with pytest.raises(ValueError, match="no step 3"):
        resolve_init_from(run + "@3")
    with pytest.raises(ValueError, match="is none of"):
        resolve_init_from(str(tmp_path))
    pipeline = tmp_path / "pipeline"
    save_diffusers_transformer(
        create_model(tiny_config().model, seed=3), str(pipeline / "transformer")
    )
    (pipeline / "model_index.json").write_text('{"_class_name": "CogVideoXPipeline"}')
    assert resolve_init_from(str(pipeline)) == resolve_init_from(str(pipeline / "transformer"))
    assert resolve_init_from(str(pipeline)).kind == "diffusers"

    config = tiny_config(num_steps=1)
    model = create_model(config.model, seed=11)
    save_params(model, str(tmp_path / "params"))
    assert resolve_init_from(str(tmp_path / "params")).kind == "params"
    config.init_from = str(tmp_path / "params")
    result = train_and_evaluate(config, str(tmp_path / "from_params"))
    from flax import nnx

    expected = _first_loss_of(nnx.to_pure_dict(nnx.state(model, nnx.Param)), config)
    np.testing.assert_allclose(result["losses"][0], expected, rtol=1e-5)


def test_init_from_a_workdir_of_another_architecture_names_the_differences(tmp_path):
    from m2dit_jax.train.checkpointing import CheckpointMismatch

    run = str(tmp_path / "run")
    train_and_evaluate(tiny_config(num_steps=2), run)
    config = tiny_config(num_steps=1)
    config.model.time_embed_dim = 64
    config.init_from = run
    with pytest.raises(CheckpointMismatch, match="vs model"):
        train_and_evaluate(config, str(tmp_path / "other"))
