"""Multi-scene generation (mask 1) and autoregressive scene extension (mask 2).

Text layout everywhere: per-scene caption embeddings concatenated in scene order,
``text_embeds[:, i*T:(i+1)*T]`` is scene i's caption (T tokens, as the model's ``text_len``).
Latent layout: scenes concatenated along the frame axis, (B, S*F, H, W, C).

The whole sampling loop (classifier-free guidance batched into one model call, every sampler
step, mask-2 resets) is one ``jax.jit`` computation, compiled once per model, shape and sampler
setting and reused across calls. ``sample_from_noise`` is that loop from explicit initial
latents (what ``SamplingPipeline`` calls); ``generate`` / ``extend`` draw the initial latents
from their seed (``initial_noise``) and call it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from m2dit_jax.attention.dispatch import log_choice_once
from m2dit_jax.diffusion.objective import check_scene_frames
from m2dit_jax.diffusion.samplers import SAMPLERS, ddim_sample, dpm_sample
from m2dit_jax.diffusion.schedule import CogVideoXSchedule
from m2dit_jax.layout import CAUSAL_CONDITIONS, extension_mask
from m2dit_jax.rng import as_key, stream
from m2dit_jax.sharding import constrain, named_sharding

EXTEND_MASK_MODES = ("mask2dit", CAUSAL_CONDITIONS)
_BATCH5 = ("batch", None, None, None, None)
_BATCH3 = ("batch", None, None)

# model -> {static settings -> jitted sampling function}; entries die with the model.
_JIT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _apply_and_state(model: Any) -> tuple[Callable[..., jax.Array], Any]:
    """(apply(state, latents, text, t, num_scenes=S), state) for an NNX module or a callable."""
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)

        def apply(st, *args, **kwargs):
            return nnx.merge(graphdef, st)(*args, **kwargs)

        return apply, state
    if not callable(model):
        raise ValueError(f"model must be an nnx.Module or a callable, got {type(model)}")
    return (lambda _st, *args, **kwargs: model(*args, **kwargs)), None


def _method(model: Any) -> Callable[..., Any]:
    """call(state, name, *args, **kwargs): a method of the NNX model on a state."""
    graphdef, _ = nnx.split(model)

    def call(st, name, *args, **kwargs):
        return getattr(nnx.merge(graphdef, st), name)(*args, **kwargs)

    return call


# Host-side callbacks of the running loop; the jitted programs call _host_progress /
# _host_callback, so a new callable per call does not recompile.
_HOST: dict[str, Callable[..., Any] | None] = {"progress": None, "callback": None}


def _host_progress(step):
    fn = _HOST["progress"]
    if fn is not None:
        fn()


def _host_callback(step, timestep, latents):
    fn = _HOST["callback"]
    if fn is not None:
        fn(int(step), int(timestep), np.asarray(latents))


def _sampling_fn(model: Any, apply: Callable, static: tuple) -> Callable:
    per_model = _JIT_CACHE.setdefault(model, {})
    if static not in per_model:
        (
            sampler,
            num_steps,
            num_scenes,
            use_cfg,
            generate_mask,
            causal_conditions,
            cache_conditions,
            progress,
            callback,
            scene_frames,
            start_step,
        ) = static
        method = _method(model) if cache_conditions else None
        # mask 1 (release) or the causal-condition mask; conditions lead the window
        model_kwargs = dict(num_scenes=num_scenes)
        window_kwargs = dict(num_scenes=num_scenes)
        if causal_conditions:
            model_kwargs["causal_conditions"] = causal_conditions
        if scene_frames is not None:  # scenes of their own lengths (static)
            model_kwargs["scene_frames"] = scene_frames
            window_kwargs["scene_frames"] = scene_frames

        def run(state, schedule, text, negative, gtable, noise, rng, condition_latents):
            def guided(v, timesteps):  # [negative; positive] batch -> the CFG-combined v (f32)
                v_uncond, v_text = jnp.split(v.astype(jnp.float32), 2)
                g = gtable[jnp.max(timesteps, axis=1)].reshape(-1, 1, 1, 1, 1)
                return v_uncond + g * (v_text - v_uncond)

            noise = constrain(noise, _BATCH5)

            def denoise_full(x, timesteps):
                if not use_cfg:
                    return apply(state, x, text, timesteps, **model_kwargs)
                v = apply(
                    state,
                    jnp.concatenate([x, x]),
                    jnp.concatenate([negative, text]),
                    jnp.concatenate([timesteps, timesteps]),
                    **model_kwargs,
                )
                return guided(v, timesteps)

            denoise = denoise_full
            if cache_conditions:
                # One forward over the clean conditions (t = 0) fills every layer's K/V, per CFG
                # branch; each step then runs the new scene's tokens only.
                k = num_scenes - 1
                t_len = text.shape[1] // num_scenes
                if scene_frames is None:
                    cond_f = k * (noise.shape[1] // num_scenes)
                else:
                    cond_f = sum(scene_frames[:k])
                cond_lat = condition_latents[:, :cond_f]
                cond_text, new_text = text[:, : k * t_len], text[:, k * t_len :]
                if use_cfg:
                    cond_lat = jnp.concatenate([cond_lat, cond_lat])
                    cond_text = jnp.concatenate([negative[:, : k * t_len], cond_text])
                    new_text = jnp.concatenate([negative[:, k * t_len :], new_text])
                cache = method(state, "condition_cache", cond_lat, cond_text, **window_kwargs)

                def denoise_cached(x, timesteps):
                    x_new, t_new = x[:, cond_f:], timesteps[:, k:]
                    if use_cfg:
                        x_new = jnp.concatenate([x_new, x_new])
                        t_new = jnp.concatenate([t_new, t_new])
                    v = method(state, "cached_call", x_new, new_text, t_new, cache, **window_kwargs)
                    v = guided(v, timesteps) if use_cfg else v.astype(jnp.float32)
                    # the conditions' prediction is never used: they are reset after each step
                    return jnp.concatenate([jnp.zeros_like(x[:, :cond_f], jnp.float32), v], axis=1)

                denoise = denoise_cached

            def hook(step, timestep, x):
                if progress:
                    jax.debug.callback(_host_progress, step)
                if callback:
                    jax.debug.callback(_host_callback, step, timestep, x)

            kwargs = dict(
                schedule=schedule,
                num_steps=num_steps,
                num_scenes=num_scenes,
                scene_frames=scene_frames,
                start_step=start_step,
            )
            if progress or callback:
                kwargs["step_hook"] = hook
            if generate_mask is not None:
                kwargs.update(
                    generate_mask=jnp.asarray(generate_mask, bool),
                    condition_latents=condition_latents,
                )
            if sampler == "ddim":
                return ddim_sample(denoise, noise, **kwargs)
            return dpm_sample(denoise, noise, rng=stream(rng, "sampler"), **kwargs)

        per_model[static] = jax.jit(run)
    return per_model[static]


def _check_common(num_steps: int, sampler: str, guidance_scale: float) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise ValueError(f"num_steps must be an int, got {num_steps!r}")
    if not np.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")


def _check_cacheable(model: Any) -> None:
    if not (isinstance(model, nnx.Module) and hasattr(model, "condition_cache")):
        raise ValueError(
            f"cache_conditions=True needs a Mask2DiT model (condition_cache / cached_call), "
            f"got {type(model).__name__}"
        )


def initial_noise(seed: int | jax.Array, shape: Sequence[int]) -> jax.Array:
    """The initial latents x_T that ``generate`` / ``extend`` draw from ``seed`` for ``shape``
    (stream ``sample_noise``)."""
    return jax.random.normal(stream(as_key(seed), "sample_noise"), tuple(shape), jnp.float32)


def guidance_per_timestep(
    schedule: CogVideoXSchedule,
    num_steps: int,
    guidance_scale: float = 6.0,
    *,
    dynamic_cfg: bool = False,
    guidance_schedule: Sequence[float] | None = None,
) -> np.ndarray:
    """The CFG scale of every timestep value: a (num_train_timesteps,) float32 table.

    - constant ``guidance_scale``;
    - ``dynamic_cfg``: CogVideoX's ``use_dynamic_cfg``,
      ``g_t = 1 + g * (1 - cos(pi * ((N - t) / N) ** 5)) / 2`` (N = ``num_steps``, float64 like
      diffusers' Python floats);
    - ``guidance_schedule``: one scale per sampler step (step i runs at the schedule's i-th
      timestep), like passing a per-step list to a diffusers loop.
    """
    n_train = schedule.num_train_timesteps
    if guidance_schedule is not None:
        if dynamic_cfg:
            raise ValueError("give either guidance_schedule or dynamic_cfg=True, not both")
        g = np.asarray(guidance_schedule, np.float64)
        if g.shape != (num_steps,) or not np.all(np.isfinite(g)):
            raise ValueError(
                f"guidance_schedule must be {num_steps} finite numbers (one per sampler step), "
                f"got shape {g.shape}"
            )
        steps = schedule.timesteps(num_steps)
        if len(set(steps.tolist())) != num_steps:
            raise ValueError(
                f"guidance_schedule: the {num_steps} sampler timesteps repeat; a per-step table "
                "needs distinct timesteps (use fewer steps)"
            )
        table = np.ones((n_train,), np.float32)  # entries off the schedule are never read
        table[steps] = g.astype(np.float32)
        return table
    g = float(guidance_scale)
    if not np.isfinite(g):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
    if not dynamic_cfg:
        return np.full((n_train,), g, np.float32)
    t = np.arange(n_train, dtype=np.float64)
    n = float(num_steps)
    return (1.0 + g * (1.0 - np.cos(np.pi * ((n - t) / n) ** 5.0)) / 2.0).astype(np.float32)


def _place(mesh: Mesh | None, state: Any, arrays: list[Any]) -> tuple[Any, list[Any]]:
    """Shards the batch arrays over (data, fsdp) when the batch divides (else replicates them:
    e.g. one video on an fsdp mesh that shards only the weights); replicates parameters not
    already on ``mesh``."""
    if mesh is None:
        return state, arrays
    batch = arrays[0].shape[0]
    ways = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    replicated = NamedSharding(mesh, PartitionSpec())

    if batch % ways:
        log_choice_once(
            ("sampling_batch_replicated", batch, ways),
            f"sampling batch {batch} does not divide the mesh's data x fsdp = {ways}: the "
            "videos are replicated (every device computes the whole batch; the weights stay "
            "sharded); a batch divisible by data x fsdp shards it",
        )

    def put_batch(a):
        if a is None:
            return None
        if batch % ways == 0:
            return jax.device_put(a, named_sharding(mesh, ("batch",) + (None,) * (a.ndim - 1)))
        return jax.device_put(a, replicated)

    def put(leaf):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return leaf
        return jax.device_put(leaf, replicated)

    return jax.tree.map(put, state), [put_batch(a) for a in arrays]


def sample_from_noise(
    model: Any,
    noise: jax.Array,
    text: jax.Array,
    *,
    num_scenes: int,
    negative: jax.Array | None = None,
    num_steps: int = 50,
    guidance_scale: float = 6.0,
    dynamic_cfg: bool = False,
    guidance_schedule: Sequence[float] | None = None,
    seed: int | jax.Array = 0,
    sampler: str = "ddim",
    schedule: CogVideoXSchedule | None = None,
    generate_mask: Sequence[bool] | None = None,
    condition_latents: jax.Array | None = None,
    mesh: Mesh | None = None,
    causal_conditions: int = 0,
    cache_conditions: bool = False,
    progress: Callable[[], None] | None = None,
    callback: Callable[[int, int, np.ndarray], None] | None = None,
    scene_frames: Sequence[int] | None = None,
    start_step: int = 0,
) -> jax.Array:
    """The one sampling loop behind ``generate``, ``extend`` and ``SamplingPipeline``.

    Runs the sampler from explicit initial latents ``noise`` (B, S*F, H, W, C) and returns the
    final latents. One ``jax.jit`` per model and static setting (sampler, steps, S, CFG on/off,
    mask 2, causal conditions, cache, callbacks on/off), cached for the model's lifetime.

    Args:
      text / negative: (B, S*T, D); ``negative`` is needed (same shape) when CFG runs, i.e.
        ``guidance_scale > 1`` (or any ``guidance_schedule`` value > 1).
      guidance_scale, dynamic_cfg, guidance_schedule: see ``guidance_per_timestep``.
      seed: int or key; DPM's step noise comes from ``stream(seed, "sampler")``.
      generate_mask (S,) + condition_latents (B, S*F, H, W, C): mask 2, condition scenes kept
        at their values (t = 0).
      causal_conditions: K > 0 runs the causal-condition attention mask with the first K
        scenes as conditions; ``cache_conditions`` then computes their keys/values once.
      progress: ``progress()`` after every step (host side).
      callback: ``callback(step, timestep, latents)`` after every step with the latents (numpy,
        the whole window, conditions included); read-only, unlike diffusers'
        ``callback_on_step_end``.
      scene_frames: per-scene latent frames (S,) when scenes differ in length; ``noise`` is
        then (B, F_1+..+F_S, H, W, C). None = S equal scenes.
      start_step: skip the first sampler steps: ``noise`` holds the latents at timestep
        ``samplers.step_timestep(schedule, num_steps, start_step)`` (partial denoising of
        noised latents, SDEdit-style; 0 = the whole run).
    """
    _check_common(num_steps, sampler, guidance_scale)
    schedule = schedule if schedule is not None else CogVideoXSchedule.create()
    schedule.timesteps(num_steps)  # validates num_steps
    gtable = guidance_per_timestep(
        schedule,
        num_steps,
        guidance_scale,
        dynamic_cfg=dynamic_cfg,
        guidance_schedule=guidance_schedule,
    )
    if guidance_schedule is not None:
        use_cfg = float(np.max(guidance_schedule)) > 1.0
    else:
        use_cfg = float(guidance_scale) > 1.0
    noise = jnp.asarray(noise, jnp.float32)
    text = jnp.asarray(text)
    if noise.ndim != 5 or noise.shape[0] != text.shape[0]:
        raise ValueError(
            f"noise must be (B={text.shape[0]}, S*F, h, w, C) latents with S={num_scenes}, "
            f"got {tuple(noise.shape)}"
        )
    scene_frames = check_scene_frames(scene_frames, int(num_scenes), noise.shape[1])
    if scene_frames is None and noise.shape[1] % num_scenes:
        raise ValueError(
            f"noise must be (B={text.shape[0]}, S*F, h, w, C) latents with S={num_scenes}, "
            f"got {tuple(noise.shape)}; scenes of different lengths need scene_frames"
        )
    if use_cfg and (negative is None or tuple(np.shape(negative)) != tuple(text.shape)):
        raise ValueError("classifier-free guidance needs negative embeddings shaped like text")
    negative = jnp.zeros_like(text) if negative is None else jnp.asarray(negative, text.dtype)
    if cache_conditions and not causal_conditions:
        raise ValueError(
            "cache_conditions=True needs the causal-condition mask (causal_conditions > 0): "
            "under mask 1 the conditions attend to the noisy new scene, so their keys/values "
            "change every step"
        )
    if cache_conditions:
        _check_cacheable(model)
    mask = None if generate_mask is None else tuple(bool(m) for m in generate_mask)
    apply, state = _apply_and_state(model)
    static = (
        sampler,
        int(num_steps),
        int(num_scenes),
        use_cfg,
        mask,
        int(causal_conditions),
        bool(cache_conditions),
        progress is not None,
        callback is not None,
        scene_frames,
        start_step,  # validated by the sampler loop (an int in [0, num_steps))
    )
    fn = _sampling_fn(model, apply, static)
    if condition_latents is None:
        condition_latents = jnp.zeros_like(noise)
    arrays = [text, negative, noise, jnp.asarray(condition_latents, jnp.float32)]
    state, (text, negative, noise, condition_latents) = _place(mesh, state, arrays)
    args = (state, schedule, text, negative, jnp.asarray(gtable), noise, as_key(seed))
    _HOST["progress"], _HOST["callback"] = progress, callback
    try:
        if mesh is None:
            out = fn(*args, condition_latents)
        else:
            with jax.set_mesh(mesh):
                out = fn(*args, condition_latents)
        if progress is not None or callback is not None:
            out = jax.block_until_ready(out)
            jax.effects_barrier()
    finally:
        _HOST["progress"], _HOST["callback"] = None, None
    return out


def _run(
    model: Any,
    *,
    text: jax.Array,
    negative: jax.Array,
    condition_latents: jax.Array | None,
    generate_mask: tuple[bool, ...] | None,
    num_scenes: int,
    scene_shape: tuple[int, int, int, int],
    seed: int | jax.Array,
    scene_frames: tuple[int, ...] | None = None,
    **kwargs: Any,
) -> jax.Array:
    f, h, w, c = scene_shape
    frames = num_scenes * f if scene_frames is None else sum(scene_frames)
    noise = initial_noise(seed, (text.shape[0], frames, h, w, c))
    return sample_from_noise(
        model,
        noise,
        text,
        num_scenes=num_scenes,
        negative=negative,
        seed=seed,
        generate_mask=generate_mask,
        condition_latents=condition_latents,
        scene_frames=scene_frames,
        **kwargs,
    )


def _negative_for(
    negative: Any, text: jax.Array, num_scenes: int, *, what: str = "negative_text_embeds"
) -> jax.Array:
    """Broadcasts a negative prompt to ``text``'s (B, S*T, D) layout.

    Accepts None (all-zero embeddings), one caption (T, D) or (B, T, D) repeated in every
    scene slot, or a full per-scene layout (S*T, D) / (B, S*T, D).
    """
    b, st, d = text.shape
    t = st // num_scenes
    if negative is None:
        return jnp.zeros_like(text)
    neg = jnp.asarray(negative, text.dtype)
    if neg.ndim == 2:
        neg = neg[None]
    if neg.ndim != 3 or neg.shape[-1] != d or neg.shape[1] not in (t, st):
        raise ValueError(
            f"{what} must be (T, D), (B, T, D), (S*T, D) or (B, S*T, D) with T={t}, "
            f"S={num_scenes}, D={d}; got shape {np.shape(negative)}"
        )
    if neg.shape[1] == t:
        neg = jnp.tile(neg, (1, num_scenes, 1))
    if neg.shape[0] not in (1, b):
        raise ValueError(f"{what} batch {neg.shape[0]} != text batch {b}")
    return jnp.broadcast_to(neg, text.shape)


def generate(
    model: Any,
    text_embeds: jax.Array,
    *,
    num_scenes: int,
    latent_shape: Sequence[int],
    num_steps: int = 50,
    guidance_scale: float = 6.0,
    negative_text_embeds: Any = None,
    seed: int | jax.Array = 0,
    sampler: str = "ddim",
    mesh: Mesh | None = None,
    schedule: CogVideoXSchedule | None = None,
    scene_frames: Sequence[int] | None = None,
) -> jax.Array:
    """Samples all S scenes of each video jointly (mask 1).

    Args:
      model: a ``Mask2DiT`` (or any ``model(latents, text, timesteps, *, num_scenes)``).
      text_embeds: (B, S*T, D) per-scene captions concatenated in scene order.
      num_scenes: S.
      latent_shape: one scene's latent shape (F, H, W, C).
      num_steps: sampler steps (release: 50).
      guidance_scale: CFG scale (release: 6.0); <= 1 disables guidance (one model pass).
      negative_text_embeds: the negative prompt, in every scene's slot (see ``_negative_for``);
        None uses all-zero embeddings — pass your encoder's encoding of "" (or of a negative
        prompt) to follow the release.
      seed: int or PRNG key; the initial noise (and DPM's step noise) derive from it.
      sampler: "ddim" (release) or "dpm".
      mesh: optional mesh; videos are sharded over its (data, fsdp) axes when the batch
        divides (else replicated; parameters placed on the mesh keep their sharding).
      schedule: defaults to ``CogVideoXSchedule.create()`` (5B settings, SNR shift 1.0).
      scene_frames: scenes of their own lengths: (F_1, .., F_S) latent frames, with
        ``latent_shape`` then (H, W, C) (the frame counts come from here).

    Returns:
      (B, S*F, H, W, C) float32 latents ((B, F_1+..+F_S, H, W, C) with ``scene_frames``).
    """
    _check_common(num_steps, sampler, guidance_scale)
    text = jnp.asarray(text_embeds)
    if text.ndim != 3 or text.shape[1] % num_scenes:
        raise ValueError(
            f"text_embeds must be (B, S*T, D) with S={num_scenes}, got shape {text.shape}"
        )
    scene_shape = tuple(int(x) for x in latent_shape)
    if scene_frames is not None:
        if len(scene_shape) != 3:
            raise ValueError(
                f"with scene_frames, latent_shape must be (H, W, C) (the per-scene frame counts "
                f"come from scene_frames), got {latent_shape}"
            )
        counts = tuple(int(f) for f in scene_frames)
        check_scene_frames(counts, num_scenes, sum(counts))
        scene_shape = (1, *scene_shape)
    else:
        counts = None
    if len(scene_shape) != 4 or min(scene_shape) < 1:
        raise ValueError(f"latent_shape must be one scene's (F, H, W, C), got {latent_shape}")
    return _run(
        model,
        text=text,
        negative=_negative_for(negative_text_embeds, text, num_scenes),
        condition_latents=None,
        generate_mask=None,
        num_scenes=num_scenes,
        scene_shape=scene_shape,
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        seed=seed,
        sampler=sampler,
        mesh=mesh,
        schedule=schedule,
        scene_frames=counts,
    )


def _prior_scene_frames(scene_frames, num_prior: int, total: int) -> tuple[int, ...]:
    """The existing scenes' frame counts: given, or ``total`` split into equal scenes."""
    if scene_frames is None:
        if total % num_prior:
            raise ValueError(
                f"scene_latents frame axis {total} does not split into the {num_prior} scenes "
                "that scene_text holds; pass scene_frames for scenes of different lengths"
            )
        return (total // num_prior,) * num_prior
    counts = tuple(int(f) for f in scene_frames)
    if len(counts) != num_prior or min(counts) < 1 or sum(counts) != total:
        raise ValueError(
            f"scene_frames {counts} must give the {num_prior} existing scenes' latent frames, "
            f"summing to scene_latents' {total} frames"
        )
    return counts


def extend(
    model: Any,
    scene_latents: jax.Array,
    new_scene_text: jax.Array,
    *,
    scene_text: jax.Array,
    window: int = 3,
    num_steps: int = 50,
    guidance_scale: float = 6.0,
    negative_text_embeds: Any = None,
    seed: int | jax.Array = 0,
    sampler: str = "ddim",
    mesh: Mesh | None = None,
    schedule: CogVideoXSchedule | None = None,
    mask_mode: str = "mask2dit",
    cache_conditions: bool = False,
    scene_frames: Sequence[int] | None = None,
    new_scene_frames: int | None = None,
) -> jax.Array:
    """Appends one scene, conditioned on the last ``window - 1`` scenes (mask 2).

    The conditions enter clean with t = 0 and are reset to their clean values after every
    sampler step; only the new scene is denoised. Memory is that of a ``window``-scene
    sample however long the video is; call repeatedly (or use ``extend_chain``) for videos
    of any length.

    ``mask_mode="causal_conditions"`` runs the model with the causal-condition attention mask
    (the conditions attend only among themselves; train with
    ``diffusion.cond_mask_mode="causal_conditions"``). Then ``cache_conditions=True`` computes
    the conditions' per-layer video keys/values **once** (one forward at t = 0, per CFG
    branch) and every sampler step runs only the new scene's tokens against that cache — the
    same result as ``cache_conditions=False`` in that mask mode, to float round-off.

    Args:
      scene_latents: (B, S0*F, H, W, C) the existing scenes.
      new_scene_text: (B, T, D) or (T, D) the new scene's caption embeddings.
      scene_text: (B, S0*T, D) the existing scenes' captions, in scene order.
      window: scenes per model call (release: 3 = two conditions + the new scene).
      negative_text_embeds: None, or one caption (T, D) / (B, T, D) used in every slot.
      mask_mode: "mask2dit" (release: attention unchanged by mask 2) or "causal_conditions".
      cache_conditions: cache the conditions' keys/values across steps (needs
        ``mask_mode="causal_conditions"`` and a ``Mask2DiT`` model; a ``ValueError`` otherwise).
      scene_frames: the existing scenes' latent frames when they differ in length (None:
        scene_latents splits into S0 equal scenes).
      new_scene_frames: the new scene's latent frames (None: as many as the last scene).
      Other arguments as in ``generate``.

    Returns:
      (B, (S0+1)*F, H, W, C): the input scenes unchanged, then the new scene
      ((B, F_1+..+F_S0+F_new, H, W, C) for scenes of their own lengths).
    """
    _check_common(num_steps, sampler, guidance_scale)
    if mask_mode not in EXTEND_MASK_MODES:
        raise ValueError(f"extend mask_mode must be one of {EXTEND_MASK_MODES}, got {mask_mode!r}")
    if cache_conditions and mask_mode != CAUSAL_CONDITIONS:
        raise ValueError(
            "cache_conditions=True needs mask_mode='causal_conditions': under mask 1 the "
            "conditions attend to the noisy new scene, so their keys/values change every step"
        )
    if cache_conditions:
        _check_cacheable(model)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 2:
        raise ValueError(f"window must be an int >= 2 (conditions + new scene), got {window!r}")
    latents = jnp.asarray(scene_latents)
    prior_text = jnp.asarray(scene_text)
    new_text = jnp.asarray(new_scene_text)
    if latents.ndim != 5:
        raise ValueError(f"scene_latents must be (B, S0*F, H, W, C), got {latents.shape}")
    b = latents.shape[0]
    if new_text.ndim == 2:
        new_text = jnp.broadcast_to(new_text[None], (b,) + new_text.shape)
    if new_text.ndim != 3 or new_text.shape[0] != b:
        raise ValueError(f"new_scene_text must be (B={b}, T, D) or (T, D), got {new_text.shape}")
    t_len = new_text.shape[1]
    if (
        prior_text.ndim != 3
        or prior_text.shape[0] != b
        or prior_text.shape[1] % t_len
        or prior_text.shape[2] != new_text.shape[2]
    ):
        raise ValueError(
            f"scene_text must be (B={b}, S0*T, D) with T={t_len} and D={new_text.shape[2]}, "
            f"got {prior_text.shape}"
        )
    num_prior = prior_text.shape[1] // t_len
    if num_prior < 1:
        raise ValueError(f"scene_text holds no scene (shape {prior_text.shape}, T={t_len})")
    prior_frames = _prior_scene_frames(scene_frames, num_prior, latents.shape[1])
    frames = prior_frames[-1] if new_scene_frames is None else int(new_scene_frames)
    if isinstance(new_scene_frames, bool) or frames < 1:
        raise ValueError(f"new_scene_frames must be a positive int, got {new_scene_frames!r}")
    num_cond = min(window - 1, num_prior)
    s = num_cond + 1
    window_frames = prior_frames[num_prior - num_cond :] + (frames,)
    cond_lat = latents[:, sum(prior_frames[: num_prior - num_cond]) :]
    text = jnp.concatenate([prior_text[:, (num_prior - num_cond) * t_len :], new_text], axis=1)
    scene_shape = (frames, *latents.shape[2:])
    new_zeros = jnp.zeros((b, frames, *latents.shape[2:]), latents.dtype)
    window_lat = jnp.concatenate([cond_lat, new_zeros], axis=1)
    negative = negative_text_embeds
    if negative is not None and np.ndim(negative) == 3 and np.shape(negative)[1] != t_len:
        raise ValueError(f"negative_text_embeds for extend must be one caption (T={t_len}, D)")
    mask = tuple(bool(x) for x in extension_mask(s, num_cond))
    out = _run(
        model,
        text=text,
        negative=_negative_for(negative, text, s),
        condition_latents=window_lat.astype(jnp.float32),
        generate_mask=mask,
        num_scenes=s,
        scene_shape=scene_shape,
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        seed=seed,
        sampler=sampler,
        mesh=mesh,
        schedule=schedule,
        causal_conditions=num_cond if mask_mode == CAUSAL_CONDITIONS else 0,
        cache_conditions=bool(cache_conditions),
        scene_frames=check_scene_frames(window_frames, s, sum(window_frames)),
    )
    new_scene = out[:, sum(window_frames[:-1]) :]
    return jnp.concatenate([latents, new_scene.astype(latents.dtype)], axis=1)


def extend_chain(
    model: Any,
    scene_latents: jax.Array,
    scene_text: jax.Array,
    new_scene_texts: Sequence[jax.Array],
    *,
    seed: int | jax.Array = 0,
    scene_frames: Sequence[int] | None = None,
    new_scene_frames: Sequence[int] | None = None,
    **kwargs: Any,
) -> jax.Array:
    """Calls ``extend`` once per caption in ``new_scene_texts``: S0 + K scenes out.

    ``scene_frames`` (the S0 existing scenes) and ``new_scene_frames`` (one count per new
    caption) give scenes of their own lengths; None keeps every scene as long as the last.

    Step k uses the PRNG key ``fold_in(stream(seed, "extension"), k)`` (never the key a
    joint ``generate`` with the same seed draws its noise from); other keyword arguments go to
    ``extend`` (window, num_steps, guidance_scale, mask_mode, cache_conditions, ...).

    With ``cache_conditions=True`` each extension builds its own cache: when the window slides,
    the oldest scene's keys/values are dropped and the new condition set is computed once
    (positions shift and the conditions attend to each other, so a scene's keys/values are not
    reusable across windows).
    """
    key = stream(seed, "extension")
    latents, text = jnp.asarray(scene_latents), jnp.asarray(scene_text)
    if new_scene_frames is not None and len(new_scene_frames) != len(new_scene_texts):
        raise ValueError(
            f"new_scene_frames has {len(new_scene_frames)} counts for "
            f"{len(new_scene_texts)} new captions"
        )
    frames = None if scene_frames is None else list(scene_frames)
    for k, caption in enumerate(new_scene_texts):
        caption = jnp.asarray(caption)
        if caption.ndim == 2:
            caption = jnp.broadcast_to(caption[None], (latents.shape[0],) + caption.shape)
        new_frames = None if new_scene_frames is None else int(new_scene_frames[k])
        if frames is None and new_frames is not None:  # from equal scenes to ragged ones
            num_prior = text.shape[1] // caption.shape[1]
            frames = list(_prior_scene_frames(None, num_prior, latents.shape[1]))
        before = latents.shape[1]
        latents = extend(
            model,
            latents,
            caption,
            scene_text=text,
            seed=jax.random.fold_in(key, k),
            scene_frames=frames,
            new_scene_frames=new_frames,
            **kwargs,
        )
        if frames is not None:
            frames.append(latents.shape[1] - before)
        text = jnp.concatenate([text, caption.astype(text.dtype)], axis=1)
    return latents
