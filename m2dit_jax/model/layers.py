"""Parameter-carrying building blocks with logical axis names: Dense and LayerNorm.

Every parameter is an ``nnx.Param`` whose metadata holds its logical axis names
(``out_sharding``) and the project's rule table (``sharding_rules``), so both
``m2dit_jax.sharding`` and Flax's own helpers (``nnx.get_partition_spec``, eager sharding) map
it onto a mesh the same way. With ``stack=L`` a module holds L layers' parameters stacked on
a leading ``"layers"`` axis (for ``jax.lax.scan`` over blocks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from m2dit_jax.sharding import current_rules, logical_to_mesh_axes

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


def divisible_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh) -> PartitionSpec:
    """``spec`` with every entry whose mesh axes do not divide the dimension replicated.

    (e.g. 2 heads on tensor=4): small models then still run on a large mesh.
    """
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        ways = math.prod(mesh.shape[a] for a in axes)
        out.append(entry if dim % ways == 0 else None)
    return PartitionSpec(*out)


def make_param(
    rngs: nnx.Rngs | None,
    init: Initializer,
    shape: Sequence[int],
    names: Sequence[str | None],
    *,
    dtype: jnp.dtype,
    stack: int | None = None,
) -> nnx.Param:
    """A Param of ``shape`` (or (stack, *shape)) annotated with logical ``names``.

    Sharded eagerly only when a mesh is active (``jax.set_mesh``), replicated otherwise; a
    dimension the mesh axes do not divide is replicated (``divisible_spec``).
    """
    shape = tuple(int(s) for s in shape)
    names = tuple(names)
    if len(names) != len(shape):
        raise ValueError(f"param shape {shape} and logical names {names} differ in rank")
    key = rngs.params() if rngs is not None else jax.random.key(0)
    if stack is None:
        value = init(key, shape, dtype)
    else:
        keys = jax.random.split(key, stack)
        value = jax.vmap(lambda k: init(k, shape, dtype))(keys)
        names = ("layers",) + names
    mesh = jax.sharding.get_abstract_mesh()
    eager = not mesh.empty
    if eager:
        spec = logical_to_mesh_axes(names)
        fitted = divisible_spec(spec, value.shape, mesh)
        if fitted != spec:  # shard what divides by hand; Flax's eager path would raise
            value = jax.lax.with_sharding_constraint(value, fitted)
            eager = False
    return nnx.Param(
        value, out_sharding=names, sharding_rules=current_rules(), eager_sharding=eager
    )


def _fan_in_init(n_in: int) -> Initializer:
    """Truncated-normal init with variance 1/fan_in over the first ``n_in`` kernel axes."""
    return nnx.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=tuple(range(n_in)), out_axis=-1
    )


class Dense(nnx.Module):
    """y = x . kernel + bias, contracting the last ``len(in_shape)`` axes of x.

    kernel: in_shape + out_shape (logical names ``in_names + out_names``), bias: out_shape.
    Computation runs in ``dtype`` (parameters are cast), accumulation as XLA chooses.
    An ``adapter`` attribute (a ``LoraBranch``, attached by LoRA training with dropout, see
    ``m2dit_jax.train.lora``) adds its output; models are built without one.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        in_names: Sequence[str | None],
        out_names: Sequence[str | None],
        *,
        rngs: nnx.Rngs | None,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        stack: int | None = None,
        use_bias: bool = True,
    ):
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        self.dtype = dtype
        self.kernel = make_param(
            rngs,
            _fan_in_init(len(self.in_shape)),
            self.in_shape + self.out_shape,
            tuple(in_names) + tuple(out_names),
            dtype=param_dtype,
            stack=stack,
        )
        self.bias = (
            make_param(
                rngs,
                nnx.initializers.zeros,
                self.out_shape,
                tuple(out_names),
                dtype=param_dtype,
                stack=stack,
            )
            if use_bias
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.in_shape)
        kernel = self.kernel[...].astype(self.dtype)
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel, (contract, ((), ())))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        adapter = getattr(self, "adapter", None)
        if adapter is not None:
            y = y + adapter(x).astype(y.dtype)
        return y


class LoraKey(nnx.Variable):
    """Raw PRNG key data (uint32) of one LoRA branch's dropout (stacked per layer)."""


class LoraBranch(nnx.Module):
    """The unmerged LoRA branch of a Dense: ``scale * (dropout(x) . a) . b`` (peft's order).

    a: (*in, r), b: (r, *out) — one layer's slice (a leading layer axis when stacked for
    scan); ``key``: raw key data (2,) (or (L, 2)) of this layer's dropout mask. Dropout keeps
    each element of x with probability 1 - rate and scales kept ones by 1 / (1 - rate).
    Computation in ``dtype``.
    """

    def __init__(
        self,
        a: jax.Array,
        b: jax.Array,
        key: jax.Array,
        *,
        n_in: int,
        scale: float,
        rate: float,
        dtype: jnp.dtype,
    ):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"LoRA dropout rate must be in [0, 1), got {rate}")
        self.a, self.b, self.key = nnx.Param(a), nnx.Param(b), LoraKey(key)
        self.n_in, self.scale, self.rate, self.dtype = n_in, float(scale), float(rate), dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (..., *in) -> (..., *out)."""
        x = x.astype(self.dtype)
        if self.rate > 0:
            keep = 1.0 - self.rate
            mask = jax.random.bernoulli(jax.random.wrap_key_data(self.key[...]), keep, x.shape)
            x = jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
        n = self.n_in
        contract_a = (tuple(range(x.ndim - n, x.ndim)), tuple(range(n)))
        h = jax.lax.dot_general(x, self.a[...].astype(self.dtype), (contract_a, ((), ())))
        y = jax.lax.dot_general(
            h, self.b[...].astype(self.dtype), (((h.ndim - 1,), (0,)), ((), ()))
        )
        return y * jnp.asarray(self.scale, y.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with affine scale/bias; statistics in float32.

    Returns ``dtype``. ``names`` is the logical name of the normalised axis.
    """

    def __init__(
        self,
        dim: int,
        *,
        eps: float,
        names: str,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        stack: int | None = None,
    ):
        self.eps = eps
        self.dtype = dtype
        self.scale = make_param(
            None, nnx.initializers.ones, (dim,), (names,), dtype=param_dtype, stack=stack
        )
        self.bias = make_param(
            None, nnx.initializers.zeros, (dim,), (names,), dtype=param_dtype, stack=stack
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)
