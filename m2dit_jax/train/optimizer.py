"""AdamW with warm-up and decay schedules, global-norm clipping, and the EMA update."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(optim: Any, num_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to ``optim.learning_rate``, then constant / cosine / linear decay.

    The decay runs for ``optim.decay_steps`` (0 = to ``num_steps``) down to
    ``learning_rate * end_lr_factor``.
    """
    peak, warmup = float(optim.learning_rate), int(optim.warmup_steps)
    if optim.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        decay = int(optim.decay_steps) or max(int(num_steps) - warmup, 1)
        end = peak * float(optim.end_lr_factor)
        if optim.schedule == "cosine":
            after = optax.cosine_decay_schedule(peak, decay, alpha=float(optim.end_lr_factor))
        elif optim.schedule == "linear":
            after = optax.linear_schedule(peak, end, decay)
        else:
            raise ValueError(f"optim.schedule={optim.schedule!r} must be constant|cosine|linear")
    if warmup == 0:
        return after
    # optax's warm-up reaches the peak at step `warmup`; step 0 trains with peak/warmup, not 0.
    ramp = lambda step: peak * jnp.minimum(1.0, (step + 1.0) / warmup)
    return optax.join_schedules([ramp, after], [warmup])


def make_optimizer(optim: Any, num_steps: int) -> tuple[optax.GradientTransformation, Any]:
    """(optax transformation, lr schedule): clip_by_global_norm -> AdamW(schedule).

    Weight decay is decoupled (AdamW) and applied to every parameter, as in the release.
    """
    schedule = learning_rate_schedule(optim, num_steps)
    mu_dtype = jnp.dtype(optim.mu_dtype) if optim.mu_dtype else None
    parts = []
    if float(optim.clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(optim.clip_norm)))
    parts.append(
        optax.adamw(
            schedule,
            b1=float(optim.b1),
            b2=float(optim.b2),
            eps=float(optim.eps),
            weight_decay=float(optim.weight_decay),
            mu_dtype=mu_dtype,
        )
    )
    return optax.chain(*parts), schedule


def ema_update(ema: Any, params: Any, decay: float | jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params, computed in f32 and stored in ema's dtype."""

    def one(e, p):
        new = decay * e.astype(jnp.float32) + (1.0 - decay) * p.astype(jnp.float32)
        return new.astype(e.dtype)

    return jax.tree.map(one, ema, params)
