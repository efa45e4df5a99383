"""generate / extend / extend_chain on the tiny Mask2DiT and on recording fake denoisers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2dit_jax.diffusion import (
    CogVideoXSchedule,
    ddim_sample,
    extend,
    extend_chain,
    generate,
    split_scenes,
)
from m2dit_jax.model import create_model, get_model_config
from m2dit_jax.rng import stream
from m2dit_jax.sharding import make_mesh

CFG = get_model_config("tiny")
T, D = CFG.text_len, CFG.text_dim
SCENE = (2, 8, 8, CFG.in_channels)  # one scene's latent (F, H, W, C)
SCHED = CogVideoXSchedule.create()


@pytest.fixture(scope="module")
def model():
    return create_model(CFG, seed=0)


def texts(b, s, seed=0):
    return jax.random.normal(jax.random.key(seed), (b, s * T, D))


def test_generate_matches_an_unjitted_two_pass_cfg_reference(model):
    text, neg = texts(2, 2), jax.random.normal(jax.random.key(9), (T, D))
    out = generate(
        model,
        text,
        num_scenes=2,
        latent_shape=SCENE,
        num_steps=3,
        guidance_scale=6.0,
        negative_text_embeds=neg,
        seed=4,
    )
    assert out.shape == (2, 4, 8, 8, 4) and out.dtype == jnp.float32
    again = generate(
        model,
        text,
        num_scenes=2,
        latent_shape=SCENE,
        num_steps=3,
        guidance_scale=6.0,
        negative_text_embeds=neg,
        seed=4,
    )
    np.testing.assert_array_equal(out, again)
    other = generate(
        model,
        text,
        num_scenes=2,
        latent_shape=SCENE,
        num_steps=3,
        guidance_scale=6.0,
        negative_text_embeds=neg,
        seed=5,
    )
    assert not np.allclose(out, other)

    neg_full = jnp.broadcast_to(jnp.tile(neg, (2, 1))[None], text.shape)

    def two_pass(x, t):  # separate conditional / unconditional calls
        v_c = model(x, text, t, num_scenes=2)
        v_u = model(x, neg_full, t, num_scenes=2)
        return v_u + 6.0 * (v_c - v_u)

    noise = jax.random.normal(stream(4, "sample_noise"), out.shape)
    want = ddim_sample(two_pass, noise, schedule=SCHED, num_steps=3, num_scenes=2)
    np.testing.assert_allclose(out, want, atol=2e-5)


def recording_model(log):
    """A fake denoiser that logs (latents, timesteps) of every call from inside jit."""

    def model(latents, text, timesteps, *, num_scenes):
        jax.debug.callback(
            lambda x, t: log.append((np.asarray(x), np.asarray(t))), latents, timesteps
        )
        scene_bias = jnp.mean(text.reshape(text.shape[0], num_scenes, -1), -1)
        bias = jnp.repeat(scene_bias, latents.shape[1] // num_scenes, axis=1)
        return 0.3 * jnp.tanh(latents) + bias[:, :, None, None, None]

    return model


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_extend_keeps_conditions_clean_at_t0_in_every_model_call(sampler):
    log = []
    prior = jax.random.normal(jax.random.key(1), (2, 3 * 2, 8, 8, 4))
    out = extend(
        recording_model(log),
        prior,
        texts(2, 1, 3),
        scene_text=texts(2, 3, 2),
        window=3,
        num_steps=5,
        guidance_scale=4.0,
        sampler=sampler,
        seed=1,
    )
    assert out.shape == (2, 8, 8, 8, 4)
    np.testing.assert_array_equal(out[:, :6], prior)
    assert len(log) == 5
    clean = np.asarray(split_scenes(prior, 3))[:, 1:]  # the last window - 1 = 2 scenes
    for latents, timesteps in log:
        x = latents.reshape(4, 3, 2, 8, 8, 4)  # CFG doubles the batch
        np.testing.assert_array_equal(x[:2, :2], clean)
        np.testing.assert_array_equal(x[2:, :2], clean)
        assert np.all(timesteps[:, :2] == 0) and np.all(timesteps[:, 2] > 0)
    # the new scene was denoised from noise, not copied
    assert np.abs(np.asarray(out[:, 6:])).mean() > 0


def test_extend_chain_grows_and_slides_its_window(model):
    prior = jax.random.normal(jax.random.key(2), (1, 3 * 2, 8, 8, 4))
    prior_text = texts(1, 3, 5)
    captions = [texts(1, 1, 6), texts(1, 1, 7)]
    kw = dict(window=3, num_steps=3, guidance_scale=6.0)
    out = extend_chain(model, prior, prior_text, captions, seed=3, **kw)
    assert out.shape == (1, 5 * 2, 8, 8, 4)
    np.testing.assert_array_equal(out[:, :6], prior)
    assert np.all(np.isfinite(np.asarray(out)))
    # Only the last window - 1 scenes matter: dropping scene 0 changes nothing.
    key = jax.random.fold_in(stream(3, "extension"), 0)
    full = extend(model, prior, captions[0], scene_text=prior_text, seed=key, **kw)
    tail = extend(model, prior[:, 2:], captions[0], scene_text=prior_text[:, T:], seed=key, **kw)
    np.testing.assert_array_equal(full[:, 6:], tail[:, 4:])
    np.testing.assert_array_equal(full[:, 6:], out[:, 6:8])


def test_generate_data_parallel_on_a_mesh_matches_one_device(model):
    mesh = make_mesh({"data": 2}, devices=jax.devices()[:2])
    text = texts(2, 2, 11)
    kw = dict(num_scenes=2, latent_shape=SCENE, num_steps=2, guidance_scale=6.0, seed=0)
    single = generate(model, text, **kw)
    sharded = generate(model, text, mesh=mesh, **kw)
    assert sharded.sharding.spec[0] in ("data", ("data", "fsdp"), ("data",))
    assert len(sharded.sharding.device_set) == 2
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sampler="euler"), "sampler"),
        (dict(num_steps=0), "num_steps"),
        (dict(latent_shape=(2, 8, 8)), "latent_shape"),
        (dict(num_scenes=3), "text_embeds"),
        (dict(negative_text_embeds=jnp.zeros((3, D))), "negative_text_embeds"),
    ],
)
def test_generate_rejects_bad_input(kwargs, match):
    args = dict(num_scenes=2, latent_shape=SCENE, num_steps=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate(recording_model([]), texts(1, 2), **args)


def test_extend_rejects_bad_input():
    prior = jnp.zeros((1, 4, 8, 8, 4))
    with pytest.raises(ValueError, match="window"):
        extend(recording_model([]), prior, texts(1, 1), scene_text=texts(1, 2), window=1)
    with pytest.raises(ValueError, match="scene_text"):
        extend(recording_model([]), prior, texts(1, 1), scene_text=jnp.zeros((1, T + 1, D)))
    with pytest.raises(ValueError, match="split"):
        extend(recording_model([]), prior, texts(1, 1), scene_text=texts(1, 3))
