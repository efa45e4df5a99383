"""The CogVideoX noise schedule (v-prediction, scaled-linear betas, SNR shift, zero terminal SNR).

``CogVideoXSchedule`` is a frozen pytree: the per-timestep tables are jnp leaves (usable under
``jit``), the construction settings are static fields. Samplers recompute their per-step
coefficients from the static settings in float64 NumPy at trace time (see
``alphas_cumprod_f64``), which is what keeps them within float32 round-off of diffusers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")


@functools.lru_cache(maxsize=32)
def _alphas_cumprod_f64(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    snr_shift_scale: float,
    rescale_zero_terminal_snr: bool,
) -> np.ndarray:
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    abar = np.cumprod(1.0 - betas)
    # SNR shift: divides the signal-to-noise ratio abar / (1 - abar) by snr_shift_scale.
    abar = abar / (snr_shift_scale + (1.0 - snr_shift_scale) * abar)
    if rescale_zero_terminal_snr:
        # Shift and scale sqrt(abar) so the last step has exactly zero signal, first unchanged.
        root = np.sqrt(abar)
        first, last = root[0], root[-1]
        root = (root - last) * (first / (first - last))
        abar = root**2
    abar.setflags(write=False)
    return abar


def _gather(table: jax.Array, timesteps: Any, ndim: int) -> jax.Array:
    """table[timesteps] reshaped to broadcast against an array of rank ``ndim``.

    ``timesteps`` of shape (B,) or (B, S) broadcasts over the leading axes; the rest are 1.
    """
    t = jnp.asarray(timesteps)
    values = table[t.astype(jnp.int32)]
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CogVideoXSchedule:
    """Noise schedule tables for ``num_train_timesteps`` discrete steps.

    Leaves (float32, shape (num_train_timesteps,)): ``alphas_cumprod`` (abar_t),
    ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``. Build with ``create``.

    Forward process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps;
    velocity target:  v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0.
    """

    alphas_cumprod: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    num_train_timesteps: int = dataclasses.field(default=1000, metadata=dict(static=True))
    beta_start: float = dataclasses.field(default=0.00085, metadata=dict(static=True))
    beta_end: float = dataclasses.field(default=0.012, metadata=dict(static=True))
    snr_shift_scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))
    rescale_zero_terminal_snr: bool = dataclasses.field(default=True, metadata=dict(static=True))
    timestep_spacing: str = dataclasses.field(default="trailing", metadata=dict(static=True))

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        snr_shift_scale: float = 1.0,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        rescale_zero_terminal_snr: bool = True,
        timestep_spacing: str = "trailing",
    ) -> CogVideoXSchedule:
        """The released CogVideoX scheduler settings; snr_shift_scale 1.0 = 5B, 3.0 = 2B.

        The default (1.0) is the 5B setting that Mask²DiT is released with.
        """
        if not isinstance(num_train_timesteps, (int, np.integer)) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps}")
        if not 0.0 < beta_start < beta_end < 1.0:
            raise ValueError(
                f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, "
                f"beta_end={beta_end}"
            )
        if not snr_shift_scale > 0:
            raise ValueError(f"snr_shift_scale must be positive, got {snr_shift_scale}")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}"
            )
        abar = _alphas_cumprod_f64(
            int(num_train_timesteps),
            float(beta_start),
            float(beta_end),
            float(snr_shift_scale),
            bool(rescale_zero_terminal_snr),
        )
        return cls(
            alphas_cumprod=jnp.asarray(abar, jnp.float32),
            sqrt_alphas_cumprod=jnp.asarray(np.sqrt(abar), jnp.float32),
            sqrt_one_minus_alphas_cumprod=jnp.asarray(np.sqrt(1.0 - abar), jnp.float32),
            num_train_timesteps=int(num_train_timesteps),
            beta_start=float(beta_start),
            beta_end=float(beta_end),
            snr_shift_scale=float(snr_shift_scale),
            rescale_zero_terminal_snr=bool(rescale_zero_terminal_snr),
            timestep_spacing=timestep_spacing,
        )

    @classmethod
    def for_model(cls, size: str) -> CogVideoXSchedule:
        """Released settings for a CogVideoX size: "2b" (SNR shift 3.0) or "5b" (1.0)."""
        shifts = {"2b": 3.0, "5b": 1.0}
        key = str(size).lower()
        if key not in shifts:
            raise ValueError(f"unknown CogVideoX size {size!r}; known: {sorted(shifts)}")
        return cls.create(snr_shift_scale=shifts[key])

    def alphas_cumprod_f64(self) -> np.ndarray:
        """(num_train_timesteps,) float64 abar, recomputed from the static settings."""
        return _alphas_cumprod_f64(
            self.num_train_timesteps,
            self.beta_start,
            self.beta_end,
            self.snr_shift_scale,
            self.rescale_zero_terminal_snr,
        )

    # ------------------------------------------------------------------ inference timesteps
    def timesteps(self, num_steps: int) -> np.ndarray:
        """(num_steps,) int64 inference timesteps, descending (trailing: 999, 979, ..., 19)."""
        n, total = num_steps, self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= total:
            raise ValueError(f"num_steps must be an int in [1, {total}], got {num_steps!r}")
        if self.timestep_spacing == "trailing":
            steps = np.round(np.arange(total, 0, -total / n)).astype(np.int64) - 1
        elif self.timestep_spacing == "leading":
            steps = (np.arange(0, n) * (total // n))[::-1].astype(np.int64)
        else:
            steps = np.linspace(0, total - 1, n).round()[::-1].astype(np.int64)
        return steps.copy()

    def previous_timesteps(self, num_steps: int) -> np.ndarray:
        """(num_steps,) the timestep each sampler step lands on; -1 means the clean end (abar 1).

        CogVideoX's schedulers step from t to t - num_train_timesteps // num_steps (not to
        the next listed timestep); for 50 steps both agree.
        """
        return self.timesteps(num_steps) - self.num_train_timesteps // num_steps

    # ------------------------------------------------------------------ forward process
    def add_noise(self, x0: jax.Array, noise: jax.Array, timesteps: Any) -> jax.Array:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

        x0/noise: (B, ...); timesteps: (B,) ints, or any shape matching x0's leading axes
        (e.g. (B, S) against per-scene (B, S, F, H, W, C)).
        """
        a = _gather(self.sqrt_alphas_cumprod, timesteps, x0.ndim).astype(x0.dtype)
        s = _gather(self.sqrt_one_minus_alphas_cumprod, timesteps, x0.ndim).astype(x0.dtype)
        return a * x0 + s * noise

    def velocity(self, x0: jax.Array, noise: jax.Array, timesteps: Any) -> jax.Array:
        """v target: sqrt(abar_t) noise - sqrt(1 - abar_t) x0 (shapes as in ``add_noise``)."""
        a = _gather(self.sqrt_alphas_cumprod, timesteps, x0.ndim).astype(x0.dtype)
        s = _gather(self.sqrt_one_minus_alphas_cumprod, timesteps, x0.ndim).astype(x0.dtype)
        return a * noise - s * x0

    def predict_x0(self, x_t: jax.Array, v: jax.Array, timesteps: Any) -> jax.Array:
        """Clean-sample estimate from a v-prediction: sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        a = _gather(self.sqrt_alphas_cumprod, timesteps, x_t.ndim).astype(x_t.dtype)
        s = _gather(self.sqrt_one_minus_alphas_cumprod, timesteps, x_t.ndim).astype(x_t.dtype)
        return a * x_t - s * v

    def predict_eps(self, x_t: jax.Array, v: jax.Array, timesteps: Any) -> jax.Array:
        """Noise estimate from a v-prediction: sqrt(1 - abar_t) x_t + sqrt(abar_t) v."""
        a = _gather(self.sqrt_alphas_cumprod, timesteps, x_t.ndim).astype(x_t.dtype)
        s = _gather(self.sqrt_one_minus_alphas_cumprod, timesteps, x_t.ndim).astype(x_t.dtype)
        return s * x_t + a * v
