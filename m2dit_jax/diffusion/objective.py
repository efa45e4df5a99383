"""The Mask²DiT training objective: v-prediction MSE with optional conditional scenes (mask 2).

A batch holds S-scene samples, latents (B, S*F, H, W, C) with scenes concatenated along the
frame axis and captions (B, S*T, D) concatenated in the same scene order. One timestep t is
shared by all scenes of a sample. A *conditional* sample (mask 2) keeps its condition scenes
exactly clean and feeds them t = 0; only its target scene is noised and scored.

``cond_mask_mode="causal_conditions"`` (our extension, for the cached scene extension of
``generation.extend``): conditional samples run the model with the causal-condition attention
mask (conditions attend only among themselves). The mask is part of the static layout while
mask 2 is drawn at random, so in this mode mask 2 is drawn **per batch**: with probability
``p_cond`` the whole batch is conditional (target = the last scene), otherwise the whole batch
is joint. The two model calls (causal layout / mask 1) are the two branches of one
``lax.cond``, so a step costs one forward + backward either way, and every sample is still
conditional with probability ``p_cond`` (samples of one batch share the draw).

Scenes of their own lengths (``scene_frames=(F_1, .., F_S)``, static, shared by the batch):
latents are (B, F_1+..+F_S, H, W, C); each frame takes its scene's timestep and mask-2 role,
and a sample's loss is the mean squared error over the tokens of its generated scenes (for
equal scenes this is the mean of the per-scene errors, the formula used there).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from m2dit_jax.diffusion.schedule import CogVideoXSchedule
from m2dit_jax.layout import check_generate_mask
from m2dit_jax.rng import stream

TARGET_SCENES = ("last", "random")
COND_MASK_MODES = ("mask2dit", "causal_conditions")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")
LOSS_WEIGHTINGS = ("none", "min_snr")

Denoiser = Callable[..., jax.Array]


def split_scenes(latents: jax.Array, num_scenes: int) -> jax.Array:
    """(B, S*F, H, W, C) -> (B, S, F, H, W, C)."""
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, S*F, H, W, C), got shape {latents.shape}")
    b, sf = latents.shape[:2]
    if num_scenes < 1 or sf % num_scenes:
        raise ValueError(
            f"latents frame axis {sf} is not divisible by num_scenes={num_scenes}: "
            "scenes must be concatenated along axis 1 with equal frame counts"
        )
    return latents.reshape(b, num_scenes, sf // num_scenes, *latents.shape[2:])


def frame_scenes(values: jax.Array, scene_frames: tuple[int, ...]) -> jax.Array:
    """(B, S, ...) per-scene values -> (B, F_1+..+F_S, ...): each frame gets its scene's."""
    counts = np.asarray(scene_frames)
    return jnp.repeat(values, counts, axis=1, total_repeat_length=int(counts.sum()))


def scene_means(values: jax.Array, scene_frames: tuple[int, ...]) -> jax.Array:
    """(B, F_1+..+F_S) per-frame values -> (B, S) per-scene means."""
    ids = np.repeat(np.arange(len(scene_frames)), scene_frames)
    sums = jax.ops.segment_sum(values.T, ids, num_segments=len(scene_frames)).T
    return sums / jnp.asarray(scene_frames, values.dtype)


def check_scene_frames(scene_frames, num_scenes: int, frames: int) -> tuple[int, ...] | None:
    """``scene_frames`` as a tuple of S positive ints summing to ``frames`` (None stays None;
    equal counts are returned as None: the equal layout)."""
    if scene_frames is None:
        return None
    counts = tuple(int(f) for f in np.asarray(scene_frames).reshape(-1))
    if len(counts) != num_scenes or min(counts) <= 0 or sum(counts) != frames:
        raise ValueError(
            f"scene_frames {counts} must be {num_scenes} positive per-scene latent frame counts "
            f"summing to the latents' {frames} frames"
        )
    return None if len(set(counts)) == 1 else counts


def merge_scenes(latents: jax.Array) -> jax.Array:
    """(B, S, F, H, W, C) -> (B, S*F, H, W, C)."""
    b, s, f = latents.shape[:3]
    return latents.reshape(b, s * f, *latents.shape[3:])


def sample_generate_mask(
    rng: jax.Array,
    batch_size: int,
    num_scenes: int,
    *,
    p_cond: float,
    target_scene: str = "last",
) -> jax.Array:
    """(B, S) bool mask 2, True = generated. Each sample is conditional with prob ``p_cond``.

    A conditional sample generates one target scene — the last (release), or for
    ``target_scene="random"`` one drawn uniformly among scenes 2..S (an extension of the
    release) — and keeps the others as clean conditions. Other samples generate every scene.
    """
    if target_scene not in TARGET_SCENES:
        raise ValueError(f"target_scene must be one of {TARGET_SCENES}, got {target_scene!r}")
    if isinstance(p_cond, (int, float)) and not 0.0 <= p_cond <= 1.0:
        raise ValueError(f"p_cond must be in [0, 1], got {p_cond}")
    if isinstance(p_cond, (int, float)) and p_cond > 0 and num_scenes < 2:
        raise ValueError(f"p_cond={p_cond} needs num_scenes >= 2 (a condition and a target)")
    k_cond, k_target = jax.random.split(rng)
    is_cond = jax.random.uniform(k_cond, (batch_size,)) < p_cond
    if target_scene == "last" or num_scenes < 2:
        target = jnp.full((batch_size,), num_scenes - 1, jnp.int32)
    else:
        target = jax.random.randint(k_target, (batch_size,), 1, num_scenes)
    only_target = jnp.arange(num_scenes)[None, :] == target[:, None]
    return jnp.where(is_cond[:, None], only_target, True)


def check_cond_mask_mode(cond_mask_mode: str, target_scene: str = "last") -> None:
    if cond_mask_mode not in COND_MASK_MODES:
        raise ValueError(f"cond_mask_mode must be one of {COND_MASK_MODES}, got {cond_mask_mode!r}")
    if cond_mask_mode == "causal_conditions" and target_scene != "last":
        raise ValueError(
            "cond_mask_mode='causal_conditions' needs target_scene='last' (the conditions "
            f"must be the leading scenes), got target_scene={target_scene!r}"
        )


def _check_causal_mask(gen, num_scenes: int) -> None:
    """Concrete masks only: every row all-generated or the extension mask, rows agreeing."""
    import numpy as np

    rows = np.asarray(gen, bool)
    ext = np.arange(num_scenes) == num_scenes - 1
    joint = rows.all(axis=1)
    cond = (rows == ext).all(axis=1)
    if not (joint | cond).all() or (joint.any() and cond.any()):
        raise ValueError(
            "cond_mask_mode='causal_conditions' needs a batch-uniform mask 2: every row all "
            f"True (joint) or every row {ext.tolist()} (the last scene generated); got {rows}"
        )


def sample_timesteps(
    key: jax.Array,
    shape: tuple[int, ...],
    num_train_timesteps: int,
    *,
    sampling: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> jax.Array:
    """Training timesteps, int32 of ``shape``, in [0, num_train_timesteps).

    ``"uniform"``: t ~ U{0..T-1} (CogVideoX / the release). ``"logit_normal"`` (SD3's
    logit-normal density): t = floor(T * sigmoid(logit_mean + logit_std * z)), z ~ N(0, 1),
    which spends fewer steps at the nearly clean and the nearly pure-noise ends.
    """
    check_timestep_sampling(sampling, logit_std)
    if sampling == "uniform":
        return jax.random.randint(key, shape, 0, num_train_timesteps, dtype=jnp.int32)
    u = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, shape, jnp.float32))
    t = jnp.floor(u * num_train_timesteps).astype(jnp.int32)
    return jnp.clip(t, 0, num_train_timesteps - 1)


def check_timestep_sampling(sampling: str, logit_std: float = 1.0) -> None:
    if sampling not in TIMESTEP_SAMPLINGS:
        raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLINGS}, got {sampling!r}")
    if sampling == "logit_normal" and not logit_std > 0:
        raise ValueError(f"logit_std must be > 0 for logit_normal timesteps, got {logit_std}")


def check_loss_weighting(weighting: str, min_snr_gamma: float = 5.0) -> None:
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
    if weighting == "min_snr" and not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {min_snr_gamma}")


def loss_weights(
    schedule: CogVideoXSchedule,
    timesteps: jax.Array,
    weighting: str = "none",
    min_snr_gamma: float = 5.0,
) -> jax.Array:
    """Per-sample weights of the v-prediction MSE for ``timesteps`` (any shape), float32.

    ``"none"``: 1. ``"min_snr"`` (Hang et al. 2023, Min-SNR-gamma): the x0-error weight
    min(SNR, gamma), i.e. min(SNR, gamma) / (SNR + 1) on the v-error (||v - v'||^2 =
    (SNR + 1) ||x0 - x0'||^2), so the nearly clean steps stop dominating the gradient.
    """
    check_loss_weighting(weighting, min_snr_gamma)
    t = jnp.asarray(timesteps, jnp.int32)
    if weighting == "none":
        return jnp.ones(t.shape, jnp.float32)
    abar = schedule.alphas_cumprod[t].astype(jnp.float32)
    snr = abar / jnp.maximum(1.0 - abar, 1e-12)
    return jnp.minimum(snr, min_snr_gamma) / (snr + 1.0)


def diffusion_loss(
    model: Denoiser,
    latents: jax.Array,
    text_embeds: jax.Array,
    noise: jax.Array,
    timesteps: jax.Array,
    generate_mask: jax.Array,
    *,
    schedule: CogVideoXSchedule,
    num_scenes: int,
    cond_mask_mode: str = "mask2dit",
    scene_frames: tuple[int, ...] | None = None,
    samples: tuple[int, ...] | None = None,
    loss_weighting: str = "none",
    min_snr_gamma: float = 5.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Deterministic core of ``loss_fn`` (all randomness passed in).

    Args:
      model: ``model(latents, text_embeds, timesteps (B, S), *, num_scenes) -> v``.
      latents: (B, S*F, H, W, C) clean latents x0.
      text_embeds: (B, S*T, D) per-scene captions, concatenated in scene order.
      noise: same shape as ``latents``.
      timesteps: (B,) int, the sample's t (shared by its generated scenes).
      generate_mask: (B, S) bool mask 2; False scenes stay clean and get t = 0.
      cond_mask_mode: "mask2dit" (the method: attention unchanged by mask 2) or
        "causal_conditions": a conditional batch runs the model with
        ``causal_conditions=S-1``; ``generate_mask`` must then be batch-uniform (all rows
        joint or all rows the last-scene extension mask; checked when concrete).
      scene_frames: per-scene latent frames (static) for scenes of different lengths;
        latents are then (B, F_1+..+F_S, H, W, C). None = S equal scenes.
      samples: packed rows (static): scenes per packed sample, summing to S (then
        ``scene_frames`` gives all S scenes' frames, and ``timesteps`` is (B, P): one t per
        packed sample); the loss is the mean over the B*P samples of each one's MSE per token
        of its generated scenes, ``loss_per_scene`` is indexed by the scene's position in its
        sample.
      loss_weighting, min_snr_gamma: each sample's MSE times ``loss_weights`` of its t
        ("none": unweighted, the release).

    Returns:
      (loss, metrics): loss is the batch mean of each sample's MSE over its generated scenes;
      metrics has ``loss``, ``loss_per_scene`` (S,) (mean over samples generating that scene,
      0 where none does), ``num_cond`` (conditional samples) and ``t_mean``.
    """
    check_loss_weighting(loss_weighting, min_snr_gamma)
    weigh = None  # "none": the release's unweighted loss, no extra ops
    if loss_weighting != "none":
        weigh = functools.partial(
            loss_weights, schedule, weighting=loss_weighting, min_snr_gamma=min_snr_gamma
        )
    if samples is not None:
        return _framewise_loss(
            model, latents, text_embeds, noise, timesteps, generate_mask,
            schedule=schedule, num_scenes=num_scenes, cond_mask_mode=cond_mask_mode,
            scene_frames=scene_frames, samples=samples, weigh=weigh,
        )  # fmt: skip
    scene_frames = check_scene_frames(scene_frames, num_scenes, latents.shape[1])
    if scene_frames is not None:
        return _framewise_loss(
            model, latents, text_embeds, noise, timesteps, generate_mask,
            schedule=schedule, num_scenes=num_scenes, cond_mask_mode=cond_mask_mode,
            scene_frames=scene_frames, weigh=weigh,
        )  # fmt: skip
    # f32 whatever the storage dtype: fp16 noise has ~1k distinct values and no tails.
    x0 = split_scenes(jnp.asarray(latents, jnp.float32), num_scenes)
    eps = split_scenes(jnp.asarray(noise, jnp.float32), num_scenes)
    b = x0.shape[0]
    gen = jnp.asarray(generate_mask, bool)
    if gen.shape != (b, num_scenes):
        raise ValueError(f"generate mask must be (B, S)=({b}, {num_scenes}), got {gen.shape}")
    t = jnp.asarray(timesteps, jnp.int32)
    if t.shape != (b,):
        raise ValueError(f"timesteps must be (B,)=({b},), got {t.shape}")

    noisy = schedule.add_noise(x0, eps, t)
    gen_b = gen.reshape(gen.shape + (1,) * (x0.ndim - 2))
    # Conditions enter exactly clean (not add_noise at t=0: abar_0 < 1).
    model_in = jnp.where(gen_b, noisy, x0)
    target = schedule.velocity(x0, eps, t)
    scene_t = t[:, None] * gen.astype(jnp.int32)

    pred = _model_call(
        model, cond_mask_mode, gen, merge_scenes(model_in), text_embeds, scene_t, num_scenes
    )
    if pred.shape != latents.shape:
        raise ValueError(
            f"model output shape {pred.shape} != latents shape {latents.shape}: "
            "the v-prediction must have the latent channel count"
        )
    pred = split_scenes(pred, num_scenes).astype(jnp.float32)
    err = jnp.mean(jnp.square(pred - target.astype(jnp.float32)), axis=(2, 3, 4, 5))  # (B, S)

    w = gen.astype(jnp.float32)
    per_sample = jnp.sum(err * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
    if weigh is not None:
        per_sample = per_sample * weigh(t)
    return _loss_and_metrics(per_sample, err, gen, t)


def _loss_and_metrics(per_sample, err, gen, t) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Batch mean of the per-sample losses (B,) and the metrics (err: (B, S) per-scene MSE)."""
    w = gen.astype(jnp.float32)
    loss = jnp.mean(per_sample)
    per_scene = jnp.sum(err * w, axis=0) / jnp.maximum(jnp.sum(w, axis=0), 1.0)
    metrics = {
        "loss": loss,
        "loss_per_scene": per_scene,
        "num_cond": jnp.sum(~jnp.all(gen, axis=1)).astype(jnp.int32),
        "t_mean": jnp.mean(t.astype(jnp.float32)),
    }
    return loss, metrics


def _model_call(model, cond_mask_mode, gen, x_in, text_embeds, scene_t, num_scenes, **kwargs):
    """The model's prediction under the attention ``cond_mask_mode`` asks for (see module)."""
    check_cond_mask_mode(cond_mask_mode)
    if cond_mask_mode == "causal_conditions" and num_scenes > 1:
        if not isinstance(gen, jax.core.Tracer):
            _check_causal_mask(gen, num_scenes)

        def causal(x, text, st):
            return model(
                x, text, st, num_scenes=num_scenes, causal_conditions=num_scenes - 1, **kwargs
            )

        def joint(x, text, st):
            return model(x, text, st, num_scenes=num_scenes, **kwargs)

        return jax.lax.cond(~jnp.all(gen), causal, joint, x_in, text_embeds, scene_t)
    return model(x_in, text_embeds, scene_t, num_scenes=num_scenes, **kwargs)


def _framewise_loss(
    model, latents, text_embeds, noise, timesteps, generate_mask, *,
    schedule, num_scenes, cond_mask_mode, scene_frames, samples=None, weigh=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:  # fmt: skip
    """``diffusion_loss`` with per-frame t and mask 2: scenes of different lengths
    (``scene_frames``, all S scenes) and packed samples (``samples``: scenes per sample;
    ``timesteps`` then (B, P), one t per sample, and the loss is per sample)."""
    x0 = jnp.asarray(latents, jnp.float32)
    eps = jnp.asarray(noise, jnp.float32)
    b = x0.shape[0]
    sizes = tuple(samples) if samples is not None else (num_scenes,)
    gen = jnp.asarray(generate_mask, bool)
    if gen.shape != (b, num_scenes):
        raise ValueError(f"generate mask must be (B, S)=({b}, {num_scenes}), got {gen.shape}")
    t = jnp.asarray(timesteps, jnp.int32)
    if t.shape not in ((b,), (b, len(sizes))) or (samples is not None and t.ndim != 2):
        want = f"(B, P)=({b}, {len(sizes)})" if samples is not None else f"(B,)=({b},)"
        raise ValueError(f"timesteps must be {want}, got {t.shape}")
    scene_sample = np.repeat(np.arange(len(sizes)), sizes)  # (S,)
    t_scene = t[:, scene_sample] if t.ndim == 2 else jnp.broadcast_to(t[:, None], gen.shape)
    t_frame = frame_scenes(t_scene, scene_frames)  # (B, F_total)
    noisy = schedule.add_noise(x0, eps, t_frame)
    gen_f = frame_scenes(gen, scene_frames)  # (B, F_total)
    model_in = jnp.where(gen_f[:, :, None, None, None], noisy, x0)
    target = schedule.velocity(x0, eps, t_frame)
    scene_t = t_scene * gen.astype(jnp.int32)
    kwargs = {}
    if len(set(scene_frames)) > 1:
        kwargs["scene_frames"] = tuple(scene_frames)
    if samples is not None:
        kwargs["samples"] = tuple(samples)
    pred = _model_call(
        model, cond_mask_mode, gen, model_in, text_embeds, scene_t, num_scenes, **kwargs
    )
    if pred.shape != latents.shape:
        raise ValueError(
            f"model output shape {pred.shape} != latents shape {latents.shape}: "
            "the v-prediction must have the latent channel count"
        )
    err_f = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=(2, 3, 4))  # (B, F)
    w_f = gen_f.astype(jnp.float32)
    frame_sample = np.repeat(scene_sample, scene_frames)  # (F,)
    per = lambda x: jax.ops.segment_sum(x.T, frame_sample, num_segments=len(sizes)).T
    per_sample = per(err_f * w_f) / jnp.maximum(per(w_f), 1.0)  # (B, P)
    if weigh is not None:
        per_sample = per_sample * weigh(t).reshape(b, -1)
    err = scene_means(err_f, scene_frames)  # (B, S)
    if samples is None:
        return _loss_and_metrics(per_sample[:, 0], err, gen, t)
    # packed: metrics per sample (scene position inside its sample), B*P samples
    position = np.concatenate([np.arange(n) for n in sizes])
    width = max(sizes)
    onehot = jnp.asarray(np.eye(width, dtype=np.float32)[position])  # (S, width)
    w = gen.astype(jnp.float32)
    per_scene = ((err * w) @ onehot).sum(0) / jnp.maximum((w @ onehot).sum(0), 1.0)
    generated_all = jnp.stack(
        [jnp.all(gen[:, a : a + n], axis=1) for a, n in zip(np.cumsum((0,) + sizes[:-1]), sizes)],
        axis=1,
    )
    metrics = {
        "loss": jnp.mean(per_sample),
        "loss_per_scene": per_scene,
        "num_cond": jnp.sum(~generated_all).astype(jnp.int32),
        "t_mean": jnp.mean(t.astype(jnp.float32)),
    }
    return metrics["loss"], metrics


def sample_packed_generate_mask(
    rng: jax.Array, batch_size: int, samples: tuple[int, ...], *, p_cond: float
) -> jax.Array:
    """(B, S) bool mask 2 for packed rows: each packed sample (of more than one scene) is
    conditional with probability ``p_cond`` and then generates only its last scene."""
    sizes = tuple(samples)
    is_cond = jax.random.uniform(rng, (batch_size, len(sizes))) < p_cond
    is_cond = is_cond & jnp.asarray([n > 1 for n in sizes])[None]
    scene_sample = np.repeat(np.arange(len(sizes)), sizes)
    last = np.concatenate([np.arange(n) == n - 1 for n in sizes])
    return jnp.where(is_cond[:, scene_sample], jnp.asarray(last)[None], True)


def _packed_generate_mask(batch, key, b: int, samples, p_cond: float) -> jax.Array:
    """The batch's own ``cond`` (B, S of the row) when it carries one, else sampled per
    packed sample (``sample_packed_generate_mask``)."""
    if batch.get("cond") is not None:
        gen = batch["cond"]
        if not isinstance(gen, jax.core.Tracer):
            check_generate_mask(gen, sum(samples))
        return jnp.asarray(gen).astype(bool)
    return sample_packed_generate_mask(key, b, tuple(samples), p_cond=p_cond)


def _packed_options(samples, target_scene, cond_mask_mode, scene_frames, frames):
    """Checks a packed batch's options; returns (S of the row, scene_frames tuple)."""
    sizes = tuple(int(n) for n in samples)
    if target_scene != "last" or cond_mask_mode != "mask2dit":
        raise ValueError(
            "packed samples support target_scene='last' and cond_mask_mode='mask2dit' (the "
            f"conditions' mask is per extension window), got {target_scene!r}, {cond_mask_mode!r}"
        )
    n = sum(sizes)
    if scene_frames is None:
        if frames % n:
            raise ValueError(f"{frames} latent frames do not split into {n} packed scenes")
        scene_frames = (frames // n,) * n
    counts = tuple(int(f) for f in scene_frames)
    if len(counts) != n or sum(counts) != frames:
        raise ValueError(f"scene_frames {counts} must give {n} scenes summing to {frames} frames")
    return n, counts


def _generate_mask(
    batch, key, b, num_scenes, p_cond, target_scene, cond_mask_mode="mask2dit"
) -> jax.Array:
    """The batch's own ``cond`` (B, S) when it carries one, else sampled here (the one place
    mask 2 is sampled): per sample, or per batch for ``cond_mask_mode="causal_conditions"``."""
    if batch.get("cond") is not None:
        gen = batch["cond"]
        if not isinstance(gen, jax.core.Tracer):
            check_generate_mask(gen, num_scenes)  # clear errors when the mask is concrete
        return jnp.asarray(gen).astype(bool)
    if cond_mask_mode == "causal_conditions":
        one = sample_generate_mask(key, 1, num_scenes, p_cond=p_cond, target_scene=target_scene)
        return jnp.broadcast_to(one, (b, num_scenes))
    return sample_generate_mask(key, b, num_scenes, p_cond=p_cond, target_scene=target_scene)


def _drop_captions(text, key, num_scenes: int, caption_dropout: float) -> jax.Array:
    """Zeroes each scene's caption with probability ``caption_dropout`` (own key)."""
    if caption_dropout <= 0.0:
        return text
    b = text.shape[0]
    drop = jax.random.uniform(key, (b, num_scenes)) < caption_dropout
    tokens_per_scene = text.shape[1] // num_scenes
    keep = jnp.repeat(~drop, tokens_per_scene, axis=1)[..., None]
    return jnp.where(keep, text, jnp.zeros((), text.dtype))


def eval_loss_fn(
    model: Denoiser,
    batch: Mapping[str, Any],
    key: jax.Array,
    *,
    schedule: CogVideoXSchedule,
    num_scenes: int,
    p_cond: float = 0.0,
    target_scene: str = "last",
    cond_mask_mode: str = "mask2dit",
    scene_frames: tuple[int, ...] | None = None,
    samples: tuple[int, ...] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Deterministic held-out loss: fixed, evenly spaced timesteps and noise from ``key``.

    Sample i of a batch of B gets t = floor((i + 0.5) * T / B), so every batch covers the
    whole schedule; noise and mask 2 come from ``key`` alone (no caption dropout). With the
    same key and data two runs score their weights on identical inputs. Packed rows
    (``samples``): the B*P samples get the evenly spaced timesteps.
    """
    latents = jnp.asarray(batch["latents"]).astype(jnp.float32)
    b = latents.shape[0]
    n_t = schedule.num_train_timesteps
    noise = jax.random.normal(stream(key, "noise"), latents.shape, jnp.float32)
    if samples is not None:
        n, frames = _packed_options(
            samples, target_scene, cond_mask_mode, scene_frames, latents.shape[1]
        )
        p = len(samples)
        t = jnp.floor((jnp.arange(b * p) + 0.5) * n_t / (b * p)).astype(jnp.int32)
        gen = _packed_generate_mask(batch, stream(key, "mask2"), b, samples, p_cond)
        return diffusion_loss(
            model, latents, jnp.asarray(batch["text_embeds"]).astype(jnp.float32), noise,
            t.reshape(b, p), gen, schedule=schedule, num_scenes=n, scene_frames=frames,
            samples=tuple(samples),
        )  # fmt: skip
    t = jnp.floor((jnp.arange(b) + 0.5) * n_t / b).astype(jnp.int32)
    check_cond_mask_mode(cond_mask_mode, target_scene)
    gen = _generate_mask(
        batch, stream(key, "mask2"), b, num_scenes, p_cond, target_scene, cond_mask_mode
    )
    return diffusion_loss(
        model,
        latents,
        jnp.asarray(batch["text_embeds"]).astype(jnp.float32),
        noise,
        t,
        gen,
        schedule=schedule,
        num_scenes=num_scenes,
        cond_mask_mode=cond_mask_mode,
        scene_frames=scene_frames,
    )


def loss_fn(
    model: Denoiser,
    batch: Mapping[str, Any],
    rng: jax.Array,
    *,
    schedule: CogVideoXSchedule,
    num_scenes: int,
    p_cond: float = 0.0,
    target_scene: str = "last",
    caption_dropout: float = 0.0,
    cond_mask_mode: str = "mask2dit",
    scene_frames: tuple[int, ...] | None = None,
    samples: tuple[int, ...] | None = None,
    timestep_sampling: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    loss_weighting: str = "none",
    min_snr_gamma: float = 5.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mask²DiT v-prediction loss of one batch; jit- and ``nnx.value_and_grad``-friendly.

    Args:
      model: the denoiser (``Mask2DiT`` or any callable with its signature).
      batch: ``latents`` (B, S*F, H, W, C), ``text_embeds`` (B, S*T, D); optional ``cond``
        (B, S) bool mask 2 (True = generated) used as is, else sampled with ``p_cond``.
      rng: a PRNG key; the named streams (``m2dit_jax.rng``) "timesteps" (one t per sample,
        see ``sample_timesteps``), "noise", "mask2" and "caption_dropout" are derived from
        it, each once.
      schedule: the CogVideoX schedule.
      num_scenes: S.
      p_cond: probability that a sample is conditional (release stage 2: 0.5).
      target_scene: "last" (release) or "random" (uniform among scenes 2..S).
      caption_dropout: probability that a scene's caption is replaced by zero embeddings
        (each scene on its own), which trains the unconditional branch that classifier-free
        guidance needs; zeros are ``generate``'s default negative. The release uses 0.
      cond_mask_mode: "mask2dit" (release) or "causal_conditions" (conditional samples use
        the causal-condition attention mask; mask 2 drawn per batch, see the module doc;
        needs ``target_scene="last"``).
      scene_frames: per-scene latent frame counts of the batch (static) when scenes differ
        in length; None = equal scenes (see ``diffusion_loss``).
      samples: packed rows (static): scenes per packed sample; the row's scene count is
        their sum (``num_scenes`` is then the size of one unpacked sample and unused), each
        packed sample draws its own t, mask 2 and caption dropout (see ``diffusion_loss``).
      timestep_sampling, logit_mean, logit_std: the t density (``sample_timesteps``;
        "uniform" is the release's).
      loss_weighting, min_snr_gamma: per-sample loss weights (``loss_weights``; "none" is
        the release's).

    Returns:
      (loss scalar, metrics) — see ``diffusion_loss``.
    """
    for key in ("latents", "text_embeds"):
        if key not in batch:
            raise ValueError(f"batch is missing {key!r}; has {sorted(batch)}")
    if not 0.0 <= caption_dropout <= 1.0:
        raise ValueError(f"caption_dropout must be in [0, 1], got {caption_dropout}")
    # Diffusion maths in f32 whatever the storage dtype (fp16/bf16 latent shards).
    latents = jnp.asarray(batch["latents"]).astype(jnp.float32)
    b = latents.shape[0]
    weighting = dict(loss_weighting=loss_weighting, min_snr_gamma=min_snr_gamma)
    draw_t = functools.partial(
        sample_timesteps,
        stream(rng, "timesteps"),
        num_train_timesteps=schedule.num_train_timesteps,
        sampling=timestep_sampling,
        logit_mean=logit_mean,
        logit_std=logit_std,
    )
    if samples is not None:
        n, frames = _packed_options(
            samples, target_scene, cond_mask_mode, scene_frames, latents.shape[1]
        )
        t = draw_t((b, len(samples)))
        noise = jax.random.normal(stream(rng, "noise"), latents.shape, jnp.float32)
        gen = _packed_generate_mask(batch, stream(rng, "mask2"), b, samples, p_cond)
        text = jnp.asarray(batch["text_embeds"]).astype(jnp.float32)
        text = _drop_captions(text, stream(rng, "caption_dropout"), n, caption_dropout)
        return diffusion_loss(
            model, latents, text, noise, t, gen, schedule=schedule, num_scenes=n,
            scene_frames=frames, samples=tuple(samples), **weighting,
        )  # fmt: skip
    t = draw_t((b,))
    noise = jax.random.normal(stream(rng, "noise"), latents.shape, jnp.float32)
    check_cond_mask_mode(cond_mask_mode, target_scene)
    gen = _generate_mask(
        batch, stream(rng, "mask2"), b, num_scenes, p_cond, target_scene, cond_mask_mode
    )
    text = jnp.asarray(batch["text_embeds"]).astype(jnp.float32)
    text = _drop_captions(text, stream(rng, "caption_dropout"), num_scenes, caption_dropout)
    return diffusion_loss(
        model,
        latents,
        text,
        noise,
        t,
        gen,
        schedule=schedule,
        num_scenes=num_scenes,
        cond_mask_mode=cond_mask_mode,
        scene_frames=scene_frames,
        **weighting,
    )
