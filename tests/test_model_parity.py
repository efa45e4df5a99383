"""Mask2DiT equals diffusers' CogVideoXTransformer3DModel (random tiny weights, f32)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the parity extra (torch + diffusers) is needed")
pytest.importorskip("diffusers", reason="the parity extra (torch + diffusers) is needed")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from test_model_reference import (  # noqa: E402
    TINY,
    diffusers_rope,
    per_scene_reference,
    random_diffusers_transformer,
    run_diffusers,
)

from m2dit_jax.convert import load_diffusers_transformer  # noqa: E402
from m2dit_jax.model import Mask2DiT  # noqa: E402

pytestmark = pytest.mark.parity
TOL = 1e-4
# jitted: one compile per shape instead of one per primitive in eager mode
forward = nnx.jit(Mask2DiT.__call__, static_argnames="num_scenes")


def _inputs(seed, batch, frames, h, w, text_len, channels=4):
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((batch, frames, h, w, channels)).astype(np.float32)
    text = rng.standard_normal((batch, text_len, TINY["text_embed_dim"])).astype(np.float32)
    timesteps = rng.integers(0, 1000, size=(batch,)).astype(np.int64)
    return latents, text, timesteps


def _load(torch_model, tmp_path, name, **overrides):
    folder = tmp_path / name
    # a tiny shard size forces the sharded-with-index layout of the released checkpoints
    torch_model.save_pretrained(folder, max_shard_size="20KB")
    return load_diffusers_transformer(str(folder), **overrides)


@pytest.fixture(scope="module")
def single_scene_models(tmp_path_factory):
    """positions -> (torch model, our model loaded from its sharded save_pretrained folder)."""
    out = {}
    for positions in ("rope", "sincos"):
        torch_model = random_diffusers_transformer(positions)
        out[positions] = (torch_model, _load(torch_model, tmp_path_factory.mktemp(positions), "t"))
    return out


@pytest.mark.parametrize("positions", ["rope", "sincos"])
@pytest.mark.parametrize("latent_hw", [(8, 8), (8, 12), (12, 8), (4, 6)])
def test_single_scene_matches_diffusers(single_scene_models, positions, latent_hw):
    h, w = latent_hw  # (8, 8) is the sample grid; the others take fractional RoPE positions
    torch_model, model = single_scene_models[positions]
    latents, text, t = _inputs(0, 2, 2, h, w, TINY["max_text_seq_length"])
    rope = diffusers_rope(torch_model, 2, h, w) if positions == "rope" else None
    want = run_diffusers(torch_model, latents, text, t, rope=rope)
    got = np.asarray(
        forward(model, jnp.asarray(latents), jnp.asarray(text), jnp.asarray(t), num_scenes=1)
    )
    assert got.shape == want.shape == (2, 2, h, w, 4)
    assert np.abs(got - want).max() <= TOL


@pytest.mark.parametrize("positions", ["rope", "sincos"])
def test_three_scenes_with_mask1_match_diffusers(tmp_path, positions):
    s, f, t_len = 3, 2, TINY["max_text_seq_length"]
    # the sin-cos reference needs max_text_seq_length == all caption tokens
    torch_model = random_diffusers_transformer(positions, max_text_seq_length=s * t_len)
    model = _load(torch_model, tmp_path, "t", text_len=t_len)
    latents, text, t = _inputs(1, 2, s * f, 8, 12, s * t_len)
    layout = model.layout(latents.shape, s)
    assert layout.text_len == t_len and layout.frames == f
    mask = np.broadcast_to(layout.dense_mask(), (2, layout.seq_len, layout.seq_len)).copy()
    assert not mask.all()
    rope = diffusers_rope(torch_model, s * f, 8, 12) if positions == "rope" else None
    want = run_diffusers(torch_model, latents, text, t, rope=rope, mask=mask)
    got = np.asarray(
        forward(model, jnp.asarray(latents), jnp.asarray(text), jnp.asarray(t), num_scenes=s)
    )
    assert np.abs(got - want).max() <= TOL
    # the mask matters: without it the reference differs clearly
    unmasked = run_diffusers(torch_model, latents, text, t, rope=rope)
    assert np.abs(unmasked - want).max() > 100 * TOL


@pytest.mark.parametrize("positions", ["rope", "sincos"])
def test_per_scene_timesteps_match_reference(tmp_path, positions):
    s, f, t_len = 3, 2, TINY["max_text_seq_length"]
    torch_model = random_diffusers_transformer(positions, seed=3, max_text_seq_length=s * t_len)
    model = _load(torch_model, tmp_path, "t", text_len=t_len)
    latents, text, _ = _inputs(2, 2, s * f, 8, 8, s * t_len)
    timesteps = np.array([[0, 0, 737], [412, 0, 999]], dtype=np.int64)  # mask 2: t=0 conditions
    layout = model.layout(latents.shape, s)
    mask = np.broadcast_to(layout.dense_mask(), (2, layout.seq_len, layout.seq_len)).copy()
    rope = diffusers_rope(torch_model, s * f, 8, 8) if positions == "rope" else None
    want = per_scene_reference(torch_model, latents, text, timesteps, s, mask, rope=rope)
    got = forward(
        model, jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps), num_scenes=s
    )
    assert np.abs(np.asarray(got) - want).max() <= TOL
    # the reference itself equals diffusers when all scenes share t
    same = np.array([[412] * s, [58] * s])
    ref_same = per_scene_reference(torch_model, latents, text, same, s, mask, rope=rope)
    diff_same = run_diffusers(torch_model, latents, text, same[:, 0], rope=rope, mask=mask)
    assert np.abs(ref_same - diff_same).max() <= TOL


def test_sincos_stretch_matches_torch_trilinear():
    """The release's 2B multi-scene positions: the F-frame table stretched to S*F frames."""
    import torch.nn.functional as F
    from diffusers.models.embeddings import get_3d_sincos_pos_embed

    from m2dit_jax.model.positions import sincos_table, stretch_frames

    width, frames, gh, gw, scenes = 64, 13, 3, 5, 3
    base = get_3d_sincos_pos_embed(width, (gw, gh), frames, 1.875, 1.0, output_type="pt")
    grid = base.reshape(1, frames, gh, gw, width).permute(0, 4, 1, 2, 3).float()
    want = F.interpolate(grid, size=(scenes * frames, gh, gw), mode="trilinear")
    want = want.permute(0, 2, 3, 4, 1).reshape(-1, width).numpy()
    ours = sincos_table(width, frames, gh, gw)
    assert np.abs(ours - base.reshape(-1, width).numpy()).max() < 1e-6
    got = stretch_frames(ours, frames, gh * gw, scenes * frames)
    assert np.abs(got - want).max() < 1e-6
    # and the model uses it: S=1 is unchanged, S=3 differs from the continuous table
    from m2dit_jax.model import create_model, get_model_config

    kw = dict(positions="sincos", scan_layers=True)
    stretch = create_model(get_model_config("tiny", sincos_temporal="stretch", **kw), seed=0)
    plain = create_model(get_model_config("tiny", **kw), seed=0)
    layout1, layout3 = stretch.layout((2, 8, 8, 4), 1), stretch.layout((6, 8, 8, 4), 3)
    np.testing.assert_array_equal(stretch._sincos(layout1), plain._sincos(layout1))
    assert float(jnp.abs(stretch._sincos(layout3) - plain._sincos(layout3)).max()) > 0.1


@pytest.mark.parametrize("positions", ["rope", "sincos"])
def test_ragged_scenes_match_the_diffusers_modules(tmp_path, positions):
    """Scenes of 3, 1 and 2 latent frames: shared t equals diffusers on the whole clip with
    mask 1 of the ragged layout (positions run over all 6 frames); per-scene t equals the
    per-scene reference."""
    frames, t_len = (3, 1, 2), TINY["max_text_seq_length"]
    s = len(frames)
    torch_model = random_diffusers_transformer(
        positions, seed=5, max_text_seq_length=s * t_len, sample_frames=9
    )
    model = _load(torch_model, tmp_path, "t", text_len=t_len)
    latents, text, t = _inputs(4, 2, sum(frames), 8, 8, s * t_len)
    layout = model.layout(latents.shape, s, scene_frames=frames)
    assert layout.scene_frames == frames and layout.video_lens == (48, 16, 32)
    mask = np.broadcast_to(layout.dense_mask(), (2, layout.seq_len, layout.seq_len)).copy()
    rope = diffusers_rope(torch_model, sum(frames), 8, 8) if positions == "rope" else None
    ragged = nnx.jit(Mask2DiT.__call__, static_argnames=("num_scenes", "scene_frames"))
    args = (jnp.asarray(latents), jnp.asarray(text))
    got = ragged(model, *args, jnp.asarray(t), num_scenes=s, scene_frames=frames)
    want = run_diffusers(torch_model, latents, text, t, rope=rope, mask=mask)
    assert np.abs(np.asarray(got) - want).max() <= TOL
    timesteps = np.array([[0, 999, 5], [412, 0, 0]], dtype=np.int64)
    got = ragged(model, *args, jnp.asarray(timesteps), num_scenes=s, scene_frames=frames)
    want = per_scene_reference(
        torch_model, latents, text, timesteps, s, mask, rope=rope, scene_frames=frames
    )
    assert np.abs(np.asarray(got) - want).max() <= TOL
    # an equal layout of the same 6 frames is a different mask: the outputs differ
    equal = ragged(model, *args, jnp.asarray(timesteps), num_scenes=s, scene_frames=None)
    assert np.abs(np.asarray(equal) - want).max() > 100 * TOL
