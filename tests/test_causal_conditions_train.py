"""Training with diffusion.cond_mask_mode="causal_conditions": the loss, the per-batch mask-2
draw, validation, and fine-tuning a tiny mask-1 model into the causal mode."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_train_common import tiny_config

from m2dit_jax.diffusion import CogVideoXSchedule, loss_fn
from m2dit_jax.diffusion.objective import diffusion_loss
from m2dit_jax.model import create_model, get_model_config
from m2dit_jax.train import ConfigError, check_config
from m2dit_jax.train.program import make_loss

SCHED = CogVideoXSchedule.create()
S = 3


def _batch(cfg, b=2, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "latents": jax.random.normal(k1, (b, S * 2, 8, 8, cfg.in_channels)),
        "text_embeds": jax.random.normal(k2, (b, S * cfg.text_len, cfg.text_dim)),
    }


def test_conditional_batch_uses_the_causal_layout_and_joint_batch_mask1():
    cfg = get_model_config("tiny")
    model = create_model(cfg, seed=0)
    batch = _batch(cfg)
    noise = jax.random.normal(jax.random.key(3), batch["latents"].shape)
    t = jnp.asarray([400, 900], jnp.int32)
    cond = jnp.asarray([[False, False, True]] * 2)
    joint = jnp.ones((2, S), bool)
    args = (model, batch["latents"], batch["text_embeds"], noise, t)
    kw = dict(schedule=SCHED, num_scenes=S)

    def with_model_kwargs(**extra):
        return lambda *a, **k: model(*a, **{**k, **extra})

    want_c, _ = diffusion_loss(with_model_kwargs(causal_conditions=S - 1), *args[1:], cond, **kw)
    got_c, _ = diffusion_loss(*args, cond, cond_mask_mode="causal_conditions", **kw)
    release_c, _ = diffusion_loss(*args, cond, **kw)
    np.testing.assert_allclose(got_c, want_c, rtol=1e-6)
    assert abs(float(got_c) - float(release_c)) > 1e-6  # the mask changes the prediction
    got_j, _ = diffusion_loss(*args, joint, cond_mask_mode="causal_conditions", **kw)
    want_j, _ = diffusion_loss(*args, joint, **kw)
    np.testing.assert_allclose(got_j, want_j, rtol=1e-6)  # lax.cond branch vs eager call


def test_mask2_is_drawn_per_batch_with_probability_p_cond():
    seen = []

    def fake(x, text, t, *, num_scenes, causal_conditions=0):
        seen.append(causal_conditions)
        return jnp.zeros_like(x)

    cfg = get_model_config("tiny")
    batch = _batch(cfg, b=4)
    step = jax.jit(
        lambda r: loss_fn(
            fake, batch, r, schedule=SCHED, num_scenes=S, p_cond=0.5,
            cond_mask_mode="causal_conditions",
        )[1]["num_cond"]
    )  # fmt: skip
    counts = [int(step(jax.random.key(i))) for i in range(40)]
    assert set(counts) == {0, 4}  # whole batches, never mixed
    assert 8 <= counts.count(4) <= 32
    assert sorted(set(seen)) == [0, S - 1]  # both branches traced, one lax.cond


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target_scene="random"), "needs target_scene='last'"),
        (dict(cond_mask_mode="causal"), "cond_mask_mode must be one of"),
    ],
)
def test_bad_options_raise(kwargs, match):
    cfg = get_model_config("tiny")
    model = create_model(cfg, seed=0)
    kwargs = {"cond_mask_mode": "causal_conditions", **kwargs}
    with pytest.raises(ValueError, match=match):
        loss_fn(model, _batch(cfg), jax.random.key(0), schedule=SCHED, num_scenes=S, **kwargs)


def test_mixed_explicit_mask_raises():
    cfg = get_model_config("tiny")
    model = create_model(cfg, seed=0)
    batch = {**_batch(cfg), "cond": np.asarray([[False, False, True], [True, True, True]])}
    with pytest.raises(ValueError, match="batch-uniform"):
        loss_fn(
            model, batch, jax.random.key(0), schedule=SCHED, num_scenes=S,
            cond_mask_mode="causal_conditions",
        )  # fmt: skip


def test_config_option_is_validated_and_reaches_the_loss():
    config = tiny_config()
    assert config.diffusion.cond_mask_mode == "mask2dit"  # the default: release behaviour
    config.diffusion.cond_mask_mode = "causal_conditions"
    config.diffusion.target_scene = "random"
    with pytest.raises(ConfigError, match="cond_mask_mode='causal_conditions' needs"):
        check_config(config, num_devices=1)
    config.diffusion.cond_mask_mode = "sideways"
    with pytest.raises(ConfigError, match="cond_mask_mode='sideways' must be"):
        check_config(config, num_devices=1)
    config.diffusion.cond_mask_mode = "causal_conditions"
    config.diffusion.target_scene = "last"
    check_config(config, num_devices=1)
    assert make_loss(config).keywords["cond_mask_mode"] == "causal_conditions"


def test_fine_tune_mask1_model_into_causal_conditions():
    cfg = get_model_config("tiny")
    model = create_model(cfg, seed=1)
    batch = _batch(cfg, b=4, seed=5)
    tx = optax.adam(3e-3)

    def run(mode, p_cond, steps, start):
        opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(m, o, r):
            def loss(mm):
                return loss_fn(
                    mm, batch, r, schedule=SCHED, num_scenes=S, p_cond=p_cond,
                    cond_mask_mode=mode,
                )  # fmt: skip

            (value, metrics), grads = nnx.value_and_grad(loss, has_aux=True)(m)
            o.update(m, grads)
            return value, metrics["num_cond"]

        # the same key every step: the loss on a fixed (t, noise) draw must go down
        return [step(model, opt, jax.random.key(start)) for _ in range(steps)]

    run("mask2dit", 0.5, 10, 0)  # "pretrained" with mask 1
    causal = run("causal_conditions", 1.0, 12, 1)  # fine-tune: every batch conditional
    losses = [float(v) for v, _ in causal]
    assert all(int(n) == 4 for _, n in causal)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_trainer_runs_causal_mode_sharded_like_one_device(tmp_path):
    from m2dit_jax.train import train_and_evaluate

    def config(mesh=None):
        c = tiny_config(heads=4, num_steps=3)
        c.diffusion.update(dict(cond_mask_mode="causal_conditions", p_cond=0.5))
        if mesh is not None:
            c.mesh.update(dict(mesh, num_devices=0))
        return c

    one = train_and_evaluate(config(), str(tmp_path / "one"))
    mesh = dict(data=2, fsdp=1, context=2, tensor=2)
    sharded = train_and_evaluate(config(mesh), str(tmp_path / "sharded"))
    assert all(np.isfinite(one["losses"]))
    np.testing.assert_allclose(sharded["losses"], one["losses"], rtol=2e-5, atol=1e-6)
