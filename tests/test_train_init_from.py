"""config.init_from: training starts from a diffusers CogVideoX transformer folder."""

from __future__ import annotations

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
