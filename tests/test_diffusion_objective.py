"""Mask²DiT objective: hand-computed loss, mask-2 conditioning, gradients and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2dit_jax.diffusion import (
    CogVideoXSchedule,
    diffusion_loss,
    loss_fn,
    sample_generate_mask,
    split_scenes,
)
from m2dit_jax.rng import stream

S, F, H, W, C, T, D = 3, 2, 4, 4, 4, 5, 8
SCHED = CogVideoXSchedule.create(snr_shift_scale=3.0)


def fake_model(latents, text_embeds, timesteps, *, num_scenes):
    """A fixed, nonlinear, per-scene-timestep-aware stand-in for the denoiser."""
    b = latents.shape[0]
    t = jnp.asarray(timesteps, jnp.float32).reshape(b, num_scenes, 1, 1, 1, 1)
    text = jnp.mean(text_embeds, axis=(1, 2)).reshape(b, 1, 1, 1, 1, 1)
    x = split_scenes(latents, num_scenes)
    out = 0.7 * jnp.tanh(x) + text + 1e-3 * t
    return out.reshape(latents.shape)


def make_batch(seed=0, b=2):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "latents": jax.random.normal(k1, (b, S * F, H, W, C)),
        "text_embeds": jax.random.normal(k2, (b, S * T, D)),
    }


def test_unconditional_loss_equals_hand_computation():
    batch, rng = make_batch(), jax.random.key(7)
    loss, metrics = jax.jit(lambda b, r: loss_fn(fake_model, b, r, schedule=SCHED, num_scenes=S))(
        batch, rng
    )
    # Same draws as loss_fn: its named "timesteps" and "noise" streams.
    k_t, k_noise = stream(rng, "timesteps"), stream(rng, "noise")
    t = np.asarray(jax.random.randint(k_t, (2,), 0, 1000, dtype=jnp.int32))
    eps = np.asarray(jax.random.normal(k_noise, batch["latents"].shape), np.float64)
    x0 = np.asarray(batch["latents"], np.float64)
    abar = SCHED.alphas_cumprod_f64()[t].reshape(2, 1, 1, 1, 1)
    xt = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    v = np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0
    text = np.asarray(batch["text_embeds"], np.float64).mean(axis=(1, 2)).reshape(2, 1, 1, 1, 1)
    pred = 0.7 * np.tanh(xt) + text + 1e-3 * t.reshape(2, 1, 1, 1, 1)
    sq = ((pred - v) ** 2).reshape(2, S, -1).mean(-1)
    np.testing.assert_allclose(float(loss), sq.mean(), rtol=2e-5)
    np.testing.assert_allclose(metrics["loss_per_scene"], sq.mean(0), rtol=2e-5)
    assert int(metrics["num_cond"]) == 0 and float(metrics["loss"]) == float(loss)


def test_conditional_samples_are_clean_at_t0_and_get_no_noise_gradient():
    batch = make_batch(1)
    seen = {}

    def recording_model(latents, text_embeds, timesteps, *, num_scenes):
        seen["latents"], seen["timesteps"] = latents, timesteps
        return fake_model(latents, text_embeds, timesteps, num_scenes=num_scenes)

    gen = sample_generate_mask(jax.random.key(0), 2, S, p_cond=1.0)
    np.testing.assert_array_equal(gen, [[False, False, True]] * 2)
    noise = jax.random.normal(jax.random.key(3), batch["latents"].shape)
    t = jnp.array([999, 400])

    def loss_of_noise(n):
        return diffusion_loss(
            recording_model,
            batch["latents"],
            batch["text_embeds"],
            n,
            t,
            gen,
            schedule=SCHED,
            num_scenes=S,
        )

    (loss, metrics), grad = jax.value_and_grad(loss_of_noise, has_aux=True)(noise)
    grad = split_scenes(grad, S)
    assert np.all(np.asarray(grad[:, :2]) == 0.0)  # exactly zero on condition scenes
    assert np.all(np.abs(np.asarray(grad[:, 2])).sum(axis=(1, 2, 3, 4)) > 0)
    assert int(metrics["num_cond"]) == 2
    assert float(metrics["loss_per_scene"][0]) == 0.0 == float(metrics["loss_per_scene"][1])

    # Conditions enter the model bit-identical to the clean latents, with t = 0.
    loss_of_noise(noise)
    x_in = split_scenes(seen["latents"], S)
    clean = split_scenes(batch["latents"], S)
    np.testing.assert_array_equal(np.asarray(x_in[:, :2]), np.asarray(clean[:, :2]))
    assert not np.allclose(np.asarray(x_in[:, 2]), np.asarray(clean[:, 2]))
    np.testing.assert_array_equal(np.asarray(seen["timesteps"]), [[0, 0, 999], [0, 0, 400]])


def test_p_cond_one_through_loss_fn_scores_only_the_last_scene():
    batch = make_batch(2)
    loss, metrics = loss_fn(
        fake_model, batch, jax.random.key(4), schedule=SCHED, num_scenes=S, p_cond=1.0
    )
    assert int(metrics["num_cond"]) == 2
    assert float(metrics["loss_per_scene"][2]) > 0
    np.testing.assert_allclose(float(loss), float(metrics["loss_per_scene"][2]), rtol=1e-6)


def test_batch_cond_mask_is_used_as_given():
    batch = dict(make_batch(3), cond=jnp.array([[True, True, True], [True, False, True]]))
    _, metrics = loss_fn(fake_model, batch, jax.random.key(5), schedule=SCHED, num_scenes=S)
    assert int(metrics["num_cond"]) == 1
    _, per_scene_only_first = loss_fn(
        fake_model,
        dict(batch, cond=jnp.array([[True, False, False], [True, False, False]])),
        jax.random.key(5),
        schedule=SCHED,
        num_scenes=S,
    )
    assert float(per_scene_only_first["loss_per_scene"][1]) == 0.0


def test_random_target_scene_is_uniform_over_scenes_two_to_s():
    gen = np.asarray(
        sample_generate_mask(jax.random.key(0), 4000, 4, p_cond=0.5, target_scene="random")
    )
    cond = ~gen.all(axis=1)
    assert 0.45 < cond.mean() < 0.55
    assert np.all(gen[cond].sum(axis=1) == 1)  # exactly one target per conditional sample
    targets = gen[cond].argmax(axis=1)
    counts = np.bincount(targets, minlength=4)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] / cond.sum() - 1 / 3) < 0.05)


def test_loss_fn_is_differentiable_under_jit_and_deterministic():
    batch = make_batch(4)

    def model_with_scale(scale):
        return lambda x, txt, t, *, num_scenes: scale * fake_model(x, txt, t, num_scenes=num_scenes)

    def f(scale, rng):
        return loss_fn(
            model_with_scale(scale), batch, rng, schedule=SCHED, num_scenes=S, p_cond=0.5
        )[0]

    g1 = jax.jit(jax.grad(f))(1.0, jax.random.key(9))
    g2 = jax.jit(jax.grad(f))(1.0, jax.random.key(9))
    assert np.isfinite(float(g1)) and float(g1) == float(g2)


def test_caption_dropout_zeroes_whole_scene_captions_independently():
    batch, rng = make_batch(5, b=64), jax.random.key(11)
    seen = {}

    def spy(latents, text_embeds, timesteps, *, num_scenes):
        seen["text"] = text_embeds
        return fake_model(latents, text_embeds, timesteps, num_scenes=num_scenes)

    kw = dict(schedule=SCHED, num_scenes=S)
    base, _ = loss_fn(fake_model, batch, rng, **kw)
    same, _ = loss_fn(fake_model, batch, rng, caption_dropout=0.0, **kw)
    assert float(base) == float(same)
    loss_fn(spy, batch, rng, caption_dropout=0.5, **kw)
    text = np.asarray(seen["text"]).reshape(64, S, T, D)
    orig = np.asarray(batch["text_embeds"]).reshape(64, S, T, D)
    dropped = np.all(text == 0, axis=(2, 3))
    kept = np.all(text == orig, axis=(2, 3))
    assert np.all(dropped ^ kept)  # each scene's caption is kept whole or zeroed whole
    assert 0.3 < dropped.mean() < 0.7 and dropped.any(axis=1).sum() < 64
    # t and noise draws do not depend on dropout: all-dropped equals zero captions.
    all_dropped, _ = loss_fn(fake_model, batch, rng, caption_dropout=1.0, **kw)
    zero_text = dict(batch, text_embeds=jnp.zeros_like(batch["text_embeds"]))
    np.testing.assert_allclose(
        float(all_dropped), float(loss_fn(fake_model, zero_text, rng, **kw)[0]), rtol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(caption_dropout=-0.1), "caption_dropout"),
        (dict(target_scene="first"), "target_scene"),
        (dict(p_cond=1.5), "p_cond"),
        (dict(num_scenes=4), "num_scenes"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = dict(schedule=SCHED, num_scenes=S, p_cond=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        loss_fn(fake_model, make_batch(), jax.random.key(0), **args)


def test_bad_batch_raises():
    with pytest.raises(ValueError, match="text_embeds"):
        loss_fn(
            fake_model,
            {"latents": jnp.zeros((1, 6, 4, 4, 4))},
            jax.random.key(0),
            schedule=SCHED,
            num_scenes=S,
        )
    with pytest.raises(ValueError, match="no generated scene"):
        loss_fn(
            fake_model,
            dict(make_batch(), cond=jnp.zeros((2, S), bool)),
            jax.random.key(0),
            schedule=SCHED,
            num_scenes=S,
        )
    with pytest.raises(ValueError, match="num_scenes >= 2"):
        sample_generate_mask(jax.random.key(0), 2, 1, p_cond=0.5)


def test_tiny_model_loss_is_hand_computable_and_trains_with_nnx_grad():
    from flax import nnx

    from m2dit_jax.model import create_model, get_model_config

    cfg = get_model_config("tiny")
    model = create_model(cfg, seed=0)
    k1, k2 = jax.random.split(jax.random.key(0))
    batch = {
        "latents": jax.random.normal(k1, (2, 2 * 2, 8, 8, cfg.in_channels)),
        "text_embeds": jax.random.normal(k2, (2, 2 * cfg.text_len, cfg.text_dim)),
    }
    rng = jax.random.key(1)

    @nnx.jit
    def step(m, b, r):
        grad_fn = nnx.value_and_grad(
            lambda mm, bb, rr: loss_fn(mm, bb, rr, schedule=SCHED, num_scenes=2), has_aux=True
        )
        return grad_fn(m, b, r)

    (loss, metrics), grads = step(model, batch, rng)

    k_t, k_noise = stream(rng, "timesteps"), stream(rng, "noise")
    t = jax.random.randint(k_t, (2,), 0, 1000, dtype=jnp.int32)
    eps = np.asarray(jax.random.normal(k_noise, batch["latents"].shape), np.float64)
    x0 = np.asarray(batch["latents"], np.float64)
    abar = SCHED.alphas_cumprod_f64()[np.asarray(t)].reshape(2, 1, 1, 1, 1)
    xt = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    v = np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0
    pred = np.asarray(model(jnp.asarray(xt, jnp.float32), batch["text_embeds"], t, num_scenes=2))
    per_scene = ((pred - v) ** 2).reshape(2, 2, -1).mean(-1)
    np.testing.assert_allclose(float(loss), per_scene.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_per_scene"], per_scene.mean(0), rtol=1e-5)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert any(float(jnp.abs(g).sum()) > 0 for g in leaves)


def test_fp16_latents_get_f32_noise_and_f32_maths():
    # fp16 shards: the noise and the schedule maths stay f32 (fp16 noise has ~1k values).
    batch = make_batch(3, b=4)
    half = {k: v.astype(jnp.float16) for k, v in batch.items()}
    seen = {}

    def spy(latents, text_embeds, timesteps, *, num_scenes):
        seen["latents"], seen["text"] = latents.dtype, text_embeds.dtype
        return fake_model(latents, text_embeds, timesteps, num_scenes=num_scenes)

    rng = jax.random.key(5)
    loss16, _ = loss_fn(spy, half, rng, schedule=SCHED, num_scenes=S)
    assert seen == {"latents": jnp.float32, "text": jnp.float32}
    loss32, _ = loss_fn(fake_model, jax.tree.map(lambda x: x.astype(jnp.float32), half), rng,
                        schedule=SCHED, num_scenes=S)  # fmt: skip
    assert float(loss16) == float(loss32)  # same f32 computation on the fp16-stored values
    noise = jax.random.normal(stream(rng, "noise"), (4, S * F, H, W, C), jnp.float32)
    assert len(np.unique(np.asarray(noise))) == noise.size  # f32: no repeated values
