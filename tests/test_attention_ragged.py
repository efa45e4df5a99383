"""Mask-1 attention on ragged layouts (scenes of their own frame counts) in every backend.

Forward against a float64 NumPy reference whose mask is rebuilt here from the per-scene frame
counts (not from ``SceneLayout.allowed``), gradients against the ``xla`` backend in f32; split
(chunked / dense / xla two-call), splash (Pallas interpret mode) and xla, every mask mode,
context parallelism with shard boundaries that cut through scenes, and split on packed rows.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_helpers import fixed_cotangent_loss, numpy_masked_attention, random_qkv
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from m2dit_jax.attention import masked_attention
from m2dit_jax.attention.splash import block_statistics
from m2dit_jax.layout import CAUSAL_CONDITIONS, LAYOUT_MASK_MODES, SceneLayout
from m2dit_jax.sharding import make_mesh, named_sharding

# Shrinking recompiles for every candidate (minutes on 2 cores); failures print the example.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
F32_TOL = 2e-5
QKV_NAMES = ("batch", "seq", "heads", "head_dim")
# Compiling is nearly all of this file's time (tiny shapes, many per-scene parts): XLA CPU's
# backend optimisation level 0 compiles ~2x faster and checks the same math.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def reference_mask(layout: SceneLayout) -> np.ndarray:
    """Mask 1 of ``layout`` rebuilt from first principles: per-token (scene, kind) arrays
    laid out caption block by caption block, then scene by scene with its own frame count."""
    scene, kind = [], []  # kind: 0 real caption, 1 caption padding, 2 video
    for i in range(layout.num_scenes):
        scene += [i] * layout.text_block
        kind += [0] * layout.text_len + [1] * layout.text_padding
    for i, frames in enumerate(layout.scene_frames):
        n = frames * layout.grid_h * layout.grid_w
        scene += [i] * n
        kind += [2] * n
    scene, kind = np.asarray(scene), np.asarray(kind)
    assert scene.size == layout.seq_len
    sample = np.repeat(np.arange(len(layout.sample_sizes)), layout.sample_sizes)[scene]
    same = scene[:, None] == scene[None, :]
    qv, kv = (kind == 2)[:, None], (kind == 2)[None, :]
    q_pad, k_pad = (kind == 1)[:, None], (kind == 1)[None, :]
    mode = layout.mask_mode
    if mode == "full":
        rule = np.ones_like(same)
    elif mode == "independent":
        rule = same
    else:
        rule = same | (qv & kv)
        if mode == CAUSAL_CONDITIONS:
            cond = scene < layout.num_conditions
            rule &= ~cond[:, None] | cond[None, :]
    # Packed samples never see each other; padding keys are never seen; a padding query sees
    # only its own scene's real caption.
    rule = rule & (sample[:, None] == sample[None, :]) & ~k_pad
    return np.where(q_pad, same & (kind == 0)[None, :], rule)


@st.composite
def ragged_layouts(draw, min_scenes=1, max_frames=3, grid=(1, 3), text_lens=(1, 3, 7)):
    """Ragged layouts: S in min_scenes..4, per-scene frame counts in 1..max_frames, one scene of
    1 latent frame and (for S > 1) at least two different counts; any mask mode (S = 1 is the
    equal layout it normalises to)."""
    s = draw(st.integers(min_scenes, 4))
    frames = draw(st.lists(st.integers(1, max_frames), min_size=s, max_size=s))
    frames[draw(st.integers(0, s - 1))] = 1  # a scene of a single latent frame
    if s > 1 and len(set(frames)) == 1:
        frames[draw(st.integers(0, s - 1))] = draw(st.integers(2, max_frames))
    mode = draw(st.sampled_from(LAYOUT_MASK_MODES if s > 1 else LAYOUT_MASK_MODES[:-1]))
    conditions = draw(st.integers(1, s - 1)) if mode == CAUSAL_CONDITIONS else 0
    return SceneLayout(
        s,
        draw(st.sampled_from(text_lens)),
        tuple(frames),
        draw(st.integers(*grid)),
        draw(st.integers(*grid)),
        text_pad_to=draw(st.sampled_from([1, 4, 8])),
        mask_mode=mode,
        num_conditions=conditions,
    )


def _forward_and_grads(fn):
    """jit of q, k, v -> (fn's output, its (q, k, v) gradients of ``fixed_cotangent_loss``):
    one program, so the forward is compiled once."""

    def both(q, k, v):
        out, pullback = jax.vjp(fn, q, k, v)
        weights = jax.random.normal(jax.random.key(7), out.shape, jnp.float32)  # as the helper
        return out, pullback(weights.astype(out.dtype))

    return _jit(both)


def _check(layout, fn, q, k, v, tol=F32_TOL, grads=True):
    """``fn`` forward vs the float64 reference, gradients (q, k, v) vs the xla backend."""
    out, got = _forward_and_grads(fn)(q, k, v) if grads else (_jit(fn)(q, k, v), None)
    assert out.shape == q.shape and out.dtype == q.dtype
    expected = numpy_masked_attention(q, k, v, reference_mask(layout))
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=tol, rtol=tol)
    if not grads:
        return
    ref = lambda q, k, v: masked_attention(q, k, v, layout, backend="xla")
    want = _jit(jax.grad(fixed_cotangent_loss(ref), argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", got, want):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=tol * scale, rtol=tol, err_msg=f"d{name}")


def _backend(layout, backend, **opts):
    return lambda q, k, v: masked_attention(q, k, v, layout, backend=backend, **opts)


@settings(max_examples=40, deadline=None, phases=NO_SHRINK)
@given(layout=ragged_layouts())
def test_layout_mask_matches_first_principles(layout):
    np.testing.assert_array_equal(layout.dense_mask(), reference_mask(layout))
    if layout.mask_mode == "mask2dit":
        blocked = 1.0 - layout.dense_mask().mean()
        assert layout.blocked_fraction() == pytest.approx(blocked, abs=1e-12)


@settings(max_examples=5, deadline=None, phases=NO_SHRINK)
@given(
    layout=ragged_layouts(min_scenes=2),
    batch=st.integers(1, 2),
    impl=st.sampled_from(["chunked", "dense", "xla"]),
)
def test_split_ragged_random_layouts(layout, batch, impl):
    q, k, v = random_qkv(layout, batch, seed=layout.seq_len)
    _check(layout, _backend(layout, "split", impl=impl, block_q=16, block_kv=8), q, k, v)


# Every mask mode on a small ragged layout (3 and 1 latent frames; 1, 3 and 2 for two
# conditions): forward for every impl, gradients for one impl per mode so that each impl's
# backward runs in some mode (the random layouts above add more).
MODES = [
    ("mask2dit", 0, "chunked"),
    ("full", 0, "xla"),
    ("independent", 0, "dense"),
    (CAUSAL_CONDITIONS, 1, "xla"),
    (CAUSAL_CONDITIONS, 2, "chunked"),
]


@pytest.mark.parametrize("mode, conditions, grad_impl", MODES, ids=lambda x: str(x))
def test_split_every_mask_mode_and_impl(mode, conditions, grad_impl):
    frames = (1, 3, 2) if conditions == 2 else (3, 1)
    layout = SceneLayout(len(frames), 5, frames, 2, 3, text_pad_to=4, mask_mode=mode,
                         num_conditions=conditions)  # fmt: skip
    assert layout.is_ragged
    q, k, v = random_qkv(layout, batch=2, seed=1)
    for impl in ("chunked", "dense", "xla"):
        fn = _backend(layout, "split", impl=impl, block_q=8, block_kv=16)
        _check(layout, fn, q, k, v, grads=impl == grad_impl)
    _check(layout, _backend(layout, "xla"), q, k, v, grads=False)


@pytest.mark.parametrize(
    "frames, samples, mode, grad_impl",
    [((2, 1, 3), (2, 1), "mask2dit", "chunked"), (2, (1, 2), "full", "xla")],
    ids=["ragged-mask2dit", "equal-full"],
)
def test_split_packed_samples(frames, samples, mode, grad_impl):
    # Packed rows take the scene-by-scene path even with equal scenes: "all" = own sample.
    layout = SceneLayout(3, 5, frames, 2, 2, text_pad_to=4, mask_mode=mode, samples=samples)
    assert layout.is_packed
    q, k, v = random_qkv(layout, batch=2, seed=6)
    for impl in ("chunked", "dense", "xla"):
        fn = _backend(layout, "split", impl=impl, block_q=8, block_kv=16)
        _check(layout, fn, q, k, v, grads=impl == grad_impl)


def test_split_equal_layout_from_tuple_is_the_int_layout():
    layout = SceneLayout(3, 5, (2, 2, 2), 2, 3, text_pad_to=4)
    assert layout == SceneLayout(3, 5, 2, 2, 3, text_pad_to=4) and not layout.is_ragged
    q, k, v = random_qkv(layout, batch=1, seed=2)
    _check(layout, _backend(layout, "split", impl="chunked", block_q=8), q, k, v, grads=False)


def test_splash_ragged_interpret():
    # L = 3 x 16 captions + (4 + 1 + 2) x 12 video = 132 -> 2 x 2 blocks of 128 (padded to 256).
    layout = SceneLayout(3, 13, (4, 1, 2), 3, 4, text_pad_to=8, mask_mode=CAUSAL_CONDITIONS,
                         num_conditions=1)  # fmt: skip
    q, k, v = random_qkv(layout, batch=1, seed=3)
    _check(layout, _backend(layout, "splash", interpret=True), q, k, v)


@settings(max_examples=2, deadline=None, phases=NO_SHRINK)
@given(layout=ragged_layouts(min_scenes=2, grid=(1, 2)))
def test_splash_ragged_random_layout(layout):
    q, k, v = random_qkv(layout, batch=1, heads=1, seed=4)
    _check(layout, _backend(layout, "splash", interpret=True), q, k, v)


def test_splash_packed_interpret_and_skipped_blocks():
    # two packed samples: scenes (4, 1) and (2,) frames; the cross-sample tiles are skipped
    layout = SceneLayout(3, 13, (4, 1, 2), 3, 4, text_pad_to=8, samples=(2, 1))
    q, k, v = random_qkv(layout, batch=1, seed=7)
    _check(layout, _backend(layout, "splash", interpret=True, block_q=128, block_kv=128), q, k, v)
    big = SceneLayout(4, 13, (4, 4, 4, 4), 8, 8, text_pad_to=8, samples=(2, 2))
    assert block_statistics(big, 128, 128)["empty"] > 0.25  # 29.6%: cross-sample video tiles
    one = SceneLayout(4, 13, (4, 4, 4, 4), 8, 8, text_pad_to=8)
    assert block_statistics(one, 128, 128)["empty"] < block_statistics(big, 128, 128)["empty"]


def test_splash_block_statistics_ragged():
    ragged = SceneLayout(3, 13, (6, 2, 4), 8, 8, text_pad_to=8)
    equal = SceneLayout(3, 13, 4, 8, 8, text_pad_to=8)
    assert ragged.seq_len == equal.seq_len
    for layout in (ragged, equal):
        stats = block_statistics(layout, 128, 128)
        assert stats["empty"] + stats["partial"] + stats["full"] == pytest.approx(1.0)
        assert stats["full"] > 0 and stats["partial"] > 0


# Context parallelism: L = 3 x 8 captions + (1 + 3 + 2) x 4 video = 48 over 4 context shards of
# 12 tokens. Scene boundaries 8, 16 (captions) and 28, 40 (video) fall inside shards.
CP_LAYOUT = SceneLayout(3, 5, (1, 3, 2), 2, 2, text_pad_to=8)


@pytest.mark.parametrize(
    "backend, opts",
    [("split", {"impl": "chunked", "block_q": 16, "block_kv": 16}), ("xla", {})],
    ids=["split-chunked", "xla"],
)  # fmt: skip
@pytest.mark.parametrize("packed", [False, True], ids=["one-sample", "packed"])
def test_context_parallel_ragged(backend, opts, packed):
    layout, context = CP_LAYOUT, 4
    if packed:  # the same tokens as two packed samples: (1, 3) frames and (2,)
        layout = SceneLayout(3, 5, (1, 3, 2), 2, 2, text_pad_to=8, samples=(2, 1))
    shard = layout.seq_len // context
    cuts = [i * layout.text_block for i in range(1, 3)] + list(layout.video_starts[1:])
    assert all(c % shard for c in cuts)
    q, k, v = random_qkv(layout, batch=2, heads=8, seed=5)
    mesh = make_mesh({"data": 2, "context": context, "tensor": 1})
    fn = _backend(layout, backend, **opts)
    with jax.set_mesh(mesh):
        sharding = named_sharding(mesh, QKV_NAMES)
        qs, ks, vs = (jax.device_put(x, sharding) for x in (q, k, v))
        out, grads = _forward_and_grads(fn)(qs, ks, vs)
    assert out.sharding.spec == sharding.spec
    expected = numpy_masked_attention(q, k, v, reference_mask(layout))
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=F32_TOL, rtol=F32_TOL)
    ref = _backend(layout, "xla")
    want = _jit(jax.grad(fixed_cotangent_loss(ref), argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", grads, want):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=F32_TOL * scale, err_msg=f"d{name}")
