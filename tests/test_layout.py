"""Mask 1 / mask 2 properties of SceneLayout over random layouts."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2dit_jax.layout import (
    DENSE_MASK_LIMIT,
    SceneLayout,
    check_generate_mask,
    extension_mask,
    scene_timesteps,
)

layouts = st.builds(
    SceneLayout,
    num_scenes=st.integers(1, 5),
    text_len=st.sampled_from([1, 3, 7, 13, 226]),
    frames=st.integers(1, 3),
    grid_h=st.integers(1, 4),
    grid_w=st.integers(1, 5),
    text_pad_to=st.sampled_from([1, 4, 8, 128]),
).filter(lambda lay: lay.seq_len <= 3000)


def _sets(layout, i):
    text = set(range(layout.seq_len)[layout.text_slice(i)])
    video = set(range(layout.seq_len)[layout.video_slice(i)])
    return text, video


@settings(max_examples=40, deadline=None)
@given(layouts)
def test_mask_rows_match_the_definition(layout):
    mask = layout.dense_mask()
    pad = layout.is_padding()
    real = ~pad
    all_video = set(np.flatnonzero(layout.is_video()))
    # symmetric on real tokens, no empty row anywhere
    np.testing.assert_array_equal(mask[np.ix_(real, real)], mask[np.ix_(real, real)].T)
    assert mask.any(axis=1).all()
    assert not mask[:, pad].any(), "padding keys must never be attended"
    for i in range(layout.num_scenes):
        text_i, video_i = _sets(layout, i)
        for q in (min(text_i), max(text_i)):
            assert set(np.flatnonzero(mask[q])) == text_i | video_i
        for q in (min(video_i), max(video_i)):
            assert set(np.flatnonzero(mask[q])) == text_i | all_video
        block = layout.text_block_slice(i)
        for q in range(block.start + layout.text_len, block.stop):
            assert pad[q]
            assert set(np.flatnonzero(mask[q])) == text_i


@settings(max_examples=40, deadline=None)
@given(layouts)
def test_per_token_arrays(layout):
    ids, video, pad = layout.scene_ids(), layout.is_video(), layout.is_padding()
    assert ids.shape == video.shape == pad.shape == (layout.seq_len,)
    assert video.sum() == layout.num_scenes * layout.video_len
    assert pad.sum() == layout.num_scenes * layout.text_padding
    for i in range(layout.num_scenes):
        assert (ids[layout.text_block_slice(i)] == i).all()
        assert (ids[layout.video_slice(i)] == i).all()
        assert not video[layout.text_block_slice(i)].any()
    frames = layout.frame_ids()
    assert (frames[~video] == -1).all()
    assert frames[video].tolist() == sorted(frames[video].tolist())
    assert frames[video].max() == layout.num_scenes * layout.frames - 1
    blocked = 1.0 - layout.dense_mask().mean()
    assert abs(layout.blocked_fraction() - blocked) < 1e-9


def test_release_layout_sizes():
    layout = SceneLayout(3, 226, 13, 30, 45)
    assert layout.seq_len == 53_328
    assert layout.video_len == 17_550
    assert 0.015 < layout.blocked_fraction() < 0.02
    with pytest.raises(ValueError, match="split"):
        layout.dense_mask()
    assert SceneLayout(1, 1, 1, 128, 128).seq_len > DENSE_MASK_LIMIT


@pytest.mark.parametrize(
    "field", ["num_scenes", "text_len", "frames", "grid_h", "grid_w", "text_pad_to"]
)
@pytest.mark.parametrize("bad", [0, -2])
def test_bad_sizes_name_the_field(field, bad):
    kwargs = dict(num_scenes=2, text_len=4, frames=1, grid_h=2, grid_w=2)
    kwargs[field] = bad
    with pytest.raises(ValueError, match=field):
        SceneLayout(**kwargs)


def test_from_latents_checks_divisibility():
    assert SceneLayout.from_latents(3, 226, 13, 60, 90).grid_w == 45
    with pytest.raises(ValueError, match="latent_h"):
        SceneLayout.from_latents(3, 226, 13, 61, 90)


def test_generate_mask_validation():
    np.testing.assert_array_equal(check_generate_mask([0, 0, 1], 3), [False, False, True])
    assert check_generate_mask(np.ones((4, 3), bool), 3).shape == (4, 3)
    with pytest.raises(ValueError, match="num_scenes=3"):
        check_generate_mask([True, True], 3)
    with pytest.raises(ValueError, match="no generated scene"):
        check_generate_mask([[True, False, True], [False, False, False]], 3)
    with pytest.raises(ValueError, match="0/1"):
        check_generate_mask([0, 2, 1], 3)
    np.testing.assert_array_equal(extension_mask(3, 2), [False, False, True])
    with pytest.raises(ValueError, match="num_conditions"):
        extension_mask(3, 3)
    t = np.array([500, 7])
    np.testing.assert_array_equal(
        scene_timesteps(t, np.array([[False, True], [True, True]])), [[0, 500], [7, 7]]
    )


def test_ablation_mask_modes():
    base = dict(num_scenes=2, text_len=3, frames=1, grid_h=1, grid_w=2, text_pad_to=4)
    full = SceneLayout(**base, mask_mode="full").dense_mask()
    indep = SceneLayout(**base, mask_mode="independent").dense_mask()
    mask1 = SceneLayout(**base).dense_mask()
    layout = SceneLayout(**base)
    pad, video = layout.is_padding(), layout.is_video()
    real = ~pad
    assert full[np.ix_(real, real)].all() and not full[:, pad].any()
    ids = layout.scene_ids()
    same = ids[:, None] == ids[None, :]
    np.testing.assert_array_equal(indep[np.ix_(real, real)], same[np.ix_(real, real)])
    # mask 1 sits between the two: independent <= mask1 <= full
    assert (indep <= mask1).all() and (mask1 <= full).all()
    assert full.any(1).all() and indep.any(1).all()
    assert not (full[pad][:, video]).any()
    with pytest.raises(ValueError, match="mask_mode"):
        SceneLayout(**base, mask_mode="causal")


ragged_packed = st.builds(
    lambda frames, split, text_len, gh, gw, pad, mode: SceneLayout(
        len(frames), text_len, tuple(frames), gh, gw, pad, mode,
        samples=tuple(split(len(frames))),
    ),
    frames=st.lists(st.integers(1, 3), min_size=1, max_size=5),
    split=st.sampled_from([
        lambda n: (n,),
        lambda n: (1,) * n,
        lambda n: (n // 2, n - n // 2) if n > 1 else (n,),
    ]),
    text_len=st.sampled_from([1, 3, 7]),
    gh=st.integers(1, 3),
    gw=st.integers(1, 3),
    pad=st.sampled_from([1, 4]),
    mode=st.sampled_from(["mask2dit", "full", "independent"]),
)  # fmt: skip


def _local_index(layout, idx):
    """(sample, token index inside that sample's own layout) of every packed token."""
    out = []
    scenes, video = layout.scene_ids(), layout.is_video()
    for i in range(layout.seq_len):
        j = int(np.searchsorted(layout.sample_starts, scenes[i], side="right") - 1)
        own = layout.sample_layout(j)
        local_scene = scenes[i] - layout.sample_starts[j]
        if video[i]:
            offset = i - layout.video_slice(scenes[i]).start
            out.append((j, own.video_slice(local_scene).start + offset))
        else:
            offset = i - layout.text_block_slice(scenes[i]).start
            out.append((j, own.text_block_slice(local_scene).start + offset))
    return out


@settings(max_examples=40, deadline=None)
@given(ragged_packed)
def test_ragged_and_packed_masks_are_each_samples_own_mask(layout):
    mask = layout.dense_mask()
    local = _local_index(layout, None)
    own = [layout.sample_layout(j).dense_mask() for j in range(len(layout.sample_sizes))]
    want = np.array(
        [[qj == kj and own[qj][qi, ki] for kj, ki in local] for qj, qi in local], dtype=bool
    )
    np.testing.assert_array_equal(mask, want)
    if layout.mask_mode == "mask2dit":
        assert abs(layout.blocked_fraction() - (1.0 - mask.mean())) < 1e-9
    # positions restart at every sample and run on across its scenes
    pos = layout.frame_positions()
    assert pos.shape == (layout.total_frames,)
    starts = np.cumsum((0,) + layout.scene_frames)[list(layout.sample_starts)]
    assert (pos[starts] == 0).all() and (np.diff(pos)[np.diff(pos) != 1] <= 0).all()
    assert (
        layout.video_total
        == sum(layout.video_lens)
        == layout.total_frames * layout.tokens_per_frame
    )


def test_ragged_and_packed_layout_errors():
    with pytest.raises(ValueError, match="2 per-scene counts"):
        SceneLayout(3, 4, (2, 1), 2, 2)
    with pytest.raises(ValueError, match="positive ints"):
        SceneLayout(2, 4, (2, 0), 2, 2)
    with pytest.raises(ValueError, match="no single video_len"):
        SceneLayout(2, 4, (2, 1), 2, 2).video_len  # noqa: B018
    with pytest.raises(ValueError, match="add up to num_scenes"):
        SceneLayout(3, 4, 2, 2, 2, samples=(1, 1))
    with pytest.raises(ValueError, match="packed samples"):
        SceneLayout(3, 4, 2, 2, 2, mask_mode="causal_conditions", num_conditions=1, samples=(2, 1))
    assert SceneLayout(2, 4, (3, 3), 2, 2) == SceneLayout(2, 4, 3, 2, 2)
    assert SceneLayout(2, 4, 3, 2, 2, samples=(2,)).samples is None
