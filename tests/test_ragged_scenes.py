"""Scenes of their own lengths through the model, the objective and the samplers: the
equal layout unchanged bit for bit, every attention backend equal, the loss per token of the
generated scenes, generate / extend / extend_chain (cached and uncached)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m2dit_jax.diffusion import CogVideoXSchedule, extend, extend_chain, generate
from m2dit_jax.diffusion.objective import diffusion_loss, loss_fn, scene_means
from m2dit_jax.model import create_model, get_model_config

CFG = get_model_config("tiny")
T, D, C = CFG.text_len, CFG.text_dim, CFG.in_channels
FRAMES = (3, 1, 2)  # latent frames per scene, incl. a 1-frame shot
forward = nnx.jit(lambda m, *a, **k: m(*a, **k),
                  static_argnames=("num_scenes", "scene_frames", "causal_conditions"))  # fmt: skip


def texts(b, s, seed=0):
    return jax.random.normal(jax.random.key(seed), (b, s * T, D))


def latents(b, frames, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, frames, 8, 8, C))


@pytest.fixture(scope="module")
def model():
    return create_model(CFG, seed=0)


def test_equal_counts_are_the_equal_layout_bit_for_bit(model):
    x, text, t = latents(2, 6), texts(2, 3), jnp.array([[3, 0, 999], [17, 17, 17]])
    equal = forward(model, x, text, t, num_scenes=3)
    tupled = forward(model, x, text, t, num_scenes=3, scene_frames=(2, 2, 2))
    np.testing.assert_array_equal(np.asarray(equal), np.asarray(tupled))
    assert model.layout(x.shape, 3, scene_frames=(2, 2, 2)) == model.layout(x.shape, 3)


@pytest.mark.parametrize("positions", ["rope", "sincos"])
def test_ragged_forward_every_backend_and_conditions(positions):
    base = create_model(get_model_config("tiny", positions=positions), seed=1)
    x, text = latents(2, sum(FRAMES)), texts(2, 3, 2)
    t = jnp.array([[0, 999, 5], [412, 0, 0]])
    ref = forward(base, x, text, t, num_scenes=3, scene_frames=FRAMES)
    assert ref.shape == x.shape
    for backend, options in (("split", {"impl": "chunked"}), ("split", {"impl": "xla"})):
        cfg = get_model_config(
            "tiny", positions=positions, attention_backend=backend, attention_options=options
        )
        other = create_model(cfg, seed=1)
        got = forward(other, x, text, t, num_scenes=3, scene_frames=FRAMES)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-5, rtol=2e-5)
    # a scene's output depends on its own frame count: moving one frame changes the layout
    moved = forward(base, x, text, t, num_scenes=3, scene_frames=(2, 2, 2))
    assert np.abs(np.asarray(moved - ref)).max() > 1e-3


def test_ragged_loss_is_per_token_over_generated_scenes():
    schedule = CogVideoXSchedule.create()
    x0, eps, text = latents(2, 6, 3), latents(2, 6, 4), texts(2, 3, 5)
    gen = jnp.array([[True, True, True], [False, False, True]])
    t = jnp.array([100, 700])
    seen = {}

    def fake(x, txt, st, *, num_scenes, scene_frames=None):
        seen["scene_frames"], seen["t"] = scene_frames, st
        return 0.5 * x

    loss, metrics = diffusion_loss(
        fake, x0, text, eps, t, gen, schedule=schedule, num_scenes=3, scene_frames=FRAMES
    )
    assert seen["scene_frames"] == FRAMES
    np.testing.assert_array_equal(seen["t"], [[100, 100, 100], [0, 0, 700]])
    # by hand: conditions exactly clean, per-token mean over the generated frames
    xn, x0n, en = (np.asarray(a, np.float64) for a in (x0, x0, eps))
    ab = np.asarray(schedule.alphas_cumprod, np.float64)[np.asarray(t)]
    a, s = np.sqrt(ab)[:, None, None, None, None], np.sqrt(1 - ab)[:, None, None, None, None]
    gen_f = np.repeat(np.asarray(gen), FRAMES, axis=1)
    model_in = np.where(gen_f[..., None, None, None], a * x0n + s * en, xn)
    err = ((0.5 * model_in - (a * en - s * x0n)) ** 2).mean(axis=(2, 3, 4))  # (B, F)
    want = np.mean([(err[i] * gen_f[i]).sum() / gen_f[i].sum() for i in range(2)])
    assert abs(float(loss) - want) < 1e-5
    per_scene = np.asarray(scene_means(jnp.asarray(err), FRAMES))
    np.testing.assert_allclose(per_scene[:, 0], err[:, :3].mean(1), rtol=1e-6)
    assert metrics["loss_per_scene"].shape == (3,) and int(metrics["num_cond"]) == 1
    # equal counts take the equal path: the same number as scene_frames=None
    eq = dict(schedule=schedule, num_scenes=3)
    a1 = diffusion_loss(fake, x0, text, eps, t, gen, scene_frames=(2, 2, 2), **eq)[0]
    a2 = diffusion_loss(fake, x0, text, eps, t, gen, **eq)[0]
    assert float(a1) == float(a2)


def test_ragged_loss_trains_the_real_model(model):
    batch = {"latents": latents(2, 6, 7), "text_embeds": texts(2, 3, 8)}
    schedule = CogVideoXSchedule.create()

    def loss(m):
        return loss_fn(m, batch, jax.random.key(0), schedule=schedule, num_scenes=3,
                       p_cond=0.5, scene_frames=FRAMES)[0]  # fmt: skip

    value, grads = nnx.value_and_grad(loss)(model)
    leaves = jax.tree.leaves(nnx.state(grads))
    assert np.isfinite(float(value)) and all(np.isfinite(np.asarray(g)).all() for g in leaves)
    with pytest.raises(ValueError, match="summing to"):
        loss_fn(model, batch, jax.random.key(0), schedule=schedule, num_scenes=3,
                scene_frames=(3, 2, 2))  # fmt: skip


def test_generate_and_extend_ragged(model):
    text = texts(1, 3, 9)
    out = generate(model, text, num_scenes=3, latent_shape=(8, 8, C), scene_frames=FRAMES,
                   num_steps=2, guidance_scale=1.0)  # fmt: skip
    assert out.shape == (1, 6, 8, 8, C) and np.isfinite(np.asarray(out)).all()
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        generate(model, text, num_scenes=3, latent_shape=(2, 8, 8, C), scene_frames=FRAMES)
    kw = dict(scene_text=text, window=3, num_steps=2, guidance_scale=3.0, seed=4,
              scene_frames=FRAMES, new_scene_frames=4)  # fmt: skip
    ext = extend(model, out, texts(1, 1, 10), **kw)
    assert ext.shape == (1, 10, 8, 8, C)
    np.testing.assert_array_equal(np.asarray(ext[:, :6]), np.asarray(out))
    # the new scene sees the last two scenes (1 + 2 frames) and its own 4: a different
    # window than equal 2-frame scenes would give
    causal = dict(kw, mask_mode="causal_conditions")
    uncached = extend(model, out, texts(1, 1, 10), **causal)
    cached = extend(model, out, texts(1, 1, 10), cache_conditions=True, **causal)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(uncached), atol=2e-5, rtol=2e-5)
    chain = extend_chain(model, out, text, [texts(1, 1, 11), texts(1, 1, 12)], window=3,
                         num_steps=2, guidance_scale=1.0, scene_frames=FRAMES,
                         new_scene_frames=(1, 5), mask_mode="causal_conditions",
                         cache_conditions=True)  # fmt: skip
    assert chain.shape == (1, 12, 8, 8, C)
    np.testing.assert_array_equal(np.asarray(chain[:, :6]), np.asarray(out))
    with pytest.raises(ValueError, match="scene_frames"):
        extend(model, out, texts(1, 1, 10), **dict(kw, scene_frames=(3, 3)))
