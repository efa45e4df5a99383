"""The pipeline's denoising loop: explicit initial noise, batched CFG (static or CogVideoX's
dynamic schedule), DDIM / DPM, mask-2 conditions, a progress callback per step.

``denoise_loop`` builds on the public samplers (``ddim_sample`` / ``dpm_sample``): one
``jax.jit`` per model and static setting (sampler, steps, scenes, CFG on/off, mask 2,
progress on/off), cached for the model's lifetime. Guidance is a (num_train_timesteps,) table
indexed by each sample's current timestep, so the static and the dynamic schedule run the
same program; the dynamic one is diffusers' ``use_dynamic_cfg``
``g_t = 1 + g * (1 - cos(pi * ((N - t) / N) ** 5)) / 2`` (N = sampler steps), computed in
float64 like diffusers' Python floats.

Random keys follow ``m2dit_jax.diffusion.generation``: initial noise from
``stream(rng, "sample_noise")``, DPM's step noise from ``stream(rng, "sampler")``, so the same
seed gives the same video through either API.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from m2dit_jax.diffusion.samplers import SAMPLERS, ddim_sample, dpm_sample
from m2dit_jax.diffusion.schedule import CogVideoXSchedule
from m2dit_jax.rng import as_key, stream

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# The progress callback of the running loop (host side); jitted programs call _tick.
_PROGRESS: dict[str, Callable[[], None] | None] = {"tick": None}


def _tick(_):
    tick = _PROGRESS["tick"]
    if tick is not None:
        tick()


def guidance_table(
    guidance_scale: float, num_steps: int, num_train_timesteps: int, dynamic: bool
) -> np.ndarray:
    """(num_train_timesteps,) float32 guidance per timestep value t."""
    g = float(guidance_scale)
    if not dynamic:
        return np.full((num_train_timesteps,), g, np.float32)
    t = np.arange(num_train_timesteps, dtype=np.float64)
    n = float(num_steps)
    return (1.0 + g * (1.0 - np.cos(np.pi * ((n - t) / n) ** 5.0)) / 2.0).astype(np.float32)


def _apply_and_state(model: Any):
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        return (lambda st, *a, **k: nnx.merge(graphdef, st)(*a, **k)), state
    if not callable(model):
        raise ValueError(f"model must be an nnx.Module or a callable, got {type(model)}")
    return (lambda _st, *a, **k: model(*a, **k)), None


def _program(model: Any, apply: Callable, static: tuple) -> Callable:
    per_model = _CACHE.setdefault(model, {})
    if static in per_model:
        return per_model[static]
    sampler, num_steps, num_scenes, use_cfg, mask, progress, causal = static
    model_kwargs = dict(num_scenes=num_scenes)
    if causal:  # the model was trained with cond_mask_mode="causal_conditions"
        model_kwargs["causal_conditions"] = causal

    def run(state, schedule, text, negative, gtable, noise, rng, condition_latents):
        def denoise(x, timesteps):
            if progress:
                jax.debug.callback(_tick, timesteps[0, 0])
            if not use_cfg:
                return apply(state, x, text, timesteps, **model_kwargs).astype(jnp.float32)
            v = apply(
                state,
                jnp.concatenate([x, x]),
                jnp.concatenate([negative, text]),
                jnp.concatenate([timesteps, timesteps]),
                **model_kwargs,
            ).astype(jnp.float32)
            v_uncond, v_text = jnp.split(v, 2)
            g = gtable[jnp.max(timesteps, axis=1)].reshape(-1, 1, 1, 1, 1)
            return v_uncond + g * (v_text - v_uncond)

        kwargs = dict(schedule=schedule, num_steps=num_steps, num_scenes=num_scenes)
        if mask is not None:
            kwargs.update(
                generate_mask=jnp.asarray(mask, bool), condition_latents=condition_latents
            )
        if sampler == "ddim":
            return ddim_sample(denoise, noise, **kwargs)
        return dpm_sample(denoise, noise, rng=stream(rng, "sampler"), **kwargs)

    per_model[static] = jax.jit(run)
    return per_model[static]


def _place(mesh: Mesh, state: Any, arrays: list[Any]) -> tuple[Any, list[Any]]:
    """Videos over (data, fsdp) when the batch divides, else replicated; parameters already on
    ``mesh`` keep their sharding, others are replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    ways = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.shape)

    def put_batch(a):
        if a is None:
            return None
        if ways > 1 and a.shape[0] % ways == 0:
            spec = PartitionSpec(batch_axes, *([None] * (a.ndim - 1)))
            return jax.device_put(a, NamedSharding(mesh, spec))
        return jax.device_put(a, replicated)

    def put_param(leaf):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return leaf
        return jax.device_put(leaf, replicated)

    return jax.tree.map(put_param, state), [put_batch(a) for a in arrays]


def initial_noise(rng: int | jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The initial latents ``generate`` would draw from ``rng`` (stream ``sample_noise``)."""
    return jax.random.normal(stream(as_key(rng), "sample_noise"), shape, jnp.float32)


def denoise_loop(
    model: Any,
    *,
    text: jax.Array,
    negative: jax.Array | None,
    noise: jax.Array,
    num_scenes: int,
    schedule: CogVideoXSchedule,
    num_steps: int,
    guidance_scale: float,
    dynamic_cfg: bool = False,
    sampler: str = "ddim",
    rng: int | jax.Array = 0,
    generate_mask: tuple[bool, ...] | None = None,
    condition_latents: jax.Array | None = None,
    mesh: Mesh | None = None,
    progress: Callable[[], None] | None = None,
    causal_conditions: int = 0,
) -> jax.Array:
    """Runs the sampler from ``noise`` (B, S*F, h, w, C); returns the final latents.

    ``text`` / ``negative``: (B, S*T, D) (negative only used when ``guidance_scale > 1``).
    ``generate_mask`` (S,) + ``condition_latents``: mask 2 (conditions kept at their values).
    ``progress()`` is called once per denoising step, from the device loop.
    ``causal_conditions=K``: the first K scenes are conditions under the causal-condition
    attention mask (models trained with ``diffusion.cond_mask_mode="causal_conditions"``).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if not np.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
    schedule.timesteps(num_steps)  # validates num_steps
    noise = jnp.asarray(noise, jnp.float32)
    text = jnp.asarray(text)
    if noise.ndim != 5 or noise.shape[0] != text.shape[0]:
        raise ValueError(
            f"noise must be (B={text.shape[0]}, S*F, h, w, C) latents, got {tuple(noise.shape)}"
        )
    use_cfg = float(guidance_scale) > 1.0
    if use_cfg and (negative is None or tuple(negative.shape) != tuple(text.shape)):
        raise ValueError("classifier-free guidance needs negative embeddings shaped like text")
    if negative is None:
        negative = jnp.zeros_like(text)
    apply, state = _apply_and_state(model)
    mask = None if generate_mask is None else tuple(bool(m) for m in generate_mask)
    static = (
        sampler,
        int(num_steps),
        int(num_scenes),
        use_cfg,
        mask,
        progress is not None,
        int(causal_conditions),
    )
    fn = _program(model, apply, static)
    gtable = jnp.asarray(
        guidance_table(guidance_scale, num_steps, schedule.num_train_timesteps, dynamic_cfg)
    )
    if condition_latents is None:
        condition_latents = jnp.zeros_like(noise)
    arrays = [text, jnp.asarray(negative), noise, jnp.asarray(condition_latents, jnp.float32)]
    if mesh is not None:
        state, arrays = _place(mesh, state, arrays)
    text, negative, noise, condition_latents = arrays
    _PROGRESS["tick"] = progress
    try:
        if mesh is None:
            out = fn(state, schedule, text, negative, gtable, noise, as_key(rng), condition_latents)
        else:
            with jax.set_mesh(mesh):
                out = fn(
                    state, schedule, text, negative, gtable, noise, as_key(rng), condition_latents
                )
        out = jax.block_until_ready(out)
        jax.effects_barrier()
    finally:
        _PROGRESS["tick"] = None
    return out
