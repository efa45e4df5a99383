"""The ``splash`` backend (Pallas interpret mode on CPU) and ``auto`` against ``xla``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_helpers import fixed_cotangent_loss, random_qkv
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from m2dit_jax.attention import masked_attention
from m2dit_jax.attention.auto import choose_backend
from m2dit_jax.attention.splash import SceneMask, block_statistics, resolve_block_sizes
from m2dit_jax.layout import SceneLayout
from m2dit_jax.sharding import make_mesh, named_sharding

# Shrinking recompiles for every candidate (minutes on 2 cores); failures print the example.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
F32_TOL = 2e-5
BF16_TOL = 3e-2  # bf16 inputs/outputs; the kernel keeps f32 softmax statistics.

# Interpret mode is slow: layouts stay within two or three 128-token blocks.
small_layouts = st.builds(
    SceneLayout,
    num_scenes=st.integers(1, 5),
    text_len=st.sampled_from([1, 5, 13]),
    frames=st.integers(1, 2),
    grid_h=st.integers(1, 4),
    grid_w=st.integers(1, 5),
    text_pad_to=st.sampled_from([1, 8]),
)


def _assert_matches_xla(layout, q, k, v, tol, backend="splash", **opts):
    if backend == "splash":
        opts.setdefault("interpret", True)
    fn = lambda q, k, v: masked_attention(q, k, v, layout, backend=backend, **opts)
    ref = lambda q, k, v: masked_attention(q, k, v, layout, backend="xla")
    out = jax.jit(fn)(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(ref(q, k, v), np.float32), atol=tol, rtol=tol
    )
    grads = jax.jit(jax.grad(fixed_cotangent_loss(fn), argnums=(0, 1, 2)))(q, k, v)
    ref_grads = jax.grad(fixed_cotangent_loss(ref), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", grads, ref_grads):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=tol * scale, rtol=tol, err_msg=f"d{name}")


@settings(max_examples=4, deadline=None, phases=NO_SHRINK)
@given(layout=small_layouts, batch=st.integers(1, 2))
def test_splash_matches_xla_random_layouts(layout, batch):
    q, k, v = random_qkv(layout, batch)
    _assert_matches_xla(layout, q, k, v, F32_TOL, block_q=128, block_kv=128)


def test_splash_multi_block_with_skipped_blocks_and_caption_226():
    # 3 x 232 padded caption tokens + 3 x 48 video = 840 tokens -> 7 x 7 blocks of 128,
    # several of them empty (caption i vs caption j) and skipped by the kernel.
    layout = SceneLayout(3, 226, 2, 4, 6, text_pad_to=8)
    stats = block_statistics(layout, 128, 128)
    assert stats["empty"] > 0 and stats["partial"] > 0 and stats["full"] > 0
    q, k, v = random_qkv(layout, batch=1, heads=1, seed=1)
    _assert_matches_xla(layout, q, k, v, F32_TOL, block_q=128, block_kv=128)


@pytest.mark.parametrize("mode", ["independent", "full"])
def test_splash_ablation_mask_modes(mode):
    layout = SceneLayout(2, 5, 2, 3, 4, text_pad_to=8, mask_mode=mode)
    q, k, v = random_qkv(layout, batch=1, seed=2)
    _assert_matches_xla(layout, q, k, v, F32_TOL)


def test_splash_bf16_inputs():
    layout = SceneLayout(3, 7, 2, 3, 2, text_pad_to=8)
    q, k, v = random_qkv(layout, dtype=jnp.bfloat16, seed=3)
    _assert_matches_xla(layout, q, k, v, BF16_TOL)


def test_splash_under_data_context_tensor_mesh():
    layout = SceneLayout(2, 5, 2, 2, 4, text_pad_to=8)  # L = 48
    q, k, v = random_qkv(layout, heads=8, seed=4)
    ref = masked_attention(q, k, v, layout)
    ref_grads = jax.grad(
        fixed_cotangent_loss(lambda *a: masked_attention(*a, layout)), argnums=(0, 1, 2)
    )(q, k, v)
    mesh = make_mesh({"data": 2, "context": 2, "tensor": 2})
    fn = lambda q, k, v: masked_attention(q, k, v, layout, backend="splash", interpret=True)
    with jax.set_mesh(mesh):
        sharding = named_sharding(mesh, ("batch", "seq", "heads", "head_dim"))
        qs, ks, vs = (jax.device_put(x, sharding) for x in (q, k, v))
        out = jax.jit(fn)(qs, ks, vs)
        grads = jax.jit(jax.grad(fixed_cotangent_loss(fn), argnums=(0, 1, 2)))(qs, ks, vs)
    np.testing.assert_allclose(out, ref, atol=F32_TOL, rtol=F32_TOL)
    for a, b in zip(grads, ref_grads):
        np.testing.assert_allclose(a, b, atol=F32_TOL * max(1.0, float(np.abs(b).max())))


def test_scene_mask_is_mask1_and_hashable():
    layout = SceneLayout(3, 5, 1, 2, 3, text_pad_to=4)
    mask = SceneMask(layout, 48)
    dense = np.asarray(mask[:, :])
    n = layout.seq_len
    np.testing.assert_array_equal(dense[:n, :n], layout.dense_mask())
    assert not dense[:n, n:].any() and not dense[n:, :n].any() and dense[n:, n:].all()
    assert mask == SceneMask(layout, 48) and hash(mask) == hash(SceneMask(layout, 48))
    assert mask != SceneMask(layout, 56)


def test_splash_off_tpu_refuses_unless_interpret_is_explicit():
    layout = SceneLayout(2, 5, 1, 2, 2, text_pad_to=8)
    q, k, v = random_qkv(layout)
    for opts in ({}, {"interpret": False}):
        with pytest.raises(ValueError, match="interpret=True"):
            masked_attention(q, k, v, layout, backend="splash", **opts)


def test_splash_option_errors():
    with pytest.raises(ValueError, match="multiple of 128"):
        resolve_block_sizes(300, block_q=100)
    with pytest.raises(ValueError, match="unknown splash block-size options"):
        resolve_block_sizes(300, block_size=128)


def test_auto_backend_choice_and_result():
    small = SceneLayout(2, 3, 1, 2, 2)
    big = SceneLayout(3, 226, 13, 30, 45)
    assert choose_backend(small, "cpu") == "xla"
    assert choose_backend(big, "cpu") == "split"
    assert choose_backend(small, "gpu") == "split"
    assert choose_backend(small, "tpu") == "splash"
    q, k, v = random_qkv(small)
    out = masked_attention(q, k, v, small, backend="auto", block_q=128, impl="chunked")
    np.testing.assert_allclose(out, masked_attention(q, k, v, small), atol=F32_TOL)
    with pytest.raises(ValueError, match="unknown attention options"):
        masked_attention(q, k, v, small, backend="auto", blok_q=128)
