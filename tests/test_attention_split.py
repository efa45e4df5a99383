"""The mask-free ``split`` backend and its online-softmax parts against the dense reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_helpers import fixed_cotangent_loss, random_qkv
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from m2dit_jax.attention import masked_attention
from m2dit_jax.attention.online_softmax import (
    chunked_attention,
    dense_attention_with_lse,
    merge_partials,
)
from m2dit_jax.layout import SceneLayout

# Shrinking recompiles for every candidate (minutes on 2 cores); failures print the example.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
F32_TOL = 2e-5
BF16_TOL = 3e-2  # bf16 inputs/outputs (8 mantissa bits); softmax statistics stay f32.

layouts = st.builds(
    SceneLayout,
    num_scenes=st.integers(1, 5),
    text_len=st.sampled_from([1, 3, 7, 226]),
    frames=st.integers(1, 2),
    grid_h=st.integers(1, 3),
    grid_w=st.integers(1, 4),
    text_pad_to=st.sampled_from([1, 4, 8]),
)


def _assert_matches_xla(layout, q, k, v, tol, **opts):
    split = lambda q, k, v: masked_attention(q, k, v, layout, backend="split", **opts)
    ref = lambda q, k, v: masked_attention(q, k, v, layout, backend="xla")
    out = jax.jit(split)(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(ref(q, k, v), np.float32), atol=tol, rtol=tol
    )
    g_split = jax.jit(jax.grad(fixed_cotangent_loss(split), argnums=(0, 1, 2)))(q, k, v)
    g_ref = jax.grad(fixed_cotangent_loss(ref), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", g_split, g_ref):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=tol * scale, rtol=tol, err_msg=f"d{name}")


@settings(max_examples=5, deadline=None, phases=NO_SHRINK)
@given(layout=layouts, batch=st.integers(1, 2), impl=st.sampled_from(["chunked", "xla"]))
def test_split_matches_xla_random_layouts(layout, batch, impl):
    q, k, v = random_qkv(layout, batch)
    _assert_matches_xla(layout, q, k, v, F32_TOL, impl=impl, block_q=64, block_kv=48)


@pytest.mark.parametrize(
    "mode, impl",
    [
        ("mask2dit", "dense"),
        ("independent", "chunked"),
        ("full", "chunked"),
        ("independent", "xla"),
        ("full", "xla"),
    ],
)
def test_split_every_mask_mode_and_impl(mode, impl):
    layout = SceneLayout(3, 5, 2, 2, 3, text_pad_to=4, mask_mode=mode)
    q, k, v = random_qkv(layout, batch=2, seed=1)
    _assert_matches_xla(layout, q, k, v, F32_TOL, impl=impl, block_q=8, block_kv=16)


def test_split_bf16_inputs():
    layout = SceneLayout(3, 7, 2, 3, 2, text_pad_to=4)
    q, k, v = random_qkv(layout, batch=2, dtype=jnp.bfloat16, seed=2)
    _assert_matches_xla(layout, q, k, v, BF16_TOL, impl="chunked", block_q=16, block_kv=16)


def test_split_rejects_unknown_impl():
    layout = SceneLayout(2, 3, 1, 2, 2)
    q, k, v = random_qkv(layout, batch=1)
    with pytest.raises(ValueError, match="impl must be one of"):
        masked_attention(q, k, v, layout, backend="split", impl="flash")
    with pytest.raises(ValueError, match="block sizes must be positive"):
        masked_attention(q, k, v, layout, backend="split", impl="chunked", block_q=0)


@settings(max_examples=5, deadline=None, phases=NO_SHRINK)
@given(
    lq=st.integers(1, 40),
    lk=st.integers(1, 40),
    block_q=st.integers(1, 16),
    block_kv=st.integers(1, 16),
)
def test_chunked_attention_and_lse_gradients(lq, lk, block_q, block_kv):
    rng = np.random.default_rng(lq * 100 + lk)
    q = jnp.asarray(rng.standard_normal((2, lq, 2, 4)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((2, lk, 2, 4)), jnp.float32) for _ in range(2))
    chunked = lambda q, k, v: chunked_attention(
        q, k, v, scale=0.4, block_q=block_q, block_kv=block_kv
    )
    dense = lambda q, k, v: dense_attention_with_lse(q, k, v, scale=0.4)
    for a, b in zip(chunked(q, k, v), dense(q, k, v)):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)

    def loss(fn):
        def value(q, k, v):
            out, lse = fn(q, k, v)
            return (out**2).sum() + jnp.sin(lse).sum()  # a cotangent on lse as well

        return value

    ga = jax.grad(loss(chunked), argnums=(0, 1, 2))(q, k, v)
    gb = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_merge_partials_equals_attention_over_union():
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.standard_normal((1, 6, 2, 4)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((1, 10, 2, 4)), jnp.float32) for _ in range(2))
    whole = dense_attention_with_lse(q, k, v, scale=0.5)
    parts = [
        dense_attention_with_lse(q, k[:, a:b], v[:, a:b], scale=0.5) for a, b in ((0, 3), (3, 10))
    ]
    # A part with no keys for some rows (lse = -inf) gets weight zero.
    empty = (jnp.full_like(q, 7.0), jnp.full(q.shape[:3], -jnp.inf))
    merged = merge_partials([*parts, empty])
    for a, b in zip(merged, whole):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
