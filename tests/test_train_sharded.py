"""Sharded training matches one device; restore onto another mesh; gradient accumulation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train_common import tiny_config

from m2dit_jax.model import create_model
from m2dit_jax.sharding import make_mesh
from m2dit_jax.train import train_and_evaluate
from m2dit_jax.train.state import init_train_state, split_model
from m2dit_jax.train.step import batch_shardings, make_train_step

# Every axis in use, tensor and context together; tensor x context divides the 4 heads.
MESHES = [
    dict(data=2, fsdp=1, context=2, tensor=2),
    dict(data=1, fsdp=2, context=4, tensor=1),
]


def _config(mesh=None, **train):
    config = tiny_config(heads=4, **{"num_steps": 4, **train})
    if mesh is not None:
        config.mesh.update(dict(mesh, num_devices=0))
    return config


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """4 steps on one device: the reference."""
    return train_and_evaluate(_config(), str(tmp_path_factory.mktemp("one")))


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(str(v) for v in m.values()))
def test_sharded_losses_match_one_device(one_device, tmp_path, mesh):
    result = train_and_evaluate(_config(mesh, num_steps=4, stop_at_step=3), str(tmp_path))
    np.testing.assert_allclose(result["losses"], one_device["losses"][:3], rtol=2e-5, atol=1e-6)


def test_restore_onto_a_different_mesh_shape(one_device, tmp_path):
    first = train_and_evaluate(_config(MESHES[0], stop_at_step=2), str(tmp_path))
    second = train_and_evaluate(_config(MESHES[1]), str(tmp_path))  # 2x1x2x2 -> 1x2x4x1
    assert second["start_step"] == 2 and second["step"] == 4
    np.testing.assert_allclose(
        first["losses"] + second["losses"], one_device["losses"], rtol=2e-5, atol=1e-6
    )


def _deterministic_loss(model, batch, rng):
    """Regression of the latents themselves at t = 0: no randomness, so micro-batching is exact."""
    del rng
    b = batch["latents"].shape[0]
    pred = model(batch["latents"], batch["text_embeds"], jnp.zeros((b,), jnp.int32), num_scenes=2)
    err = jnp.mean(jnp.square(pred - batch["latents"]), axis=(2, 3, 4))  # (B, S*F)
    loss = jnp.mean(err)
    return loss, {"loss": loss, "loss_per_scene": jnp.mean(err.reshape(b, 2, -1), axis=(0, 2))}


def test_gradient_accumulation_equals_the_full_batch():
    """With SGD(lr=1) the update is the gradient: 4 strided micro-batches == the full batch."""
    accum = 4
    config = tiny_config()
    mesh = make_mesh(dict(fsdp=2), jax.devices()[:2])
    rng = np.random.default_rng(0)
    batch = {
        "latents": rng.standard_normal((8, 4, 4, 4, 12)).astype(np.float32),
        "text_embeds": rng.standard_normal((8, 8, 16)).astype(np.float32),
    }
    tx, sched = optax.sgd(1.0), optax.constant_schedule(1.0)
    results = []
    with jax.set_mesh(mesh):
        parts, params = split_model(create_model(config.model, seed=0, mesh=mesh))
        for a in (1, accum):
            state, sh = init_train_state(params, tx, mesh, 0)
            b_sh = batch_shardings(mesh, batch)
            step = make_train_step(
                parts,
                tx,
                sched,
                _deterministic_loss,
                state_shardings=sh,
                batch_sharding=b_sh,
                grad_accum_steps=a,
                donate=False,
            )
            new, metrics = step(state, {k: jax.device_put(v, b_sh[k]) for k, v in batch.items()})
            delta = jax.tree.map(lambda x, y: x - y, new["params"], state["params"])
            results.append((jax.device_get(delta), jax.device_get(metrics)))
    (d1, m1), (da, ma) = results
    np.testing.assert_allclose(ma["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(ma["loss_per_scene"], m1["loss_per_scene"], rtol=1e-6)
    np.testing.assert_allclose(ma["grad_norm"], m1["grad_norm"], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(da), jax.tree.leaves(d1)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)
