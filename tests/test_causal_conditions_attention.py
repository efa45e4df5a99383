"""mask_mode="causal_conditions": the layout predicate and every attention backend.

Condition scenes (the first K) attend only among condition tokens (own caption by mask 1, all
condition video); the generated scenes attend to everything mask 1 allows. Checked against an
independent float64 NumPy reference built scene by scene, and every backend (xla, split in
each impl, splash in interpret mode, context parallel) against it, forward and gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_helpers import fixed_cotangent_loss, numpy_masked_attention, random_qkv
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from m2dit_jax.attention import masked_attention
from m2dit_jax.layout import SceneLayout
from m2dit_jax.sharding import make_mesh, named_sharding

NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
F32_TOL = 2e-5


@st.composite
def causal_layouts(draw, max_text=(1, 3, 7), max_grid=3):
    s = draw(st.integers(2, 4))
    return SceneLayout(
        num_scenes=s,
        text_len=draw(st.sampled_from(max_text)),
        frames=draw(st.integers(1, 2)),
        grid_h=draw(st.integers(1, max_grid)),
        grid_w=draw(st.integers(1, max_grid)),
        text_pad_to=draw(st.sampled_from([1, 4, 8])),
        mask_mode="causal_conditions",
        num_conditions=draw(st.integers(1, s - 1)),
    )


def _reference_mask(layout: SceneLayout) -> np.ndarray:
    """The causal-condition mask written out block by block (independent of ``allowed``)."""
    s, k = layout.num_scenes, layout.num_conditions
    mask = np.zeros((layout.seq_len, layout.seq_len), bool)
    for i in range(s):
        t_i, v_i = layout.text_slice(i), layout.video_slice(i)
        block = layout.text_block_slice(i)
        mask[t_i, t_i] = mask[t_i, v_i] = True  # caption <-> own video, own caption
        mask[block, t_i] = True  # padding queries: own real caption only
        for j in range(s):
            if i >= k or j < k:  # conditions see condition video only
                mask[v_i, layout.video_slice(j)] = True
        mask[v_i, t_i] = True
    return mask


def _check_backend(layout, backend, tol=F32_TOL, **opts):
    q, k, v = random_qkv(layout)
    fn = lambda q, k, v: masked_attention(q, k, v, layout, backend=backend, **opts)
    ref = lambda q, k, v: masked_attention(q, k, v, layout, backend="xla")
    out = jax.jit(fn)(q, k, v)
    np.testing.assert_allclose(
        out, numpy_masked_attention(q, k, v, _reference_mask(layout)), atol=tol, rtol=tol
    )
    grads = jax.jit(jax.grad(fixed_cotangent_loss(fn), argnums=(0, 1, 2)))(q, k, v)
    ref_grads = jax.grad(fixed_cotangent_loss(ref), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", grads, ref_grads):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=tol * scale, rtol=tol, err_msg=f"d{name}")


@settings(max_examples=25, deadline=None, phases=NO_SHRINK)
@given(layout=causal_layouts())
def test_predicate_equals_blockwise_reference(layout):
    np.testing.assert_array_equal(layout.dense_mask(), _reference_mask(layout))
    # condition tokens never see a generated token; generated ones see what mask 1 allows
    mask1 = SceneLayout(*[getattr(layout, f) for f in ("num_scenes", "text_len", "frames")],
                        layout.grid_h, layout.grid_w, layout.text_pad_to).dense_mask()  # fmt: skip
    cond = layout.scene_ids() < layout.num_conditions
    dense = layout.dense_mask()
    assert not dense[np.ix_(cond, ~cond)].any()
    np.testing.assert_array_equal(dense[~cond], mask1[~cond])
    assert dense.any(axis=1).all()  # no empty softmax row


@pytest.mark.parametrize("impl", ["chunked", "dense", "xla"])
@settings(max_examples=1, deadline=None, phases=NO_SHRINK)
@given(layout=causal_layouts())
def test_split_matches_reference(layout, impl):
    _check_backend(layout, "split", impl=impl, block_q=32, block_kv=24)


@settings(max_examples=2, deadline=None, phases=NO_SHRINK)
@given(layout=causal_layouts(max_text=(1, 5), max_grid=4))
def test_splash_interpret_matches_reference(layout):
    _check_backend(layout, "splash", interpret=True, block_q=128, block_kv=128)


def test_xla_and_auto_match_reference():
    layout = SceneLayout(3, 5, 2, 2, 3, text_pad_to=8, mask_mode="causal_conditions",
                         num_conditions=2)  # fmt: skip
    _check_backend(layout, "xla")
    _check_backend(layout, "auto")


def test_split_bf16():
    layout = SceneLayout(3, 5, 2, 2, 3, mask_mode="causal_conditions", num_conditions=1)
    q, k, v = random_qkv(layout, dtype=jnp.bfloat16)
    out = masked_attention(q, k, v, layout, backend="split", impl="chunked", block_q=16)
    assert out.dtype == jnp.bfloat16
    ref = numpy_masked_attention(q, k, v, _reference_mask(layout))
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize(
    "backend, opts",
    [("split", {"impl": "chunked", "block_q": 16, "block_kv": 16}), ("xla", {})],
)
def test_context_parallel_matches_reference(backend, opts):
    # L = 3 * 8 + 3 * 8 = 48 tokens: divides over context 2 x tensor 2 x data 2.
    layout = SceneLayout(3, 5, 2, 2, 2, text_pad_to=8, mask_mode="causal_conditions",
                         num_conditions=2)  # fmt: skip
    q, k, v = random_qkv(layout, heads=4)
    ref_out = numpy_masked_attention(q, k, v, _reference_mask(layout))
    ref_grads = jax.grad(
        fixed_cotangent_loss(lambda *a: masked_attention(*a, layout)), argnums=(0, 1, 2)
    )(q, k, v)
    mesh = make_mesh({"data": 2, "context": 2, "tensor": 2})
    fn = lambda q, k, v: masked_attention(q, k, v, layout, backend=backend, **opts)
    with jax.set_mesh(mesh):
        sharding = named_sharding(mesh, ("batch", "seq", "heads", "head_dim"))
        qs, ks, vs = (jax.device_put(x, sharding) for x in (q, k, v))
        out = jax.jit(fn)(qs, ks, vs)
        grads = jax.jit(jax.grad(fixed_cotangent_loss(fn), argnums=(0, 1, 2)))(qs, ks, vs)
    np.testing.assert_allclose(out, ref_out, atol=F32_TOL, rtol=F32_TOL)
    for a, b in zip(grads, ref_grads):
        np.testing.assert_allclose(a, b, atol=F32_TOL * max(1.0, float(np.abs(b).max())))


def test_layout_validation_and_identity():
    base = SceneLayout(3, 4, 1, 2, 2)
    assert base.num_conditions == 0 and base == SceneLayout(3, 4, 1, 2, 2, 1, "mask2dit", 0)
    with pytest.raises(ValueError, match="1 <= num_conditions"):
        SceneLayout(3, 4, 1, 2, 2, mask_mode="causal_conditions")
    with pytest.raises(ValueError, match="1 <= num_conditions"):
        SceneLayout(3, 4, 1, 2, 2, mask_mode="causal_conditions", num_conditions=3)
    with pytest.raises(ValueError, match="only meaningful"):
        SceneLayout(3, 4, 1, 2, 2, num_conditions=1)
