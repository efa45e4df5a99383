"""Sharded attention (data, context, tensor on 8 CPU devices) equals the unsharded result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2dit_jax.attention import masked_attention
from m2dit_jax.layout import SceneLayout
from m2dit_jax.sharding import make_mesh, named_sharding

TOL = 2e-5
QKV_NAMES = ("batch", "seq", "heads", "head_dim")
# L = 2 * 8 (padded captions) + 2 * 16 (video) = 48: divides by every context degree 1..8.
LAYOUT = SceneLayout(2, 5, 2, 2, 4, text_pad_to=8)


def _qkv(layout, batch=2, heads=8, head_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch, layout.seq_len, heads, head_dim)
    return tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(3))


def _loss(layout, backend, **opts):
    def loss(q, k, v):
        out = masked_attention(q, k, v, layout, backend=backend, **opts)
        weights = jax.random.normal(jax.random.key(7), out.shape, jnp.float32)
        return (out * weights).sum()

    return loss


def _check_sharded_equals_unsharded(mesh_shape, backend, **opts):
    q, k, v = _qkv(LAYOUT)
    ref_out = masked_attention(q, k, v, LAYOUT, backend="xla")
    ref_grads = jax.grad(_loss(LAYOUT, "xla"), argnums=(0, 1, 2))(q, k, v)
    mesh = make_mesh(mesh_shape)
    with jax.set_mesh(mesh):
        sharding = named_sharding(mesh, QKV_NAMES)
        qs, ks, vs = (jax.device_put(x, sharding) for x in (q, k, v))
        attend = jax.jit(lambda q, k, v: masked_attention(q, k, v, LAYOUT, backend=backend, **opts))
        out = attend(qs, ks, vs)
        grads = jax.jit(jax.grad(_loss(LAYOUT, backend, **opts), argnums=(0, 1, 2)))(qs, ks, vs)
    assert out.sharding.spec == sharding.spec
    np.testing.assert_allclose(out, ref_out, atol=TOL, rtol=TOL)
    for name, a, b in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(a, b, atol=TOL * max(1.0, float(np.abs(b).max())), err_msg=name)


@pytest.mark.parametrize(
    "mesh_shape",
    [
        {"data": 2, "context": 2, "tensor": 2},
        {"data": 1, "context": 4, "tensor": 2},
        {"data": 1, "context": 8, "tensor": 1},
        {"data": 2, "context": 1, "tensor": 4},
    ],
    ids=lambda s: "d{data}c{context}t{tensor}".format(**s),
)
def test_split_sharded_forward_and_grads(mesh_shape):
    _check_sharded_equals_unsharded(mesh_shape, "split", impl="chunked", block_q=16, block_kv=16)


def test_xla_backend_under_context_mesh():
    _check_sharded_equals_unsharded({"data": 2, "context": 4, "tensor": 1}, "xla")


def test_explicit_mesh_option_without_set_mesh():
    q, k, v = _qkv(LAYOUT)
    mesh = make_mesh({"context": 4, "tensor": 2})
    out = jax.jit(
        lambda q, k, v: masked_attention(q, k, v, LAYOUT, backend="split", mesh=mesh, impl="dense")
    )(q, k, v)
    np.testing.assert_allclose(out, masked_attention(q, k, v, LAYOUT), atol=TOL, rtol=TOL)


def test_clear_errors_when_not_divisible():
    odd = SceneLayout(3, 5, 1, 2, 2)  # L = 15 + 12 = 27
    q, k, v = _qkv(odd)
    with jax.set_mesh(make_mesh({"context": 8})):
        with pytest.raises(ValueError, match="sequence length 27 .* does not divide"):
            masked_attention(q, k, v, odd, backend="split")
    q, k, v = _qkv(LAYOUT, heads=4)
    with jax.set_mesh(make_mesh({"context": 4, "tensor": 2})):
        with pytest.raises(ValueError, match="heads 4 must divide over tensor x context"):
            masked_attention(q, k, v, LAYOUT, backend="split")
    q, k, v = _qkv(LAYOUT, batch=3)
    with jax.set_mesh(make_mesh({"data": 2, "context": 4})):
        with pytest.raises(ValueError, match="batch 3 does not divide"):
            masked_attention(q, k, v, LAYOUT, backend="split")
