"""CogVideoXSchedule: tables and timesteps vs diffusers, forward-process identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2dit_jax.diffusion import CogVideoXSchedule


def _diffusers_scheduler(kind, snr_shift_scale, spacing="trailing"):
    diffusers = pytest.importorskip("diffusers", reason="parity needs the `parity` extra")
    cls = {
        "ddim": diffusers.CogVideoXDDIMScheduler,
        "dpm": diffusers.CogVideoXDPMScheduler,
    }[kind]
    # The released CogVideoX scheduler config (not the class defaults).
    return cls(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="v_prediction",
        timestep_spacing=spacing,
        rescale_betas_zero_snr=True,
        snr_shift_scale=snr_shift_scale,
    )


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["ddim", "dpm"])
@pytest.mark.parametrize("shift", [3.0, 1.0])
def test_alphas_cumprod_and_timesteps_match_diffusers(kind, shift):
    ref = _diffusers_scheduler(kind, shift)
    ours = CogVideoXSchedule.create(snr_shift_scale=shift)
    np.testing.assert_allclose(
        np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(), atol=1e-6, rtol=0
    )
    np.testing.assert_allclose(ours.alphas_cumprod_f64(), ref.alphas_cumprod.numpy(), atol=1e-12)
    for n in (50, 30, 7, 1000):
        ref.set_timesteps(n)
        np.testing.assert_array_equal(ours.timesteps(n), ref.timesteps.numpy())


@pytest.mark.parity
@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_other_spacings_match_diffusers(spacing):
    ref = _diffusers_scheduler("ddim", 3.0, spacing)
    ours = CogVideoXSchedule.create(snr_shift_scale=3.0, timestep_spacing=spacing)
    for n in (50, 13):
        ref.set_timesteps(n)
        np.testing.assert_array_equal(ours.timesteps(n), ref.timesteps.numpy())


def test_released_endpoints_and_trailing_steps():
    two_b, five_b = CogVideoXSchedule.for_model("2b"), CogVideoXSchedule.for_model("5B")
    assert two_b.snr_shift_scale == 3.0 and five_b.snr_shift_scale == 1.0
    np.testing.assert_allclose(float(two_b.alphas_cumprod[0]), 0.99745433, atol=1e-7)
    np.testing.assert_allclose(float(five_b.alphas_cumprod[0]), 0.99915, atol=1e-5)
    assert float(two_b.alphas_cumprod[-1]) == 0.0 and float(five_b.alphas_cumprod[-1]) == 0.0
    steps = five_b.timesteps(50)
    np.testing.assert_array_equal(steps, np.arange(999, 0, -20))
    np.testing.assert_array_equal(five_b.previous_timesteps(50), np.arange(979, -2, -20))
    assert np.all(np.diff(np.asarray(five_b.alphas_cumprod)) < 0)


@pytest.mark.parity
def test_add_noise_and_velocity_match_diffusers():
    torch = pytest.importorskip("torch", reason="parity needs the `parity` extra")
    ref = _diffusers_scheduler("dpm", 1.0)
    ours = CogVideoXSchedule.create(snr_shift_scale=1.0)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((3, 2, 4, 4, 5)).astype(np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    t = np.array([0, 517, 999])
    want_xt = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t))
    want_v = ref.get_velocity(torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t))
    got_xt = ours.add_noise(jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t))
    got_v = ours.velocity(jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t))
    np.testing.assert_allclose(np.asarray(got_xt), want_xt.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_v), want_v.numpy(), atol=1e-6)


def test_predictions_invert_the_forward_process():
    sched = CogVideoXSchedule.create(snr_shift_scale=3.0)
    k1, k2 = jax.random.split(jax.random.key(1))
    x0 = jax.random.normal(k1, (4, 3, 2, 2, 2, 4))
    eps = jax.random.normal(k2, x0.shape)
    t = jnp.array([[0, 10, 500], [999, 999, 999], [3, 0, 0], [750, 250, 1]])  # per scene
    xt = sched.add_noise(x0, eps, t)
    v = sched.velocity(x0, eps, t)
    np.testing.assert_allclose(sched.predict_x0(xt, v, t), x0, atol=2e-5)
    np.testing.assert_allclose(sched.predict_eps(xt, v, t), eps, atol=2e-5)
    # Terminal step: zero SNR, pure noise.
    np.testing.assert_allclose(xt[1], eps[1], atol=1e-6)
    # Per-scene tables broadcast per scene.
    np.testing.assert_allclose(
        xt[0, 1], sched.add_noise(x0[:1, 1], eps[:1, 1], jnp.array([10]))[0], atol=1e-6
    )


def test_schedule_is_a_jittable_pytree():
    sched = CogVideoXSchedule.create()
    leaves, treedef = jax.tree_util.tree_flatten(sched)
    assert len(leaves) == 3
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt.snr_shift_scale == sched.snr_shift_scale
    out = jax.jit(lambda s, x: s.add_noise(x, x, jnp.array([5])))(sched, jnp.ones((1, 3)))
    assert out.shape == (1, 3)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(snr_shift_scale=0.0), "snr_shift_scale"),
        (dict(beta_start=0.02), "beta_start"),
        (dict(timestep_spacing="karras"), "timestep_spacing"),
        (dict(num_train_timesteps=1), "num_train_timesteps"),
    ],
)
def test_bad_settings_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CogVideoXSchedule.create(**kwargs)


@pytest.mark.parametrize("n", [0, 1001, 2.5, True])
def test_bad_num_steps_raise(n):
    with pytest.raises(ValueError, match="num_steps"):
        CogVideoXSchedule.create().timesteps(n)


def test_unknown_model_size_raises():
    with pytest.raises(ValueError, match="size"):
        CogVideoXSchedule.for_model("7b")
