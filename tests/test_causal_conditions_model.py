"""The model under causal conditions: mask-1 calls unchanged, the cached condition path equal
to the full-window forward (RoPE and sin-cos, scanned and not, bf16, text padding, a mesh)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m2dit_jax.model import create_model, get_model_config
from m2dit_jax.sharding import make_mesh

S, F, H, W = 3, 2, 8, 12


def _inputs(cfg, batch=2, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    latents = jax.random.normal(k1, (batch, S * F, H, W, cfg.in_channels))
    text = jax.random.normal(k2, (batch, S * cfg.text_len, cfg.text_dim))
    t = jnp.asarray([[0, 0, 700], [0, 0, 31]][:batch], jnp.int32)
    return latents, text, t


def _full_and_cached(model, cfg, latents, text, t):
    full = nnx.jit(lambda m, *a: m(*a, num_scenes=S, causal_conditions=S - 1))(
        model, latents, text, t
    )
    k = S - 1

    @nnx.jit
    def cached(m, latents, text, t):
        cache = m.condition_cache(latents[:, : k * F], text[:, : k * cfg.text_len], num_scenes=S)
        new = m.cached_call(
            latents[:, k * F :], text[:, k * cfg.text_len :], t[:, k:], cache, num_scenes=S
        )
        return new, cache

    new, cache = cached(model, latents, text, t)
    return full, new, cache


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"positions": "sincos"},
        {"positions": "sincos", "sincos_temporal": "stretch"},
        {"scan_layers": True, "text_pad_to": 8},
        {"attention_backend": "split", "attention_options": {"impl": "chunked", "block_q": 16}},
        # the fused two-call parts (cuDNN's code path, XLA implementation on CPU)
        {"attention_backend": "split", "attention_options": {"impl": "xla"}, "text_pad_to": 8},
        {"attention_backend": "splash", "attention_options": {"interpret": True}},
        {"attention_backend": "auto"},
    ],
    ids=["rope", "sincos", "stretch", "scan-padded", "split", "split-xla", "splash", "auto"],
)
def test_cached_step_equals_full_window(overrides):
    cfg = get_model_config("tiny", **overrides)
    model = create_model(cfg, seed=1)
    latents, text, t = _inputs(cfg)
    full, new, cache = _full_and_cached(model, cfg, latents, text, t)
    tokens = (S - 1) * F * (H // 2) * (W // 2)
    assert cache["k"].shape == (cfg.num_layers, 2, tokens, cfg.num_heads, cfg.head_dim)
    np.testing.assert_allclose(new, full[:, (S - 1) * F :], atol=2e-5, rtol=2e-5)
    # the conditions' outputs do not depend on the generated scene
    other = latents.at[:, (S - 1) * F :].set(0.0)
    full2 = model(other, text, t, num_scenes=S, causal_conditions=S - 1)
    np.testing.assert_allclose(full2[:, : (S - 1) * F], full[:, : (S - 1) * F], atol=1e-5)


def test_mask1_calls_are_unchanged_and_differ_from_causal():
    cfg = get_model_config("tiny")
    model = create_model(cfg, seed=2)
    latents, text, t = _inputs(cfg)
    plain = model(latents, text, t, num_scenes=S)
    again = model(latents, text, t, num_scenes=S, causal_conditions=0)
    np.testing.assert_array_equal(plain, again)
    causal = model(latents, text, t, num_scenes=S, causal_conditions=S - 1)
    assert np.abs(np.asarray(causal - plain)).max() > 1e-4


def test_bf16_cached_tracks_full():
    cfg = get_model_config("tiny", dtype="bfloat16", scan_layers=True)
    model = create_model(cfg, seed=3)
    latents, text, t = _inputs(cfg)
    full, new, cache = _full_and_cached(model, cfg, latents, text, t)
    assert cache["k"].dtype == jnp.bfloat16
    np.testing.assert_allclose(new, full[:, (S - 1) * F :], atol=5e-2, rtol=5e-2)


def test_cached_on_a_mesh_equals_single_device():
    # new scene: 8 caption + 2*4*6 = 56 tokens; cache 2 * 48 = 96 tokens: both divide by 2.
    cfg = get_model_config("tiny", scan_layers=True, num_heads=4)
    latents, text, t = _inputs(cfg, batch=2)
    single = create_model(cfg, seed=4)
    _, want, _ = _full_and_cached(single, cfg, latents, text, t)
    mesh = make_mesh({"data": 2, "context": 2, "tensor": 2})
    sharded = create_model(cfg, seed=4, mesh=mesh)
    with jax.set_mesh(mesh):
        _, got, cache = _full_and_cached(sharded, cfg, latents, text, t)
    assert "context" in str(cache["k"].sharding.spec) or cache["k"].sharding.spec[2] is not None
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


def test_bad_requests_raise():
    cfg = get_model_config("tiny")
    model = create_model(cfg, seed=5)
    latents, text, t = _inputs(cfg)
    with pytest.raises(ValueError, match="1 <= num_conditions"):
        model(latents, text, t, num_scenes=S, causal_conditions=S)
    ablation = create_model(get_model_config("tiny", mask_mode="full"), seed=5)
    with pytest.raises(ValueError, match="needs model mask_mode='mask2dit'"):
        ablation(latents, text, t, num_scenes=S, causal_conditions=1)
    cache = model.condition_cache(latents[:, : 2 * F], text[:, : 2 * cfg.text_len], num_scenes=S)
    with pytest.raises(ValueError, match="cache k/v must be"):
        model.cached_call(latents[:, :F], text[:, : cfg.text_len], t[:, 2], cache, num_scenes=4)
    with pytest.raises(ValueError, match="do not split"):
        model.condition_cache(latents[:, : 2 * F], text[:, :8], num_scenes=4)
