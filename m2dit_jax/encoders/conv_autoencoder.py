"""A small learned video autoencoder for pixel-space demos: space-to-depth fold + conv codec.

``ConvAutoencoder`` is the demo's stand-in for CogVideoX's VAE: video (B, F, H, W, 3) uint8 ->
the lossless space-to-depth fold (``SpaceToDepthAutoencoder(patch_t, patch_s)``) -> a conv
encoder that halves the grid once more -> latents (B, F/patch_t, H/(2 patch_s),
W/(2 patch_s), C); the conv decoder maps latents back to the fold and so to pixels. Each latent
frame is coded on its own (no temporal mixing beyond the fold).

Why it exists: on the plain fold a small DiT learns colour, motion and the *amount* of each
shape but renders ragged blobs, because every pixel of the outline is its job. Here the
decoder renders the outline: it is trained (``train_conv_autoencoder``) to reconstruct clips
from latents with Gaussian noise of a random level up to ``latent_noise`` added, so nearby
latents decode to the same clean object and the DiT only has to land near the right code
(README "Making motion and shape visible").

Weights live in one ``.npz`` file (``save`` / ``load``): the conv kernels plus the fold's
``patch_t`` / ``patch_s``, ``channels``, ``hidden`` and the latent ``scale`` (latents are
multiplied by it so that their RMS is ``TARGET_RMS``, that of the plain fold's clips).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from m2dit_jax.encoders.pixel import SpaceToDepthAutoencoder

FORMAT = "m2dit_conv_autoencoder"
TARGET_RMS = 0.7
_ENCODER = ("e1", "e2", "down", "e3", "e4")
_DECODER = ("d1", "d2", "up", "d3", "d4")


def _conv_init(key: jax.Array, k: int, cin: int, cout: int) -> dict[str, jax.Array]:
    w = jax.random.normal(key, (k, k, cin, cout)) * np.sqrt(2.0 / (k * k * cin))
    return {"w": w, "b": jnp.zeros((cout,))}


def _conv(p: dict[str, jax.Array], x: jax.Array, stride: int = 1) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x, p["w"], (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + p["b"]


def init_params(key: jax.Array, fold_channels: int, channels: int, hidden: int) -> dict:
    """Random weights: encoder fold -> hidden -> (stride 2) -> channels; decoder the mirror."""
    k = jax.random.split(key, 10)
    h, h2 = hidden, 2 * hidden
    return {
        "e1": _conv_init(k[0], 3, fold_channels, h),
        "e2": _conv_init(k[1], 3, h, h),
        "down": _conv_init(k[2], 2, h, h),
        "e3": _conv_init(k[3], 3, h, h),
        "e4": _conv_init(k[4], 1, h, channels),
        "d1": _conv_init(k[5], 3, channels, h2),
        "d2": _conv_init(k[6], 3, h2, h2),
        "up": _conv_init(k[7], 1, h2, 4 * h),
        "d3": _conv_init(k[8], 3, h, h),
        "d4": _conv_init(k[9], 3, h, fold_channels),
    }


def encode_fold(params: dict, x: jax.Array) -> jax.Array:
    """(N, h, w, fold channels) -> (N, h/2, w/2, C) unscaled latents."""
    g = jax.nn.gelu
    x = g(_conv(params["e1"], x))
    x = g(_conv(params["e2"], x))
    x = g(_conv(params["down"], x, 2))
    x = g(_conv(params["e3"], x))
    return _conv(params["e4"], x)


def decode_fold(params: dict, z: jax.Array) -> jax.Array:
    """(N, h/2, w/2, C) unscaled latents -> (N, h, w, fold channels)."""
    g = jax.nn.gelu
    x = g(_conv(params["d1"], z))
    x = g(_conv(params["d2"], x))
    x = _conv(params["up"], x)  # depth to space: (n, a, b, 4c) -> (n, 2a, 2b, c)
    n, a, b, c4 = x.shape
    x = x.reshape(n, a, b, 2, 2, c4 // 4).transpose(0, 1, 3, 2, 4, 5)
    x = g(x.reshape(n, 2 * a, 2 * b, c4 // 4))
    x = g(_conv(params["d3"], x))
    return _conv(params["d4"], x)


class ConvAutoencoder:
    """Space-to-depth fold + learned conv codec (see the module doc); numpy in and out."""

    kind = "conv"

    def __init__(self, params: dict, *, patch_t: int, patch_s: int, scale: float = 1.0):
        self.fold = SpaceToDepthAutoencoder(patch_t, patch_s)
        self.patch_t, self.patch_s = int(patch_t), int(patch_s)
        self.params = jax.tree.map(jnp.asarray, params)
        self.channels = int(self.params["e4"]["w"].shape[-1])
        self.hidden = int(self.params["e1"]["w"].shape[-1])
        if self.params["e1"]["w"].shape[2] != self.fold.latent_channels:
            raise ValueError(
                f"autoencoder weights take {self.params['e1']['w'].shape[2]} fold channels, "
                f"patch_t={patch_t} / patch_s={patch_s} give {self.fold.latent_channels}"
            )
        self.scale = float(scale)
        self._encode = jax.jit(lambda p, x: encode_fold(p, x) * self.scale)
        self._decode = jax.jit(lambda p, z: decode_fold(p, z / self.scale))

    @property
    def latent_channels(self) -> int:
        return self.channels

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        f, h, w, _ = self.fold.latent_shape(frames, height, width)
        if h % 2 or w % 2:
            raise ValueError(
                f"video {height}x{width} folds to {h}x{w}, which the autoencoder cannot halve: "
                f"height and width must be multiples of {2 * self.patch_s}"
            )
        return f, h // 2, w // 2, self.channels

    def encode(self, video, *, block: bool = True) -> np.ndarray | jax.Array:
        """(B, F, H, W, 3) uint8 -> (B, F/patch_t, H/(2 patch_s), W/(2 patch_s), C) float32.

        ``block=False`` returns the jax.Array still being computed instead of waiting for it:
        the train loop's data stage (in-process) uses it so that reading the next batch never
        waits for the train step queued on the same device before it.
        """
        folded = self.fold.encode(video)
        b, f = folded.shape[:2]
        z = self._encode(self.params, jnp.asarray(folded.reshape(b * f, *folded.shape[2:])))
        z = z.reshape(b, f, *z.shape[1:])
        return np.asarray(z, np.float32) if block else z

    def to_pixels(self, latents) -> np.ndarray:
        """(B, F', h, w, C) latents -> (B, F, H, W, 3) float32 pixels in [-1, 1] (unclipped)."""
        latents = np.asarray(latents, np.float32)
        if latents.ndim != 5 or latents.shape[-1] != self.channels:
            raise ValueError(
                f"latents must be (B, F, h, w, {self.channels}), got shape {latents.shape}"
            )
        b, f = latents.shape[:2]
        x = self._decode(self.params, jnp.asarray(latents.reshape(b * f, *latents.shape[2:])))
        return self.fold.to_pixels(np.asarray(x, np.float32).reshape(b, f, *x.shape[1:]))

    def decode(self, latents) -> np.ndarray:
        return np.clip(np.round((self.to_pixels(latents) + 1.0) * 127.5), 0, 255).astype(np.uint8)

    # ------------------------------------------------------------------ files
    def save(self, path: str) -> str:
        arrays = {f"{k}/{n}": np.asarray(v) for k, d in self.params.items() for n, v in d.items()}
        meta = {"patch_t": self.patch_t, "patch_s": self.patch_s, "scale": self.scale}
        tmp = path + ".tmp.npz"
        np.savez(
            tmp,
            format=np.array(FORMAT),
            **{f"meta/{k}": np.array(v) for k, v in meta.items()},
            **arrays,
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> ConvAutoencoder:
        if not os.path.isfile(path):
            raise ValueError(
                f"autoencoder file {path!r} does not exist: train one with "
                "m2dit_jax.encoders.conv_autoencoder.train_conv_autoencoder (launch.demo's stage 0)"
            )
        with np.load(path) as f:
            if "format" not in f.files or str(f["format"]) != FORMAT:
                raise ValueError(f"{path} is not a {FORMAT} file")
            params: dict[str, dict[str, np.ndarray]] = {}
            for key in f.files:
                if key.split("/")[0] in _ENCODER + _DECODER:
                    layer, name = key.split("/")
                    params.setdefault(layer, {})[name] = f[key]
            missing = [k for k in _ENCODER + _DECODER if k not in params]
            if missing:
                raise ValueError(f"{path} lacks the layers {missing}")
            meta = {k.split("/")[1]: f[k].item() for k in f.files if k.startswith("meta/")}
        return cls(
            params,
            patch_t=int(meta["patch_t"]),
            patch_s=int(meta["patch_s"]),
            scale=float(meta["scale"]),
        )


def read_channels(path: str) -> int:
    """Latent channels of an autoencoder file, without building it (config checks)."""
    if not os.path.isfile(path):
        raise ValueError(f"autoencoder file {path!r} does not exist")
    with np.load(path) as f:
        return int(f["e4/w"].shape[-1])


def train_conv_autoencoder(
    clips: Callable[[np.random.Generator, int], np.ndarray],
    *,
    patch_t: int,
    patch_s: int,
    channels: int = 16,
    hidden: int = 64,
    steps: int = 2000,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    latent_noise: float = 0.5,
    num_clips: int = 4096,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[ConvAutoencoder, dict[str, Any]]:
    """Trains a ``ConvAutoencoder`` on ``clips(rng, n)`` -> (n, F, H, W, 3) uint8 videos.

    Loss: MSE of the fold reconstructed from ``latents + sigma * noise`` (sigma ~ U(0,
    latent_noise) per latent frame) + 0.1 (mean latent^2 - 1)^2, which holds the latent RMS
    near 1 so that the noise level means the same throughout; the latents are then rescaled to
    RMS ``TARGET_RMS``. AdamW, warm-up 100 steps, cosine to 10%. Returns the autoencoder and
    {"steps", "train_s", "loss" (last reconstruction MSE), "latent_rms"}.
    """
    import optax

    if steps < 1 or batch_size < 1 or num_clips < 1:
        raise ValueError(
            f"steps, batch_size and num_clips must be >= 1, got {steps}, {batch_size}, {num_clips}"
        )
    fold = SpaceToDepthAutoencoder(patch_t, patch_s)
    rng = np.random.default_rng(seed)
    data = fold.encode(clips(rng, num_clips))
    data = data.reshape(-1, *data.shape[2:])  # latent frames are coded on their own
    params = init_params(jax.random.key(seed), fold.latent_channels, channels, hidden)
    warmup = min(100, steps // 2)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup, steps, learning_rate * 0.1
    )
    opt = optax.adamw(schedule)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, x, key):
        def loss_fn(p):
            z = encode_fold(p, x)
            k1, k2 = jax.random.split(key)
            sigma = latent_noise * jax.random.uniform(k1, (x.shape[0], 1, 1, 1))
            rec = jnp.mean((decode_fold(p, z + sigma * jax.random.normal(k2, z.shape)) - x) ** 2)
            power = jnp.mean(z**2)
            return rec + 0.1 * (power - 1.0) ** 2, (rec, power)

        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, aux

    t0 = time.perf_counter()
    key = jax.random.key(seed + 1)
    rec = power = float("nan")
    for i in range(steps):
        key, sub = jax.random.split(key)
        idx = rng.integers(len(data), size=batch_size)
        params, opt_state, (rec, power) = step(params, opt_state, jnp.asarray(data[idx]), sub)
        if log is not None and (i % 250 == 0 or i == steps - 1):
            log(f"autoencoder step {i + 1}/{steps}: reconstruction MSE {float(rec):.4f}")
    sample = data[: min(len(data), 1024)]
    rms = float(jnp.sqrt(jnp.mean(encode_fold(params, jnp.asarray(sample)) ** 2)))
    ae = ConvAutoencoder(params, patch_t=patch_t, patch_s=patch_s, scale=TARGET_RMS / rms)
    report = {
        "steps": steps,
        "train_s": time.perf_counter() - t0,
        "loss": float(rec),
        "latent_rms": rms,
    }
    return ae, report


def train_shapes_codec(
    path: str,
    data_config: Any,
    settings: dict[str, Any],
    *,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Trains a codec on single scenes of a ``synthetic_shapes`` data config's training
    scripts (its frames / height / width / holdout_fraction and patch_t / patch_s fold) with
    ``train_conv_autoencoder(**settings)`` and saves it to ``path``; returns the report."""
    from m2dit_jax.data.synthetic_shapes import ShapesGeometry, training_scenes

    d = data_config
    if d.source != "synthetic_shapes":
        raise ValueError(f"the shapes codec trains on synthetic_shapes, not {d.source!r}")
    geometry = ShapesGeometry(frames=int(d.frames), height=int(d.height), width=int(d.width))
    ae, report = train_conv_autoencoder(
        lambda rng, n: training_scenes(rng, n, geometry, float(d.holdout_fraction)),
        patch_t=int(d.patch_t),
        patch_s=int(d.patch_s),
        seed=seed,
        log=log,
        **settings,
    )
    ae.save(path)
    return report
