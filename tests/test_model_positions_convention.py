"""``positions_convention``: "diffusers" tables equal diffusers' own functions, "release" tables
equal a literal re-implementation of the Mask²DiT release (VideoX-Fun on diffusers 0.30.3).

The release references below follow its code line by line (spec MASK2DIT.md §8):
``videox_fun/pipeline/pipeline_cogvideox_fun.py`` (``get_3d_rotary_pos_embed`` with
``np.linspace(..., endpoint=False)``, ``get_resize_crop_region_for_grid``) and
``videox_fun/models/cogvideox_transformer3d.py`` (``CogVideoXPatchEmbed``: the sample-grid
sin-cos buffer, trilinearly resized in ``forward``).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the parity extra (torch + diffusers) is needed")
pytest.importorskip("diffusers", reason="the parity extra (torch + diffusers) is needed")

import jax.numpy as jnp  # noqa: E402
from test_model_reference import random_diffusers_transformer  # noqa: E402

from m2dit_jax.model import create_model, get_model_config  # noqa: E402
from m2dit_jax.model.positions import (  # noqa: E402
    crop_region,
    release_sincos_table,
    rope_positions,
    rope_tables,
    sincos_table,
    stretch_frames,
)

pytestmark = pytest.mark.parity
TOL = 1e-6

# (latent H, W) for a (12, 18) latent sample grid (6 x 9 tokens, the 60x90 aspect), patch 2:
# the sample grid, a 512x512-like square (crop starts at left=2), 720x480 portrait-like 18x12
# (left=2), a wide grid whose crop starts at top=2, a smaller grid of the sample aspect (crop at
# 0, fractional steps), a large square.
SAMPLE_HW = (12, 18)
GRIDS = [(12, 18), (16, 16), (18, 12), (8, 24), (8, 12), (20, 20)]


# ----------------------------------------------------------------- release references (literal)
def release_crop_region(src, tgt_width, tgt_height):
    """VideoX-Fun ``get_resize_crop_region_for_grid`` (called with width before height)."""
    tw, th = tgt_width, tgt_height
    h, w = src
    r = h / w
    if r > (th / tw):
        resize_height = th
        resize_width = int(round(th / h * w))
    else:
        resize_width = tw
        resize_height = int(round(tw / w * h))
    crop_top = int(round((th - resize_height) / 2.0))
    crop_left = int(round((tw - resize_width) / 2.0))
    return (crop_top, crop_left), (crop_top + resize_height, crop_left + resize_width)


def release_rope(embed_dim, crops_coords, grid_size, temporal_size):
    """The release's ``get_3d_rotary_pos_embed`` (grid_type "linspace", use_real=True)."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    start, stop = crops_coords
    grid_size_h, grid_size_w = grid_size
    grid_h = np.linspace(start[0], stop[0], grid_size_h, endpoint=False, dtype=np.float32)
    grid_w = np.linspace(start[1], stop[1], grid_size_w, endpoint=False, dtype=np.float32)
    grid_t = np.linspace(0, temporal_size, temporal_size, endpoint=False, dtype=np.float32)
    dim_t, dim_h, dim_w = embed_dim // 4, embed_dim // 8 * 3, embed_dim // 8 * 3
    freqs_t = get_1d_rotary_pos_embed(dim_t, grid_t, use_real=True)
    freqs_h = get_1d_rotary_pos_embed(dim_h, grid_h, use_real=True)
    freqs_w = get_1d_rotary_pos_embed(dim_w, grid_w, use_real=True)

    def combine(ft, fh, fw):
        ft = ft[:, None, None, :].expand(-1, grid_size_h, grid_size_w, -1)
        fh = fh[None, :, None, :].expand(temporal_size, -1, grid_size_w, -1)
        fw = fw[None, None, :, :].expand(temporal_size, grid_size_h, -1, -1)
        return torch.cat([ft, fh, fw], dim=-1).view(temporal_size * grid_size_h * grid_size_w, -1)

    cos = combine(freqs_t[0], freqs_h[0], freqs_w[0])
    sin = combine(freqs_t[1], freqs_h[1], freqs_w[1])
    return cos.numpy(), sin.numpy()


def release_pipeline_rope(head_dim, frames, latent_h, latent_w, sample_h, sample_w, p=2):
    """The release pipeline's ``_prepare_rotary_positional_embeddings`` (CogVideoX 1.0)."""
    grid_height, grid_width = latent_h // p, latent_w // p
    crops = release_crop_region((grid_height, grid_width), sample_w // p, sample_h // p)
    return release_rope(head_dim, crops, (grid_height, grid_width), frames)


def np_get_3d_sincos_pos_embed(
    embed_dim, spatial_size, temporal_size, spatial_scale, temporal_scale
):
    """diffusers 0.30.3's NumPy ``get_3d_sincos_pos_embed`` (the release's pin), float64."""

    def from_grid_1d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    def from_grid_2d(dim, grid):
        emb_h = from_grid_1d(dim // 2, grid[0])
        emb_w = from_grid_1d(dim // 2, grid[1])
        return np.concatenate([emb_h, emb_w], axis=1)

    embed_dim_spatial, embed_dim_temporal = 3 * embed_dim // 4, embed_dim // 4
    grid_h = np.arange(spatial_size[1], dtype=np.float32) / spatial_scale
    grid_w = np.arange(spatial_size[0], dtype=np.float32) / spatial_scale
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, spatial_size[1], spatial_size[0]])
    pos_embed_spatial = from_grid_2d(embed_dim_spatial, grid)
    grid_t = np.arange(temporal_size, dtype=np.float32) / temporal_scale
    pos_embed_temporal = from_grid_1d(embed_dim_temporal, grid_t)
    pos_embed_spatial = np.repeat(pos_embed_spatial[np.newaxis], temporal_size, axis=0)
    pos_embed_temporal = np.repeat(
        pos_embed_temporal[:, np.newaxis], spatial_size[0] * spatial_size[1], axis=1
    )
    return np.concatenate([pos_embed_temporal, pos_embed_spatial], axis=-1)


def release_sincos(width, num_scenes, frames, latent_h, latent_w, sample, p=2, text_len=6):
    """The release's ``CogVideoXPatchEmbed``: buffer + the positional part of ``forward``.

    ``sample`` = (sample_frames in pixel frames, sample_height, sample_width) as in the
    diffusers config; returns the rows added to the S*F*h*w video tokens.
    """
    import torch.nn.functional as F

    sample_frames, sample_height, sample_width = sample
    post_h, post_w = sample_height // p, sample_width // p
    post_f = (sample_frames - 1) // 4 + 1
    num_patches = post_h * post_w * post_f
    max_text_seq_length = text_len
    # __init__ / _get_positional_embeddings (diffusers 0.30's NumPy function)
    pos_embedding = np_get_3d_sincos_pos_embed(width, (post_w, post_h), post_f, 1.875, 1.0)
    pos_embedding = torch.from_numpy(pos_embedding).flatten(0, 1)
    joint = torch.zeros(1, max_text_seq_length + num_patches, width, requires_grad=False)
    joint.data[:, max_text_seq_length:].copy_(pos_embedding)
    # forward, with the captions of S scenes: text_seq_length = S * max_text_seq_length
    text_seq_length = num_scenes * max_text_seq_length
    height, width_px, num_frames = latent_h, latent_w, num_scenes * frames
    seq_length = height * width_px * num_frames // (p**2)
    pos_embeds = joint
    no_text = pos_embeds[:, max_text_seq_length:].view(1, post_f, post_h, post_w, width)
    no_text = no_text.permute([0, 4, 1, 2, 3])
    no_text = F.interpolate(
        no_text,
        size=[post_f * text_seq_length // max_text_seq_length, height // p, width_px // p],
        mode="trilinear",
        align_corners=False,
    )
    no_text = no_text.permute([0, 2, 3, 4, 1]).reshape(1, -1, width)
    text = pos_embeds[:, :max_text_seq_length].permute(0, 2, 1)
    text = F.interpolate(text, size=[text_seq_length], mode="linear", align_corners=False)
    pos_embeds = torch.cat([text.permute(0, 2, 1), no_text], dim=1)
    pos_embeds = pos_embeds[:, : text_seq_length + seq_length]
    assert float(pos_embeds[:, :text_seq_length].abs().max()) == 0.0  # text rows stay zero
    return pos_embeds[0, text_seq_length:].numpy()


# ----------------------------------------------------------------- RoPE
@pytest.mark.parametrize("latent_hw", GRIDS)
@pytest.mark.parametrize("frames", [1, 3, 6])
def test_rope_conventions(latent_hw, frames):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    (h, w), (sh, sw), hd = latent_hw, SAMPLE_HW, 32
    gh, gw, bh, bw = h // 2, w // 2, sh // 2, sw // 2
    assert crop_region(gh, gw, bh, bw) == release_crop_region((gh, gw), bw, bh)
    # release: literal re-implementation
    want = release_pipeline_rope(hd, frames, h, w, sh, sw)
    got = rope_tables(hd, frames, gh, gw, bh, bw, "release")
    for g, r in zip(got, want):
        assert g.shape == r.shape and np.abs(g - r).max() <= TOL
    # diffusers: diffusers' own function, and the default is exactly "diffusers"
    crops = get_resize_crop_region_for_grid((gh, gw), bw, bh)
    want_d = get_3d_rotary_pos_embed(hd, crops, (gh, gw), frames)
    got_d = rope_tables(hd, frames, gh, gw, bh, bw, "diffusers")
    for g, r, default in zip(got_d, want_d, rope_tables(hd, frames, gh, gw, bh, bw)):
        assert np.abs(g - r.numpy()).max() <= TOL
        np.testing.assert_array_equal(g, default)
    # the two agree exactly when the crop starts at 0
    (top, left), _ = crop_region(gh, gw, bh, bw)
    pd, pr = (
        rope_positions(frames, gh, gw, bh, bw),
        rope_positions(frames, gh, gw, bh, bw, "release"),
    )
    np.testing.assert_allclose(pd[0], pr[0], atol=1e-6)
    for pos_d, pos_r, start, n in ((pd[1], pr[1], top, gh), (pd[2], pr[2], left, gw)):
        gap = np.abs(pos_d - pos_r).max()
        assert abs(gap - start / n) <= 1e-5  # the last position differs by start / n


@pytest.mark.parametrize("latent_hw, gap", [((60, 90), 0.0), ((64, 64), 0.25), ((90, 60), 0.4)])
def test_rope_conventions_on_cogvideox_grids(latent_hw, gap):
    """The released 60x90 latent sample grid: 512x512 and 720x480-portrait latents."""
    h, w = latent_hw
    gh, gw = h // 2, w // 2
    (top, left), (bottom, right) = release_crop_region((gh, gw), 45, 30)
    literal = (
        np.linspace(0, 13, 13, endpoint=False, dtype=np.float32),
        np.linspace(top, bottom, gh, endpoint=False, dtype=np.float32),
        np.linspace(left, right, gw, endpoint=False, dtype=np.float32),
    )
    pr = rope_positions(13, gh, gw, 30, 45, "release")
    for ours, want in zip(pr, literal):
        np.testing.assert_array_equal(ours, want)
    pd = rope_positions(13, gh, gw, 30, 45, "diffusers")
    assert abs(max(float(np.abs(a - b).max()) for a, b in zip(pd, pr)) - gap) <= 1e-5
    # Tables: at positions up to 44 a 1-ulp difference between NumPy's and torch's float32
    # pow in 3 of the 12 h/w frequencies moves cos/sin by up to ~1.8e-6 (both conventions
    # share the NumPy frequencies; the tiny grids above stay within 1e-6).
    want = release_pipeline_rope(64, 13, h, w, 60, 90)
    got = rope_tables(64, 13, gh, gw, 30, 45, "release")
    for g, r in zip(got, want):
        assert np.abs(g - r).max() <= 2.5e-6


# ----------------------------------------------------------------- sin-cos
@pytest.mark.parametrize("latent_hw", GRIDS)
@pytest.mark.parametrize("scenes, frames", [(1, 3), (1, 2), (3, 3), (2, 1), (3, 2)])
def test_sincos_release_matches_literal_reference(latent_hw, scenes, frames):
    (h, w), (sh, sw), width, sample_f = latent_hw, SAMPLE_HW, 48, 3
    want = release_sincos(width, scenes, frames, h, w, ((sample_f - 1) * 4 + 1, sh, sw))
    got = release_sincos_table(width, scenes, frames, h // 2, w // 2, sample_f, sh // 2, sw // 2)
    assert got.shape == want.shape == (scenes * frames * (h // 2) * (w // 2), width)
    assert np.abs(got - want).max() <= TOL


def test_sincos_release_on_cogvideox_grids():
    """13-frame 60x90 latent sample grid (2B's), narrow width: 512x512 and F < F_sample."""
    for (h, w), scenes, frames in (((64, 64), 1, 13), ((64, 64), 2, 7), ((60, 90), 3, 13)):
        want = release_sincos(64, scenes, frames, h, w, (49, 60, 90), text_len=226)
        got = release_sincos_table(64, scenes, frames, h // 2, w // 2, 13, 30, 45)
        assert np.abs(got - want).max() <= TOL


def test_sincos_release_reduces_to_diffusers_on_the_sample_grid():
    """Sample grid, F = F_sample: S=1 is diffusers' table, S>1 the time-only stretch."""
    width, f, gh, gw = 48, 3, 6, 9
    plain = sincos_table(width, f, gh, gw)
    np.testing.assert_array_equal(release_sincos_table(width, 1, f, gh, gw, f, gh, gw), plain)
    stretched = stretch_frames(plain, f, gh * gw, 3 * f)
    assert np.abs(release_sincos_table(width, 3, f, gh, gw, f, gh, gw) - stretched).max() <= TOL
    # off the sample grid the spatial table is resized instead of recomputed
    off = release_sincos_table(width, 1, f, 8, 8, f, gh, gw)
    assert np.abs(off - sincos_table(width, f, 8, 8)).max() > 0.05


def test_sincos_diffusers_convention_matches_diffusers():
    from diffusers.models.embeddings import get_3d_sincos_pos_embed

    for (h, w), frames in (((16, 16), 6), ((8, 24), 2), ((12, 18), 9)):
        want = get_3d_sincos_pos_embed(48, (w // 2, h // 2), frames, 1.875, 1.0, output_type="pt")
        got = sincos_table(48, frames, h // 2, w // 2)
        assert np.abs(got - want.reshape(-1, 48).numpy()).max() <= TOL
        # diffusers 0.30's NumPy function (the release's reference above) is the same table
        old = np_get_3d_sincos_pos_embed(48, (w // 2, h // 2), frames, 1.875, 1.0)
        assert np.abs(got - old.reshape(-1, 48)).max() <= TOL


def test_sincos_release_more_frames_than_sample_is_named():
    with pytest.raises(ValueError, match="exceed the config's sample_frames=3.*sample_frames"):
        release_sincos_table(48, 2, 4, 6, 9, 3, 6, 9)
    # the release itself crashes there: its resized table has too few rows
    with pytest.raises(RuntimeError):
        torch.zeros(1, 2 * 4 * 54, 48) + torch.from_numpy(
            release_sincos(48, 2, 4, 12, 18, (9, 12, 18))
        )
    model = create_model(_config("sincos", "release"), seed=0)
    with pytest.raises(ValueError, match="positions_convention='diffusers'"):
        model._sincos(model.layout((6, 8, 8, 4), 2))  # 3 frames per scene > sample_frames 2


# ----------------------------------------------------------------- config + model
def _config(positions, convention, **kw):
    if positions == "sincos" and convention == "release":
        kw.setdefault("sincos_temporal", "stretch")
    return get_model_config(
        "tiny",
        positions=positions,
        positions_convention=convention,
        sample_height=12,
        sample_width=18,
        sample_frames=2,
        **kw,
    )


def test_config_validation():
    assert get_model_config("tiny").positions_convention == "diffusers"
    with pytest.raises(ValueError, match="positions_convention"):
        get_model_config("tiny", positions_convention="torch")
    with pytest.raises(ValueError, match="sincos_temporal='stretch'"):
        get_model_config("tiny", positions="sincos", positions_convention="release")
    # RoPE has no temporal choice: release RoPE works with either sincos_temporal
    assert get_model_config("tiny", positions_convention="release").positions == "rope"


@pytest.mark.parametrize("positions", ["rope", "sincos"])
def test_model_forward_with_each_convention(positions):
    """Both conventions run; equal on the sample grid, different off it (16x16, S=2, F=1)."""
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.standard_normal((1, 2 * 8, 32)), jnp.float32)
    t = jnp.asarray([500])
    cases = {(12, 18): 2, (16, 16): 1}  # (latent H, W) -> frames per scene
    latents = {
        hw: jnp.asarray(rng.standard_normal((1, 2 * f, *hw, 4)), jnp.float32)
        for hw, f in cases.items()
    }
    outs = {}
    for convention in ("diffusers", "release"):
        model = create_model(_config(positions, convention, sincos_temporal="stretch"), seed=0)
        for hw, f in cases.items():
            out = np.asarray(model(latents[hw], text, t, num_scenes=2))
            assert out.shape == (1, 2 * f, *hw, 4) and np.isfinite(out).all()
            outs[convention, hw] = out
    np.testing.assert_allclose(outs["diffusers", (12, 18)], outs["release", (12, 18)], atol=1e-5)
    assert np.abs(outs["diffusers", (16, 16)] - outs["release", (16, 16)]).max() > 1e-4


def test_model_tables_follow_the_convention():
    rope_d = create_model(_config("rope", "diffusers"), seed=0)
    rope_r = create_model(_config("rope", "release"), seed=0)
    layout = rope_r.layout((4, 16, 16, 4), 2)
    cos_r, sin_r = (np.asarray(x)[layout.text_total :] for x in rope_r._rope(layout))
    want = release_pipeline_rope(16, 4, 16, 16, 12, 18)
    assert np.abs(cos_r - want[0]).max() <= TOL and np.abs(sin_r - want[1]).max() <= TOL
    cos_d = np.asarray(rope_d._rope(layout)[0])[layout.text_total :]
    np.testing.assert_array_equal(cos_d, rope_tables(16, 4, 8, 8, 6, 9)[0])
    sincos_r = create_model(_config("sincos", "release"), seed=0)
    got = np.asarray(sincos_r._sincos(sincos_r.layout((2, 16, 16, 4), 2)))
    assert np.abs(got - release_sincos(32, 2, 1, 16, 16, (5, 12, 18), text_len=8)).max() <= TOL


def test_converter_records_the_convention(tmp_path):
    from launch import convert as convert_cli
    from m2dit_jax.convert import load_diffusers_transformer
    from m2dit_jax.convert.native import read_config

    folders = {}
    for positions in ("rope", "sincos"):
        folders[positions] = str(tmp_path / positions)
        random_diffusers_transformer(positions).save_pretrained(folders[positions])
    assert load_diffusers_transformer(folders["rope"]).config.positions_convention == "diffusers"
    model = load_diffusers_transformer(folders["sincos"], positions_convention="release")
    assert model.config.positions_convention == "release"
    assert model.config.sincos_temporal == "stretch"  # the release's only sin-cos mode
    with pytest.raises(ValueError, match="differs from the model"):
        load_diffusers_transformer(folders["sincos"], model=model, positions_convention="diffusers")
    params = str(tmp_path / "params")
    summary = convert_cli.main(
        [
            "to-jax",
            "--diffusers",
            folders["rope"],
            "--out",
            params,
            "--positions-convention",
            "release",
        ]
    )
    assert summary["config"]["positions_convention"] == "release"
    assert read_config(params).positions_convention == "release"
