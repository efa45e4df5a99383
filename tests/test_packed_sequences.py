"""Packed sequences: several samples in one row equal each sample run alone (model and
objective), positions restart per sample, mask 2 / timesteps per sample."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m2dit_jax.diffusion import CogVideoXSchedule
from m2dit_jax.diffusion.objective import diffusion_loss, loss_fn, sample_packed_generate_mask
from m2dit_jax.model import create_model, get_model_config

CFG = get_model_config("tiny")
T, D, C = CFG.text_len, CFG.text_dim, CFG.in_channels
# two packed samples: scenes of (2, 1) frames, then one scene of 3 frames
SAMPLES, FRAMES = (2, 1), (2, 1, 3)
forward = nnx.jit(
    lambda m, *a, **k: m(*a, **k),
    static_argnames=("num_scenes", "scene_frames", "samples", "causal_conditions"),
)


def _inputs(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k[0], (2, sum(FRAMES), 8, 8, C))
    text = jax.random.normal(k[1], (2, 3 * T, D))
    t = jnp.array([[5, 5, 800], [0, 999, 0]])  # per scene; a clean condition in row 2
    return x, text, t


@pytest.mark.parametrize("positions", ["rope", "sincos"])
def test_packed_row_equals_each_sample_alone(positions):
    model = create_model(get_model_config("tiny", positions=positions), seed=2)
    x, text, t = _inputs()
    packed = forward(model, x, text, t, num_scenes=3, scene_frames=FRAMES, samples=SAMPLES)
    first = forward(model, x[:, :3], text[:, : 2 * T], t[:, :2], num_scenes=2, scene_frames=(2, 1))
    second = forward(model, x[:, 3:], text[:, 2 * T :], t[:, 2:], num_scenes=1)
    np.testing.assert_allclose(np.asarray(packed[:, :3]), np.asarray(first), atol=2e-5)
    np.testing.assert_allclose(np.asarray(packed[:, 3:]), np.asarray(second), atol=2e-5)
    # without the packing the three scenes are one sample: a different result
    joint = forward(model, x, text, t, num_scenes=3, scene_frames=FRAMES)
    assert np.abs(np.asarray(joint[:, 3:] - second)).max() > 1e-3


def test_packed_loss_is_the_mean_of_the_samples_losses():
    schedule = CogVideoXSchedule.create()
    model = create_model(CFG, seed=1)
    x, text, _ = _inputs(3)
    noise = jax.random.normal(jax.random.key(9), x.shape)
    t = jnp.array([[100, 700], [3, 999]])  # (B, P): one t per packed sample
    gen = jnp.array([[True, True, True], [False, True, True]])
    kw = dict(schedule=schedule)
    loss, metrics = diffusion_loss(
        model, x, text, noise, t, gen, num_scenes=3, scene_frames=FRAMES, samples=SAMPLES, **kw
    )
    a, _ = diffusion_loss(
        model, x[:, :3], text[:, : 2 * T], noise[:, :3], t[:, 0], gen[:, :2], num_scenes=2,
        scene_frames=(2, 1), **kw,
    )  # fmt: skip
    b, _ = diffusion_loss(
        model, x[:, 3:], text[:, 2 * T :], noise[:, 3:], t[:, 1], gen[:, 2:], num_scenes=1, **kw
    )
    assert abs(float(loss) - (float(a) + float(b)) / 2) < 1e-5
    assert metrics["loss_per_scene"].shape == (2,) and int(metrics["num_cond"]) == 1


def test_packed_mask2_and_training_step():
    gen = sample_packed_generate_mask(jax.random.key(0), 256, (3, 1, 2), p_cond=0.5)
    gen = np.asarray(gen)
    assert gen[:, 3].all()  # a one-scene sample is never conditional
    cond_a = ~gen[:, :3].all(1)
    assert 0.35 < cond_a.mean() < 0.65
    np.testing.assert_array_equal(gen[cond_a, :3], [[False, False, True]] * cond_a.sum())
    model = create_model(CFG, seed=0)
    x, text, _ = _inputs(4)
    batch = {"latents": x, "text_embeds": text}

    def loss(m):
        return loss_fn(m, batch, jax.random.key(1), schedule=CogVideoXSchedule.create(),
                       num_scenes=3, p_cond=0.5, scene_frames=FRAMES,
                       samples=SAMPLES)[0]  # fmt: skip

    value, grads = nnx.value_and_grad(loss)(model)
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(nnx.state(grads)))
    with pytest.raises(ValueError, match="packed samples support"):
        loss_fn(model, batch, jax.random.key(1), schedule=CogVideoXSchedule.create(),
                num_scenes=3, scene_frames=FRAMES, samples=SAMPLES,
                cond_mask_mode="causal_conditions")  # fmt: skip
