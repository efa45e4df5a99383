"""LoRA dropout (``lora.dropout > 0``, peft's ``lora_dropout``): training runs the unmerged
branch. Without dropout it equals the merged kernels (forward and adapter gradients); with it,
the masks are inverted dropout drawn from the "lora_dropout" stream — unbiased, at the asked
rate, the same whether the layers are scanned or not — and a dropout step is the same on one
device and on a sharded, accumulated, context-parallel mesh."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_lora import lora_config, one_and_eight_device_steps

from m2dit_jax.model import create_model
from m2dit_jax.model.layers import LoraBranch
from m2dit_jax.rng import stream
from m2dit_jax.train import ConfigError, check_config
from m2dit_jax.train import lora as lora_lib
from m2dit_jax.train.state import split_model

S = 2  # scenes of the tiny config


def _model_inputs(config, batch=2):
    rng = np.random.default_rng(1)
    d, m = config.data, config.model
    f = d.frames // d.patch_t
    hw = d.height // d.patch_s
    latents = rng.standard_normal((batch, S * f, hw, hw, m.in_channels)).astype(np.float32)
    text = rng.standard_normal((batch, S * m.text_len, m.text_dim)).astype(np.float32)
    t = np.array([[500, 0], [250, 900]][:batch], np.int32)
    return jnp.asarray(latents), jnp.asarray(text), jnp.asarray(t)


def _random_adapters(spec, params, seed=0):
    """Adapters with B != 0 (trained-looking), shaped for ``params`` (numpy: no eager jax)."""
    abstract = lora_lib.abstract_adapters(
        spec, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    )
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), jnp.float32), abstract
    )


@functools.lru_cache(maxsize=2)
def _setup(scan_layers=True, dropout=0.0):
    config = lora_config()
    config.model.scan_layers = scan_layers
    config.lora.dropout = dropout
    parts, params = split_model(create_model(config.model, seed=0))
    spec = lora_lib.lora_spec(config)
    return config, parts, params, spec


def _loss(model, inputs):
    latents, text, t = inputs
    return jnp.mean(model(latents, text, t, num_scenes=S) ** 2)


def test_unmerged_branch_without_dropout_equals_merged_kernels():
    config, parts, params, spec = _setup()
    adapters = _random_adapters(spec, params)
    inputs = _model_inputs(config)
    key = stream(0, "lora_dropout")

    def merged(ad):
        return _loss(parts.bind(lora_lib.merge(params, ad, spec)), inputs)

    def unmerged(ad):
        return _loss(lora_lib.bind_unmerged(parts, params, ad, spec, key), inputs)

    merged_grad = jax.jit(jax.value_and_grad(merged))
    want, g_want = merged_grad(adapters)
    got, g_got = jax.jit(jax.value_and_grad(unmerged))(adapters)
    no_update = merged_grad(jax.tree.map(jnp.zeros_like, adapters))[0]
    assert float(jnp.abs(want - no_update)) > 1e-4  # the adapters matter
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=1e-6)


def test_branch_dropout_is_unbiased_inverted_dropout_at_the_rate():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 64, 8)), jnp.float32)
    a = jnp.asarray(rng.standard_normal((8, 3)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)
    rate = 0.3

    def branch(key_data, r):
        return LoraBranch(a, b, key_data, n_in=1, scale=2.0, rate=r, dtype=jnp.float32)(x)

    keys = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(jax.random.key(0), i)))(
        jnp.arange(400)
    )
    outs = jax.jit(jax.vmap(lambda k: branch(k, rate)))(keys)
    exact = branch(keys[0], 0.0)
    np.testing.assert_allclose(exact, 2.0 * (x @ a) @ b, rtol=1e-5, atol=1e-5)
    # mean over masks -> the undropped branch (inverted dropout is unbiased)
    err = float(jnp.abs(outs.mean(0) - exact).mean() / jnp.abs(exact).mean())
    assert err < 0.06, err
    assert float(jnp.abs(outs[0] - outs[1]).max()) > 1e-3  # a fresh mask per key
    # the kept fraction of the input is 1 - rate: a one-hot `a` reads single inputs back
    probe = LoraBranch(
        jnp.eye(8, 1), jnp.ones((1, 1)), keys[0], n_in=1, scale=1.0, rate=rate, dtype=jnp.float32
    )
    kept = jnp.mean(probe(jnp.ones((256, 8, 8))) != 0)
    assert abs(float(kept) - (1 - rate)) < 0.03
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        LoraBranch(a, b, keys[0], n_in=1, scale=1.0, rate=1.0, dtype=jnp.float32)


def _unscan(tree, num_layers):
    out = {k: v for k, v in tree.items() if k != "blocks"}
    out["blocks"] = {
        i: jax.tree.map(lambda v, i=i: v[i], tree["blocks"]) for i in range(num_layers)
    }
    return out


def test_dropout_masks_are_the_same_scanned_or_not_and_differ_per_layer_and_module():
    config, parts, params, spec = _setup()
    spec = dataclasses.replace(spec, dropout=0.5)
    _, parts_u, _, spec_u = _setup(scan_layers=False, dropout=0.5)
    adapters = _random_adapters(spec, params)
    n = int(config.model.num_layers)
    inputs = _model_inputs(config)
    rng = jax.random.fold_in(stream(0, "train"), 3)

    def loss(p, s, base, ad, key):
        return _loss(lora_lib.bind_for_training(p, base, ad, s, key), inputs)

    scanned = jax.jit(lambda ad, k: loss(parts, spec, params, ad, k))
    unscanned = jax.jit(lambda ad, k: loss(parts_u, spec_u, _unscan(params, n), ad, k))
    a = scanned(adapters, rng)
    np.testing.assert_allclose(float(unscanned(_unscan(adapters, n), rng)), float(a), rtol=1e-5)
    no_dropout = dataclasses.replace(spec, dropout=0.0)
    merged = jax.jit(lambda ad, k: loss(parts, no_dropout, params, ad, k))(adapters, rng)
    assert abs(float(a) - float(merged)) > 1e-5  # dropout is applied
    assert abs(float(a) - float(scanned(adapters, jax.random.fold_in(rng, 1)))) > 1e-6  # per step
    q, k = (t for t in spec.targets if t.module in ("attn/to_q", "attn/to_k"))
    key = stream(rng, "lora_dropout")
    kq, kk = lora_lib.dropout_keys(q, key, n), lora_lib.dropout_keys(k, key, n)
    assert kq.shape == (n, 2) and len({tuple(np.asarray(r)) for r in (*kq, *kk)}) == 2 * n


def test_dropout_step_is_the_same_on_one_device_and_a_context_parallel_mesh():
    config = lora_config()
    config.lora.dropout = 0.5
    config.optim.grad_accum_steps = 2
    one, eight = one_and_eight_device_steps(config)
    assert one[0].lora.dropout == 0.5
    assert float(one[3]["grad_norm"]) > 0
    np.testing.assert_allclose(float(one[3]["loss"]), float(eight[3]["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(one[3]["grad_norm"]), float(eight[3]["grad_norm"]), rtol=1e-4)
    for x, y in zip(
        jax.tree.leaves(one[2]["params"]), jax.tree.leaves(eight[2]["params"]), strict=True
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


def test_dropout_config_is_checked():
    config = lora_config()
    config.lora.dropout = 1.0
    with pytest.raises(ConfigError, match=r"lora.dropout=1.0 must be in \[0, 1\)"):
        check_config(config, num_devices=1)
    config.lora.dropout = 0.1
    assert check_config(config, num_devices=1)
