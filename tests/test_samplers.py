"""DDIM / DPM samplers vs diffusers' CogVideoX schedulers on a fixed fake denoiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2dit_jax.diffusion import CogVideoXSchedule, ddim_sample, dpm_sample
from m2dit_jax.diffusion.samplers import dpm_coefficients

torch = pytest.importorskip("torch", reason="parity needs the `parity` extra")
diffusers = pytest.importorskip("diffusers", reason="parity needs the `parity` extra")

SHAPE = (2, 4, 4, 4, 3)  # (B, S*F, H, W, C) with S = 2 scenes of 2 frames


def fake_v(x, t, lib):
    """Fixed nonlinear 'denoiser' written once for numpy-like libs (torch or jnp)."""
    return 0.5 * lib.tanh(x) * lib.cos(t / 700.0) + 0.1 * x - 0.05 * lib.sin(3.0 * x)


def jax_denoise(x, timesteps):
    t = timesteps[:, :1].astype(jnp.float32).reshape(-1, 1, 1, 1, 1)
    return fake_v(x, t, jnp)


def released(kind, shift):
    cls = {"ddim": diffusers.CogVideoXDDIMScheduler, "dpm": diffusers.CogVideoXDPMScheduler}
    return cls[kind](
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
        snr_shift_scale=shift,
    )


def torch_v(x_np, t):
    x = torch.from_numpy(np.array(x_np))
    return fake_v(x, torch.tensor(float(t)), torch)


@pytest.mark.parity
@pytest.mark.parametrize("shift, num_steps", [(1.0, 50), (3.0, 30)])
def test_ddim_matches_diffusers_step_by_step(shift, num_steps):
    sched = CogVideoXSchedule.create(snr_shift_scale=shift)
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    run = jax.jit(
        lambda n: ddim_sample(
            jax_denoise,
            n,
            schedule=sched,
            num_steps=num_steps,
            num_scenes=2,
            return_trajectory=True,
        )
    )
    final, traj = run(noise)
    ours = np.concatenate([np.asarray(noise)[None], np.asarray(traj)])
    np.testing.assert_array_equal(ours[-1], np.asarray(final))

    ref = released("ddim", shift)
    ref.set_timesteps(num_steps)
    latents = torch.from_numpy(np.array(noise))
    for i, t in enumerate(ref.timesteps):
        # Same input and model output as our step i: one-step error only.
        x_i = torch.from_numpy(ours[i].copy())
        one = ref.step(torch_v(ours[i], t), t, x_i, return_dict=False)[0]
        np.testing.assert_allclose(ours[i + 1], one.numpy(), atol=1e-5, rtol=0)
        # And the free-running diffusers loop.
        latents = ref.step(fake_v(latents, t.double().float(), torch), t, latents)[0]
    np.testing.assert_allclose(ours[-1], latents.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parity
@pytest.mark.parametrize("shift, num_steps", [(1.0, 50), (3.0, 20)])
def test_dpm_matches_diffusers_step_by_step(shift, num_steps, monkeypatch):
    sched = CogVideoXSchedule.create(snr_shift_scale=shift)
    noise = jax.random.normal(jax.random.key(1), SHAPE)
    rng = jax.random.key(2)
    run = jax.jit(
        lambda n, r: dpm_sample(
            jax_denoise,
            n,
            schedule=sched,
            rng=r,
            num_steps=num_steps,
            num_scenes=2,
            return_trajectory=True,
        )
    )
    final, traj = run(noise, rng)
    ours = np.concatenate([np.asarray(noise)[None], np.asarray(traj)])

    # diffusers draws its step noise with randn_tensor (twice on second-order steps, using
    # the last draw): feed it exactly our per-step draws.
    queue = []
    module = diffusers.schedulers.scheduling_dpm_cogvideox
    monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: queue.pop(0))

    ref = released("dpm", shift)
    ref.set_timesteps(num_steps)
    timesteps = ref.timesteps
    old_x0 = None
    for i, t in enumerate(timesteps):
        z = torch.from_numpy(
            np.array(jax.random.normal(jax.random.fold_in(rng, i), SHAPE, jnp.float32))
        )
        queue[:] = [z, z]
        back = timesteps[i - 1] if i > 0 else None
        x_i = torch.from_numpy(ours[i].copy())
        x_next, old_x0 = ref.step(torch_v(ours[i], t), old_x0, t, back, x_i, return_dict=False)
        np.testing.assert_allclose(ours[i + 1], x_next.numpy(), atol=1e-5, rtol=0)
    # The last step is first order with no noise: the output is the x0 prediction.
    np.testing.assert_allclose(np.asarray(final), old_x0.numpy(), atol=1e-5)


def test_dpm_coefficients_are_finite_and_first_order_at_the_ends():
    c = dpm_coefficients(CogVideoXSchedule.create(), 50)
    assert c["m3"][0] == 1.0 and c["m4"][0] == 0.0 and c["m4"][-1] == 0.0
    assert c["m_noise"][-1] == 0.0 and c["m1"][0] == 0.0  # zero terminal SNR start
    assert np.all(c["m4"][2:-1] != 0.0)


def test_condition_scenes_are_reset_bit_identically_every_step():
    sched = CogVideoXSchedule.create()
    clean = jax.random.normal(jax.random.key(3), SHAPE) * 0.3
    noise = jax.random.normal(jax.random.key(4), SHAPE)
    seen = []

    def denoise(x, timesteps):
        jax.debug.callback(lambda t: seen.append(np.asarray(t)), timesteps)
        return jax_denoise(x, timesteps)

    for sample in (ddim_sample, dpm_sample):
        kw = {"rng": jax.random.key(5)} if sample is dpm_sample else {}
        seen.clear()
        _, traj = sample(
            denoise,
            noise,
            schedule=sched,
            num_steps=6,
            num_scenes=2,
            generate_mask=jnp.array([False, True]),
            condition_latents=clean,
            return_trajectory=True,
            **kw,
        )
        traj = np.asarray(traj).reshape(6, 2, 2, 2, 4, 4, 3)
        want = np.asarray(clean).reshape(2, 2, 2, 4, 4, 3)[:, 0]
        for step in traj:
            np.testing.assert_array_equal(step[:, 0], want)
        assert not np.allclose(traj[-1][:, 1], np.asarray(noise).reshape(2, 2, 2, 4, 4, 3)[:, 1])
        np.testing.assert_array_equal(seen[0], [[0, 999], [0, 999]])
        assert len(seen) == 6


def test_sampling_is_seeded_and_bad_input_raises():
    sched = CogVideoXSchedule.create()
    noise = jnp.ones(SHAPE)
    a = dpm_sample(jax_denoise, noise, schedule=sched, rng=jax.random.key(1), num_steps=4)
    b = dpm_sample(jax_denoise, noise, schedule=sched, rng=jax.random.key(1), num_steps=4)
    c = dpm_sample(jax_denoise, noise, schedule=sched, rng=jax.random.key(2), num_steps=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    with pytest.raises(ValueError, match="condition_latents"):
        ddim_sample(jax_denoise, noise, schedule=sched, num_scenes=2, generate_mask=[0, 1])
    with pytest.raises(ValueError, match="num_scenes"):
        ddim_sample(jax_denoise, noise, schedule=sched, num_scenes=3)
    with pytest.raises(ValueError, match="num_steps"):
        ddim_sample(jax_denoise, noise, schedule=sched, num_steps=0)


def test_start_step_continues_a_run_from_its_latents():
    """A DDIM run restarted at step k from the full run's latents after step k-1 ends where the
    full run ends (bit for bit); DPM's restart step is first order; bad start steps raise."""
    from m2dit_jax.diffusion.samplers import step_timestep

    sched = CogVideoXSchedule.create()
    noise = jax.random.normal(jax.random.key(7), SHAPE)
    full, traj = ddim_sample(
        jax_denoise, noise, schedule=sched, num_steps=6, num_scenes=2, return_trajectory=True
    )
    seen = []

    def denoise(x, timesteps):
        jax.debug.callback(lambda t: seen.append(int(np.asarray(t)[0, 0])), timesteps)
        return jax_denoise(x, timesteps)

    part, ptraj = ddim_sample(
        denoise, traj[2], schedule=sched, num_steps=6, num_scenes=2, start_step=3,
        return_trajectory=True,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(part), np.asarray(full))
    assert ptraj.shape[0] == 3
    assert seen == [int(t) for t in sched.timesteps(6)[3:]]
    assert seen[0] == step_timestep(sched, 6, 3)
    # DPM: the restart step is first order (d = x0 of this step, no previous x0) and draws
    # the noise of its own step index, as in a full run
    kw = dict(schedule=sched, num_steps=6, num_scenes=2, rng=jax.random.key(3))
    x = traj[3]
    last = dpm_sample(jax_denoise, x, start_step=5, **kw)
    c = {k: float(v[5]) for k, v in dpm_coefficients(sched, 6).items()}
    x0 = c["sqrt_a"] * x - c["sqrt_1ma"] * jax_denoise(x, jnp.full((2, 2), c["timesteps"]))
    z = jax.random.normal(jax.random.fold_in(jax.random.key(3), 5), x.shape)
    want = c["m1"] * x - c["m2"] * x0 + c["m_noise"] * z
    np.testing.assert_allclose(np.asarray(last), np.asarray(want), rtol=1e-5, atol=1e-5)
    for bad in (-1, 6, True, 1.5):
        with pytest.raises(ValueError, match="start_step"):
            ddim_sample(jax_denoise, noise, schedule=sched, num_steps=6, start_step=bad)
    with pytest.raises(ValueError, match="step must be in"):
        step_timestep(sched, 6, 6)
