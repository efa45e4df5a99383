"""CogVideoX samplers (DDIM and the DPM-Solver++ 2M SDE variant) as pure, jittable loops.

Both follow diffusers' ``CogVideoXDDIMScheduler`` / ``CogVideoXDPMScheduler`` step for step
(v-prediction, ``set_alpha_to_one``, no clipping). Per-step coefficients are computed once in
float64 NumPy from the schedule's static settings; the loop is one ``lax.scan``, so a whole
50-step sampling run is a single XLA computation when called under ``jax.jit``.

A ``denoise(x, timesteps)`` callable maps latents (B, S*F, H, W, C) and per-scene integer
timesteps (B, S) to a v-prediction of the latents' shape (guidance already applied).

Mask 2 (scene extension): with ``generate_mask`` (True = generated) and ``condition_latents``,
condition scenes start clean, are fed t = 0, and are reset to their clean values after every
step, so they come out bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from m2dit_jax.diffusion.objective import (
    check_scene_frames,
    frame_scenes,
    merge_scenes,
    split_scenes,
)
from m2dit_jax.diffusion.schedule import CogVideoXSchedule

Denoise = Callable[[jax.Array, jax.Array], jax.Array]
# step_hook(step index, timestep, latents after the step): traced, called inside the loop body
# (emit a ``jax.debug.callback`` from it to see values on the host).
StepHook = Callable[[jax.Array, jax.Array, jax.Array], None]
SAMPLERS = ("ddim", "dpm")


# ---------------------------------------------------------------------- coefficients
def _step_alphas(schedule: CogVideoXSchedule, num_steps: int):
    steps = schedule.timesteps(num_steps)
    prev = schedule.previous_timesteps(num_steps)
    abar = schedule.alphas_cumprod_f64()
    a_t = abar[steps]
    a_prev = np.where(prev >= 0, abar[np.maximum(prev, 0)], 1.0)  # set_alpha_to_one
    return steps, prev, a_t, a_prev


def ddim_coefficients(schedule: CogVideoXSchedule, num_steps: int) -> dict[str, np.ndarray]:
    """Per-step float64 tables (num_steps,) of the CogVideoX DDIM update.

    x0 = sqrt_a * x - sqrt_1ma * v;  x_prev = c_sample * x + c_x0 * x0.
    """
    steps, _, a_t, a_prev = _step_alphas(schedule, num_steps)
    c_sample = np.sqrt((1.0 - a_prev) / (1.0 - a_t))
    return {
        "timesteps": steps,
        "sqrt_a": np.sqrt(a_t),
        "sqrt_1ma": np.sqrt(1.0 - a_t),
        "c_sample": c_sample,
        "c_x0": np.sqrt(a_prev) - np.sqrt(a_t) * c_sample,
    }


def dpm_coefficients(schedule: CogVideoXSchedule, num_steps: int) -> dict[str, np.ndarray]:
    """Per-step float64 tables (num_steps,) of the CogVideoX DPM-Solver++(2M) SDE update.

    d = m3 * x0 - m4 * x0_previous_step   (first-order steps: m3 = 1, m4 = 0)
    x_prev = m1 * x - m2 * d + m_noise * z,   z ~ N(0, I).
    Log-SNR lambda = log sqrt(abar / (1 - abar)); h = lambda_prev - lambda_t; the
    second-order ratio r = (lambda_t - lambda_back) / h uses the previous listed timestep.
    """
    steps, prev, a_t, a_prev = _step_alphas(schedule, num_steps)
    abar = schedule.alphas_cumprod_f64()
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.log(np.sqrt(a_t / (1.0 - a_t)))  # -inf at the zero-SNR step
        lam_next = np.log(np.sqrt(a_prev / (1.0 - a_prev)))  # +inf at the clean end
        h = lam_next - lam
        m1 = np.sqrt((1.0 - a_prev) / (1.0 - a_t)) * np.exp(-h)
        m2 = np.expm1(-2.0 * h) * np.sqrt(a_prev)
        m_noise = np.sqrt(1.0 - a_prev) * np.sqrt(1.0 - np.exp(-2.0 * h))
        a_back = np.concatenate([[np.nan], abar[steps[:-1]]])
        lam_back = np.log(np.sqrt(a_back / (1.0 - a_back)))
        r = (lam - lam_back) / h
        second = (np.arange(num_steps) > 0) & (prev >= 0)
        m3 = np.where(second, 1.0 + 1.0 / (2.0 * r), 1.0)
        m4 = np.where(second, 1.0 / (2.0 * r), 0.0)
    out = {
        "timesteps": steps,
        "sqrt_a": np.sqrt(a_t),
        "sqrt_1ma": np.sqrt(1.0 - a_t),
        "m1": m1,
        "m2": m2,
        "m3": m3,
        "m4": m4,
        "m_noise": m_noise,
    }
    bad = [k for k, v in out.items() if not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(f"DPM coefficients {bad} are not finite for num_steps={num_steps}")
    return out


def step_timestep(schedule: CogVideoXSchedule, num_steps: int, step: int) -> int:
    """The timestep sampler step ``step`` (0-based) of ``num_steps`` denoises from."""
    steps = schedule.timesteps(num_steps)
    if not 0 <= step < num_steps:
        raise ValueError(f"step must be in [0, num_steps={num_steps}), got {step}")
    return int(steps[step])


# ---------------------------------------------------------------------- the loop
def _prepare_mask(generate_mask: Any, batch: int, num_scenes: int) -> jax.Array:
    if generate_mask is None:
        return jnp.ones((batch, num_scenes), bool)
    gen = jnp.asarray(generate_mask).astype(bool)
    if gen.ndim == 1:
        gen = jnp.broadcast_to(gen[None], (batch, num_scenes))
    if gen.shape != (batch, num_scenes):
        raise ValueError(
            f"generate_mask must be (S,) or (B, S)=({batch}, {num_scenes}), got {gen.shape}"
        )
    return gen


def _sample_loop(
    kind: str,
    denoise: Denoise,
    noise: jax.Array,
    *,
    schedule: CogVideoXSchedule,
    num_steps: int,
    num_scenes: int,
    rng: jax.Array | None,
    generate_mask: Any,
    condition_latents: jax.Array | None,
    return_trajectory: bool,
    step_hook: StepHook | None = None,
    scene_frames: tuple[int, ...] | None = None,
    start_step: int = 0,
):
    if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)):
        raise ValueError(f"start_step must be an int, got {start_step!r}")
    if not 0 <= start_step < num_steps:
        raise ValueError(f"start_step must be in [0, num_steps={num_steps}), got {start_step}")
    if noise.ndim != 5:
        raise ValueError(f"noise must be (B, S*F, H, W, C), got shape {noise.shape}")
    batch = noise.shape[0]
    scene_frames = check_scene_frames(scene_frames, num_scenes, noise.shape[1])
    if scene_frames is None:
        split_scenes(noise, num_scenes)  # validates the scene split
    gen = _prepare_mask(generate_mask, batch, num_scenes)
    if generate_mask is not None and condition_latents is None:
        raise ValueError("generate_mask needs condition_latents (the clean condition scenes)")
    if condition_latents is not None and condition_latents.shape != noise.shape:
        raise ValueError(
            f"condition_latents shape {condition_latents.shape} != noise shape {noise.shape}"
        )
    gen_b = gen.reshape(batch, num_scenes, 1, 1, 1, 1)

    def reset(x):
        if condition_latents is None:
            return x
        if scene_frames is not None:  # per frame: its scene's role
            gen_f = frame_scenes(gen, scene_frames)[:, :, None, None, None]
            return jnp.where(gen_f, x, condition_latents.astype(x.dtype))
        clean = split_scenes(condition_latents.astype(x.dtype), num_scenes)
        return merge_scenes(jnp.where(gen_b, split_scenes(x, num_scenes), clean))

    if kind == "ddim":
        tables = ddim_coefficients(schedule, num_steps)
    elif kind == "dpm":
        tables = dpm_coefficients(schedule, num_steps)
        if rng is None:
            raise ValueError("dpm_sample needs rng (its steps inject fresh noise)")
    else:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {kind!r}")
    if start_step and kind == "dpm":  # no previous x0 at a restart: a first-order step
        tables = dict(tables, m3=tables["m3"].copy(), m4=tables["m4"].copy())
        tables["m3"][start_step], tables["m4"][start_step] = 1.0, 0.0
    dtype = noise.dtype
    xs = {
        k: jnp.asarray(v[start_step:], jnp.int32 if k == "timesteps" else jnp.float32)
        for k, v in tables.items()
    }
    xs["index"] = jnp.arange(start_step, num_steps, dtype=jnp.int32)
    gen_int = gen.astype(jnp.int32)

    def step(carry, c):
        x, old_x0 = carry
        v = denoise(x, c["timesteps"] * gen_int).astype(jnp.float32)
        xf = x.astype(jnp.float32)
        x0 = c["sqrt_a"] * xf - c["sqrt_1ma"] * v
        if kind == "ddim":
            x_new = c["c_sample"] * xf + c["c_x0"] * x0
        else:
            d = c["m3"] * x0 - c["m4"] * old_x0
            z = jax.random.normal(jax.random.fold_in(rng, c["index"]), x.shape, jnp.float32)
            x_new = c["m1"] * xf - c["m2"] * d + c["m_noise"] * z
        x_new = reset(x_new.astype(dtype))
        if step_hook is not None:
            step_hook(c["index"], c["timesteps"], x_new)
        return (x_new, x0), (x_new if return_trajectory else None)

    x_init = reset(noise)
    old = jnp.zeros(noise.shape, jnp.float32)
    (x, _), traj = jax.lax.scan(step, (x_init, old), xs)
    return (x, traj) if return_trajectory else x


def ddim_sample(
    denoise: Denoise,
    noise: jax.Array,
    *,
    schedule: CogVideoXSchedule,
    num_steps: int = 50,
    num_scenes: int = 1,
    generate_mask: Any = None,
    condition_latents: jax.Array | None = None,
    return_trajectory: bool = False,
    step_hook: StepHook | None = None,
    scene_frames: tuple[int, ...] | None = None,
    start_step: int = 0,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """CogVideoX DDIM (deterministic) from ``noise`` (B, S*F, H, W, C); jittable.

    Args:
      denoise: ``denoise(x (B, S*F, H, W, C), timesteps (B, S) int32) -> v``.
      noise: the initial latents x_T.
      schedule: the CogVideoX schedule; its spacing gives the timesteps.
      num_steps: sampler steps (release: 50).
      num_scenes: S (how the frame axis splits into scenes).
      generate_mask: optional (S,) or (B, S) bool mask 2 (True = generated).
      condition_latents: clean latents (B, S*F, H, W, C) for the condition scenes.
      return_trajectory: also return the (num_steps - start_step, B, S*F, H, W, C) latents
        after each step run.
      step_hook: ``step_hook(step, timestep, latents)`` traced once per step with the step
        index, that step's timestep and the latents after it (conditions already reset).
      scene_frames: per-scene latent frames when scenes differ in length (the frame axis is
        then F_1+..+F_S); None = S equal scenes.
      start_step: run steps ``start_step .. num_steps - 1`` only: ``noise`` is then the
        latents at that step's timestep (``step_timestep``), e.g. clean latents noised with
        ``schedule.add_noise`` (SDEdit-style partial denoising; 0 = from pure noise).
    """
    return _sample_loop(
        "ddim",
        denoise,
        noise,
        schedule=schedule,
        num_steps=num_steps,
        num_scenes=num_scenes,
        rng=None,
        generate_mask=generate_mask,
        condition_latents=condition_latents,
        return_trajectory=return_trajectory,
        step_hook=step_hook,
        scene_frames=scene_frames,
        start_step=start_step,
    )


def dpm_sample(
    denoise: Denoise,
    noise: jax.Array,
    *,
    schedule: CogVideoXSchedule,
    rng: jax.Array,
    num_steps: int = 50,
    num_scenes: int = 1,
    generate_mask: Any = None,
    condition_latents: jax.Array | None = None,
    return_trajectory: bool = False,
    step_hook: StepHook | None = None,
    scene_frames: tuple[int, ...] | None = None,
    start_step: int = 0,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """CogVideoX DPM-Solver++(2M) SDE sampler; arguments as ``ddim_sample`` plus ``rng``.

    Step i draws its noise as ``jax.random.normal(jax.random.fold_in(rng, i), x.shape)``;
    with ``start_step`` > 0 the first step run is first order (no previous x0).
    """
    return _sample_loop(
        "dpm",
        denoise,
        noise,
        schedule=schedule,
        num_steps=num_steps,
        num_scenes=num_scenes,
        rng=rng,
        generate_mask=generate_mask,
        condition_latents=condition_latents,
        return_trajectory=return_trajectory,
        step_hook=step_hook,
        scene_frames=scene_frames,
        start_step=start_step,
    )
