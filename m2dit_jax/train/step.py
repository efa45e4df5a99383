"""The jitted train step: micro-batched gradients, clipping, AdamW, EMA, non-finite skipping.

``make_train_step`` returns ``step(state, batch) -> (state, metrics)`` compiled with explicit
in/out shardings and the state donated. A non-finite loss or gradient norm leaves params,
optimizer state and EMA untouched, bumps ``nonfinite.total`` / ``nonfinite.run`` and sets
``metrics["skipped"]``; a finite step resets ``nonfinite.run`` to 0.

With ``lora`` (a ``m2dit_jax.train.lora.LoraSpec``) ``state["params"]`` are the adapters: the
model runs on ``lora.merge(state["base"], adapters)`` formed inside the step (every
micro-batch; with ``lora.dropout > 0`` on the base with unmerged, dropout-ing branches, see
``lora.bind_for_training``), gradients, clipping, AdamW and EMA see the adapters only, and
``state["base"]`` passes through untouched (donated, so aliased in place).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from m2dit_jax.sharding import named_sharding
from m2dit_jax.train.optimizer import ema_update
from m2dit_jax.train.state import ModelParts

# Batch entries the loss reads; everything else (captions, ids, attributes) stays on the host.
DEVICE_KEYS = ("latents", "text_embeds", "cond")
# Host batches may carry per-scene frame counts (B, S) under this key (scenes of their own
# lengths); the step for that layout is compiled with them static (``batch_scene_frames``).
SCENE_FRAMES_KEY = "scene_frames"
# Packed rows carry the scenes of each packed sample (B, P) under this key, and the fraction
# of the token budget the row fills (B,) under PACK_FILL_KEY (reported, never on device).
SAMPLES_KEY = "sample_scenes"
PACK_FILL_KEY = "pack_fill"


def batch_scene_frames(batch: dict[str, Any]) -> tuple[int, ...] | None:
    """The batch's per-scene latent frame counts as a static tuple, or None for equal scenes.

    Every row must share them (the data pipeline buckets samples of equal layout); a batch
    mixing layouts raises ValueError naming the fix.
    """
    if SCENE_FRAMES_KEY not in batch:
        return None
    import numpy as np

    rows = np.asarray(batch[SCENE_FRAMES_KEY])
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"batch {SCENE_FRAMES_KEY!r} must be (B, S) ints, got shape {rows.shape}")
    if not (rows == rows[:1]).all():
        raise ValueError(
            f"batch rows have different per-scene frame counts {np.unique(rows, axis=0).tolist()}; "
            "one step compiles one layout: group samples of equal layout into a batch "
            "(data bucketing, data.ragged)"
        )
    counts = tuple(int(f) for f in rows[0])
    return None if len(set(counts)) == 1 and SAMPLES_KEY not in batch else counts


def batch_samples(batch: dict[str, Any]) -> tuple[int, ...] | None:
    """The batch's packing (scenes per packed sample) as a static tuple; None when unpacked.

    Every row must share it (the packer gives all rows of a batch one plan).
    """
    if SAMPLES_KEY not in batch:
        return None
    import numpy as np

    rows = np.asarray(batch[SAMPLES_KEY])
    if rows.ndim != 2 or not (rows == rows[:1]).all():
        raise ValueError(
            f"batch {SAMPLES_KEY!r} must be (B, P) with equal rows (one packing plan per "
            f"batch), got {rows.tolist()}"
        )
    sizes = tuple(int(n) for n in rows[0])
    return None if len(sizes) == 1 else sizes


LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def batch_shardings(mesh: Mesh, batch: dict[str, Any]) -> dict[str, Any]:
    """Leading axis over (data, fsdp); the rest replicated."""
    return {k: named_sharding(mesh, ("batch",) + (None,) * (v.ndim - 1)) for k, v in batch.items()}


def _split_microbatches(batch: dict[str, jax.Array], accum: int) -> dict[str, jax.Array]:
    """(B, ...) -> (accum, B/accum, ...) with micro-batch i = rows i, i+accum, ...

    Strided so that every micro-batch stays evenly spread over the data-parallel devices.
    """

    def split(x):
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return {k: split(v) for k, v in batch.items()}


def make_train_step(
    parts: ModelParts,
    tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    loss_fn: LossFn,
    *,
    state_shardings: Any,
    batch_sharding: Any,
    grad_accum_steps: int = 1,
    ema_decay: float = 0.0,
    donate: bool = True,
    lora: Any = None,
) -> Callable[[Any, dict[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]:
    """Compiles one optimizer step.

    Args:
      parts: graphdef + non-param state to rebuild the model from params.
      tx: the optax transformation (clipping + AdamW).
      lr_schedule: for the logged learning rate.
      loss_fn: ``loss_fn(model, batch, rng) -> (loss, metrics)`` with metrics holding at least
        ``loss`` and ``loss_per_scene`` (S,).
      state_shardings / batch_sharding: explicit jit shardings.
      grad_accum_steps: micro-batches per step; gradients and metrics are averaged.
      ema_decay: EMA coefficient (0 = no EMA update).
      lora: a ``LoraSpec``: train adapters on the frozen ``state["base"]`` (None = all params).
    """
    accum = int(grad_accum_steps)
    if lora is not None:
        from m2dit_jax.train.lora import bind_for_training

    def grads_of(params, batch, rng, base=None):
        def objective(p):
            if lora is not None:
                return loss_fn(bind_for_training(parts, base, p, lora, rng), batch, rng)
            return loss_fn(parts.bind(p), batch, rng)

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return grads, metrics

    def step(state, batch):
        root = jax.random.wrap_key_data(state["rng"])
        step_rng = jax.random.fold_in(root, state["step"])
        params = state["params"]
        base = state.get("base")
        if accum == 1:
            grads, metrics = grads_of(params, batch, step_rng, base)
        else:
            micro = _split_microbatches(batch, accum)

            def body(carry, xs):
                g_sum, m_sum = carry
                i, mb = xs
                g, m = grads_of(params, mb, jax.random.fold_in(step_rng, i), base)
                g_sum = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_sum, g)
                m_sum = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), m_sum, m)
                return (g_sum, m_sum), None

            g0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
            first = jax.tree.map(lambda x: x[0], micro)
            m_shape = jax.eval_shape(lambda: grads_of(params, first, step_rng, base)[1])
            m0 = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), m_shape)
            (g_sum, m_sum), _ = jax.lax.scan(body, (g0, m0), (jnp.arange(accum), micro))
            grads = jax.tree.map(lambda g, p: (g / accum).astype(p.dtype), g_sum, params)
            metrics = jax.tree.map(lambda m: m / accum, m_sum)

        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_ema = ema_update(state["ema"], new_params, ema_decay) if ema_decay else state["ema"]

        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        nonfinite = state["nonfinite"]
        new_state = {
            "step": state["step"] + 1,
            "params": keep(new_params, params),
            "opt_state": keep(new_opt, state["opt_state"]),
            "ema": keep(new_ema, state["ema"]),
            "rng": state["rng"],
            "nonfinite": {
                "total": nonfinite["total"] + (~finite).astype(jnp.int32),
                "run": jnp.where(finite, 0, nonfinite["run"] + 1).astype(jnp.int32),
            },
        }
        if base is not None:
            new_state["base"] = base
        out = dict(metrics)
        out.update(
            grad_norm=grad_norm,
            learning_rate=lr_schedule(state["step"]),
            skipped=~finite,
            nonfinite_run=new_state["nonfinite"]["run"],
            nonfinite_total=new_state["nonfinite"]["total"],
        )
        return new_state, out

    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,) if donate else (),
    )
