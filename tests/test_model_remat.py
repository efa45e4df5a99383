"""Remat policies (``config.remat``): same forward and gradients, different saved residuals.

Every policy of ``REMAT_POLICIES`` runs on XLA:CPU (it has a "pinned_host" memory space, so the
host-offload policies run too); a platform without host memory is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

from m2dit_jax.model import create_model, get_model_config
from m2dit_jax.model import transformer as transformer_module
from m2dit_jax.model.config import REMAT_POLICIES
from m2dit_jax.model.transformer import OFFLOAD_POLICIES, remat_policy

S = 3


def _inputs(cfg, batch=2):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    latents = jax.random.normal(k1, (batch, S * 2, 8, 12, cfg.in_channels))
    text = jax.random.normal(k2, (batch, S * cfg.text_len, cfg.text_dim))
    t = jax.random.randint(k3, (batch,), 0, 1000)
    return latents, text, jnp.stack([t, t // 2, jnp.zeros_like(t)], axis=1)


def _loss_fn(cfg):
    latents, text, t = _inputs(cfg)

    def loss(model):
        return jnp.mean(model(latents, text, t, num_scenes=S) ** 2)

    return loss


@functools.cache
@functools.lru_cache(maxsize=2)
def _reference_loss_and_grads(scan: bool):
    """No remat: computed once per ``scan`` for every policy's comparison."""
    return _loss_and_grads("none", scan)


def _loss_and_grads(remat: str, scan: bool):
    cfg = get_model_config("tiny", remat=remat, scan_layers=scan)
    model = create_model(cfg, seed=5)
    value, grads = nnx.jit(nnx.value_and_grad(_loss_fn(cfg)))(model)
    return float(value), {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(grads)}


def test_policy_tables_agree():
    assert set(REMAT_POLICIES) == {"none"} | set(transformer_module.REMAT_POLICIES)
    assert set(OFFLOAD_POLICIES) == {p for p in REMAT_POLICIES if p.startswith("offload_")}
    with pytest.raises(ValueError, match="remat"):
        get_model_config("tiny", remat="save_everything")


# Every policy on the scanned model (the production path), two also unscanned (suite time).
POLICY_CASES = [(p, True) for p in REMAT_POLICIES if p != "none"] + [
    ("full", False),
    ("save_qkv_attn", False),
]


@pytest.mark.parametrize("remat, scan", POLICY_CASES)
def test_every_policy_gives_the_same_loss_and_gradients(remat, scan):
    want_loss, want = _reference_loss_and_grads(scan)
    loss, grads = _loss_and_grads(remat, scan)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    assert set(grads) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(grads[key], value, atol=1e-6, rtol=1e-5, err_msg=str(key))


def _residuals(remat: str):
    cfg = get_model_config("tiny", remat=remat, scan_layers=False, num_layers=1)
    graphdef, state = nnx.split(create_model(cfg, seed=5))
    loss = _loss_fn(cfg)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(lambda s: loss(nnx.merge(graphdef, s)), state)
    return out.getvalue().splitlines()


def test_named_policies_save_what_they_name():
    full = _residuals("full")
    attn = _residuals("save_attn")
    qkv = _residuals("save_qkv_attn")
    assert not any("named" in w for w in full)
    assert sum("named 'attn_out'" in w for w in attn) == 1
    assert not any("named 'query'" in w for w in attn)
    for name in ("query", "key", "value", "attn_out"):
        assert sum(f"named '{name}'" in w for w in qkv) == 1, name


def test_offload_policies_are_refused_where_there_is_no_host_memory(monkeypatch):
    from m2dit_jax.attention import dispatch

    assert remat_policy("offload_attn") is not None  # XLA:CPU has pinned_host
    monkeypatch.setattr(dispatch, "target_platform", lambda: "neuron")
    for name in OFFLOAD_POLICIES:
        with pytest.raises(ValueError, match="no 'pinned_host' memory space"):
            remat_policy(name)
    assert remat_policy("save_attn") is not None  # only offloading needs host memory
    cfg = get_model_config("tiny", remat="offload_dots")
    model = create_model(cfg, seed=5)
    with pytest.raises(ValueError, match="offload_dots"):
        _loss_fn(cfg)(model)
