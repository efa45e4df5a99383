"""Training timestep densities and loss weights (diffusion.timestep_sampling / loss_weighting)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2dit_jax.diffusion import CogVideoXSchedule, diffusion_loss, loss_fn
from m2dit_jax.diffusion.objective import loss_weights, sample_timesteps
from m2dit_jax.rng import stream

SCHED = CogVideoXSchedule.create(snr_shift_scale=1.0)
S, F = 2, 2


def fake_model(latents, text_embeds, timesteps, *, num_scenes, **kwargs):
    text = jnp.mean(text_embeds, axis=(1, 2)).reshape(-1, 1, 1, 1, 1)
    return 0.5 * jnp.tanh(latents) + text


def batch(b=4):
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "latents": jax.random.normal(k1, (b, S * F, 4, 4, 3)),
        "text_embeds": jax.random.normal(k2, (b, S * 3, 8)),
    }


def test_uniform_is_the_release_draw_and_logit_normal_has_its_quantiles():
    key = jax.random.key(3)
    np.testing.assert_array_equal(
        sample_timesteps(key, (64,), 1000),
        jax.random.randint(key, (64,), 0, 1000, dtype=jnp.int32),
    )
    t = np.asarray(sample_timesteps(key, (200_000,), 1000, sampling="logit_normal"))
    assert t.min() >= 0 and t.max() <= 999
    # t/T = sigmoid(z): median 0.5, 10% quantile sigmoid(-1.2816) = 0.2173
    assert abs(np.median(t) - 499.5) < 3
    assert abs(np.quantile(t, 0.1) - 217.3) < 3
    shifted = np.asarray(
        sample_timesteps(key, (200_000,), 1000, sampling="logit_normal", logit_mean=1.0)
    )
    assert abs(np.median(shifted) - 1000 * jax.nn.sigmoid(1.0)) < 3


def test_min_snr_weights_match_the_formula():
    t = jnp.array([0, 100, 400, 800, 999])
    abar = SCHED.alphas_cumprod_f64()[np.asarray(t)]
    snr = abar / (1 - abar)
    want = np.minimum(snr, 5.0) / (snr + 1)
    np.testing.assert_allclose(loss_weights(SCHED, t, "min_snr", 5.0), want, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(loss_weights(SCHED, t), np.ones(5))


def test_weighted_loss_is_the_weighted_mean_of_per_sample_losses():
    bt = batch()
    noise = jax.random.normal(jax.random.key(1), bt["latents"].shape)
    t = jnp.array([10, 300, 600, 900])
    gen = jnp.ones((4, S), bool)
    args = (fake_model, bt["latents"], bt["text_embeds"], noise, t, gen)
    kw = dict(schedule=SCHED, num_scenes=S)
    per = [
        float(diffusion_loss(fake_model, bt["latents"][i : i + 1], bt["text_embeds"][i : i + 1],
                             noise[i : i + 1], t[i : i + 1], gen[i : i + 1], **kw)[0])
        for i in range(4)
    ]  # fmt: skip
    w = np.asarray(loss_weights(SCHED, t, "min_snr", 2.0))
    loss, _ = diffusion_loss(*args, loss_weighting="min_snr", min_snr_gamma=2.0, **kw)
    np.testing.assert_allclose(float(loss), np.mean(w * np.asarray(per)), rtol=1e-5)
    # ragged scenes take the same weights
    frames = (3, 1)
    loss_r, _ = diffusion_loss(
        *args, scene_frames=frames, loss_weighting="min_snr", min_snr_gamma=2.0, **kw
    )
    per_r = [
        float(diffusion_loss(fake_model, bt["latents"][i : i + 1], bt["text_embeds"][i : i + 1],
                             noise[i : i + 1], t[i : i + 1], gen[i : i + 1], scene_frames=frames,
                             **kw)[0])
        for i in range(4)
    ]  # fmt: skip
    np.testing.assert_allclose(float(loss_r), np.mean(w * np.asarray(per_r)), rtol=1e-5)


def test_loss_fn_draws_its_timesteps_from_the_chosen_density():
    bt, rng = batch(), jax.random.key(5)
    _, m = loss_fn(
        fake_model, bt, rng, schedule=SCHED, num_scenes=S, timestep_sampling="logit_normal"
    )
    want = sample_timesteps(stream(rng, "timesteps"), (4,), 1000, sampling="logit_normal")
    np.testing.assert_allclose(float(m["t_mean"]), float(jnp.mean(want.astype(jnp.float32))))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(timestep_sampling="beta"), "timestep_sampling"),
        (dict(timestep_sampling="logit_normal", logit_std=0.0), "logit_std"),
        (dict(loss_weighting="p2"), "loss_weighting"),
        (dict(loss_weighting="min_snr", min_snr_gamma=-1.0), "min_snr_gamma"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loss_fn(fake_model, batch(), jax.random.key(0), schedule=SCHED, num_scenes=S, **kwargs)


def test_config_checks_name_the_bad_key():
    from configs.demo import get_config
    from m2dit_jax.train.config_checks import check_config

    with pytest.raises(ValueError, match="diffusion.loss_weighting"):
        check_config(get_config({"diffusion.loss_weighting": "p2"}), num_devices=1)
