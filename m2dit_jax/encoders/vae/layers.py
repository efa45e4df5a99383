"""Building blocks of the CogVideoX 3D VAE, channels-last: (B, T, H, W, C).

Parameter names mirror diffusers' ``AutoencoderKLCogVideoX`` state dict (``conv.weight``,
``norm_layer.bias`` ...) so checkpoints load by name. Causal 3D convolutions take and return
a *cache*: the last ``kt - 1`` (padded) input frames, which the next temporal chunk prepends
instead of replicating its own first frame. That is how diffusers carries context between the
8-frame encode / 2-latent-frame decode chunks, and we reproduce it exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Cache = dict  # nested {name: array | Cache}


def _uniform(rng: np.random.Generator | None, shape, fan_in: int, dtype) -> jax.Array:
    # numpy, not jax.random: an eager jax.random call compiles once per new shape, which made
    # building even the tiny VAE take seconds. The VAE is frozen; this init only serves tests.
    if rng is None:  # abstract placeholder, filled by the checkpoint loader (no allocation)
        return jax.ShapeDtypeStruct(tuple(shape), dtype)
    bound = 1.0 / np.sqrt(fan_in)
    return jnp.asarray(rng.uniform(-bound, bound, shape).astype(np.float32), dtype)


class Conv(nnx.Module):
    """N-d convolution with torch-style names: weight (*k, I, O), bias (O,)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, ...], *, rng, dtype, param_dtype):
        fan_in = cin * int(np.prod(kernel))
        self.weight = nnx.Param(_uniform(rng, (*kernel, cin, cout), fan_in, param_dtype))
        self.bias = nnx.Param(_uniform(rng, (cout,), fan_in, param_dtype))
        self.dtype = dtype

    def __call__(self, x: jax.Array, *, stride=None, padding="VALID") -> jax.Array:
        w = self.weight[...].astype(self.dtype)
        nd = w.ndim - 2
        spatial = "DHW"[-nd:] if nd <= 3 else None
        dn = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            w,
            window_strides=stride or (1,) * nd,
            padding=padding,
            dimension_numbers=dn,
        )
        return y + self.bias[...].astype(self.dtype)


class CausalConv3d(nnx.Module):
    """Temporally causal 3D conv (B, T, H, W, Cin) -> (B, T, H, W, Cout), zero spatial pad."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, *, rng, dtype, param_dtype):
        self.kernel = kernel
        self.conv = Conv(cin, cout, (kernel,) * 3, rng=rng, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, cache: jax.Array | None = None):
        """Returns (output, cache for the next chunk; None for 1x1x1 kernels)."""
        k = self.kernel
        if k == 1:
            return self.conv(x), None
        head = cache if cache is not None else jnp.repeat(x[:, :1], k - 1, axis=1)
        x = jnp.concatenate([head.astype(x.dtype), x], axis=1)
        new_cache = x[:, -(k - 1) :]
        pad = (k - 1) // 2
        y = self.conv(x, padding=((0, 0), (pad, pad), (pad, pad)))
        return y, new_cache


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm over (T, H, W, C/G) per group, statistics in float32."""

    def __init__(self, groups: int, channels: int, eps: float, *, param_dtype):
        if channels % groups:
            raise ValueError(f"GroupNorm: {channels} channels not divisible by {groups} groups")
        self.groups, self.eps = groups, eps
        self.weight = nnx.Param(jnp.asarray(np.ones((channels,), np.float32), param_dtype))
        self.bias = nnx.Param(jnp.asarray(np.zeros((channels,), np.float32), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape
        xg = x.astype(jnp.float32).reshape(*shape[:-1], self.groups, shape[-1] // self.groups)
        axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
        mean = jnp.mean(xg, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
        y = ((xg - mean) * jax.lax.rsqrt(var + self.eps)).reshape(shape)
        y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


def nearest_resize_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    """torch ``F.interpolate(mode='nearest')`` along one axis: src = floor(dst * in / out)."""
    n = x.shape[axis]
    if n == size:
        return x
    scale = np.float32(n) / np.float32(size)
    idx = np.minimum(np.floor(np.arange(size, dtype=np.float32) * scale).astype(np.int32), n - 1)
    return jnp.take(x, jnp.asarray(idx), axis=axis)


def nearest_resize_thw(z: jax.Array, t: int, h: int, w: int) -> jax.Array:
    for axis, size in ((1, t), (2, h), (3, w)):
        z = nearest_resize_axis(z, axis, size)
    return z


class SpatialNorm3D(nnx.Module):
    """Decoder norm conditioned on the latents zq: GroupNorm(f) * conv_y(zq) + conv_b(zq)."""

    def __init__(self, f_channels: int, zq_channels: int, groups: int, *, rng, dtype, param_dtype):
        kw = dict(rng=rng, dtype=dtype, param_dtype=param_dtype)
        self.norm_layer = GroupNorm(groups, f_channels, 1e-6, param_dtype=param_dtype)
        self.conv_y = CausalConv3d(zq_channels, f_channels, 1, **kw)
        self.conv_b = CausalConv3d(zq_channels, f_channels, 1, **kw)

    def __call__(self, f: jax.Array, zq: jax.Array) -> jax.Array:
        t, h, w = f.shape[1:4]
        # The 1x1x1 convs commute with nearest resizing, so they run at latent resolution
        # (diffusers resizes first); every output element sees the same inputs and weights.
        y, _ = self.conv_y(zq)
        b, _ = self.conv_b(zq)
        yb = jnp.concatenate([y, b], axis=-1)
        if t > 1 and t % 2 == 1:
            # The first frame is resized on its own (diffusers), then the rest.
            first = nearest_resize_thw(yb[:, :1], 1, h, w)
            rest = nearest_resize_thw(yb[:, 1:], t - 1, h, w)
            yb = jnp.concatenate([first, rest], axis=1)
        else:
            yb = nearest_resize_thw(yb, t, h, w)
        y, b = jnp.split(yb, 2, axis=-1)
        return self.norm_layer(f) * y + b


class ResnetBlock3D(nnx.Module):
    """norm-silu-conv x2 with a residual; spatial norms (decoder) when ``zq_channels`` is set."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        groups: int,
        eps: float,
        zq_channels: int | None,
        rng,
        dtype,
        param_dtype,
    ):
        kw = dict(rng=rng, dtype=dtype, param_dtype=param_dtype)
        if zq_channels is None:
            self.norm1 = GroupNorm(groups, cin, eps, param_dtype=param_dtype)
            self.norm2 = GroupNorm(groups, cout, eps, param_dtype=param_dtype)
        else:
            self.norm1 = SpatialNorm3D(cin, zq_channels, groups, **kw)
            self.norm2 = SpatialNorm3D(cout, zq_channels, groups, **kw)
        self.spatial = zq_channels is not None
        self.conv1 = CausalConv3d(cin, cout, 3, **kw)
        self.conv2 = CausalConv3d(cout, cout, 3, **kw)
        if cin != cout:
            self.conv_shortcut = Conv(cin, cout, (1, 1, 1), **kw)
        else:
            self.conv_shortcut = None

    def _norm(self, norm, x, zq):
        return norm(x, zq) if self.spatial else norm(x)

    def __call__(self, x: jax.Array, zq: jax.Array | None, cache: Cache | None):
        cache = cache or {}
        h = jax.nn.silu(self._norm(self.norm1, x, zq))
        h, c1 = self.conv1(h, cache.get("conv1"))
        h = jax.nn.silu(self._norm(self.norm2, h, zq))
        h, c2 = self.conv2(h, cache.get("conv2"))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return h + x, {"conv1": c1, "conv2": c2}


class Downsample3D(nnx.Module):
    """Optional 2x temporal average pool (first frame kept), then a stride-2 3x3 conv."""

    def __init__(self, channels: int, compress_time: bool, *, rng, dtype, param_dtype):
        self.compress_time = compress_time
        self.conv = Conv(channels, channels, (3, 3), rng=rng, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.compress_time:
            t = x.shape[1]
            if t % 2 == 1:
                first, rest = x[:, :1], x[:, 1:]
                if rest.shape[1] > 0:
                    rest = _avg_pairs(rest)
                x = jnp.concatenate([first, rest], axis=1)
            else:
                x = _avg_pairs(x)
        b, t, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
        y = self.conv(x.reshape(b * t, h + 1, w + 1, c), stride=(2, 2))
        return y.reshape(b, t, *y.shape[1:])


def _avg_pairs(x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    x = x[:, : t - t % 2].reshape(b, t // 2, 2, h, w, c)
    return (x[:, :, 0] + x[:, :, 1]) / 2


class Upsample3D(nnx.Module):
    """Nearest 2x upsampling (time too when ``compress_time``, first frame kept single),
    then a 3x3 conv per frame."""

    def __init__(self, channels: int, compress_time: bool, *, rng, dtype, param_dtype):
        self.compress_time = compress_time
        self.conv = Conv(channels, channels, (3, 3), rng=rng, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        up_hw = lambda v: jnp.repeat(jnp.repeat(v, 2, axis=2), 2, axis=3)
        t = x.shape[1]
        if self.compress_time and t > 1:
            if t % 2 == 1:
                x = jnp.concatenate([up_hw(x[:, :1]), jnp.repeat(up_hw(x[:, 1:]), 2, axis=1)], 1)
            else:
                x = jnp.repeat(up_hw(x), 2, axis=1)
        else:
            x = up_hw(x)
        b, t, h, w, c = x.shape
        y = self.conv(x.reshape(b * t, h, w, c), padding=((1, 1), (1, 1)))
        return y.reshape(b, t, *y.shape[1:])
