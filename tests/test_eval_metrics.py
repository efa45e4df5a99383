"""Consistency metrics and FVD on hand-checkable inputs."""

import numpy as np
import pytest

from m2dit_jax.eval import consistency, fvd


def _colour_embed(frames):
    """Mean RGB of each frame as its 'image embedding' (plus a constant so it is never zero)."""
    return frames.reshape(len(frames), -1, 3).mean(1) + 1.0


def _word_embed(captions):
    table = {"red": [256.0, 1, 1], "green": [1, 256.0, 1], "blue": [1, 1, 256.0]}
    return np.array([table[c.split()[0]] for c in captions])


def _flat_video(colours, frames=4):
    rgb = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    return np.concatenate(
        [np.broadcast_to(np.array(rgb[c], np.uint8), (frames, 8, 8, 3)) for c in colours]
    )


def test_consistency_identical_scenes_matching_captions():
    video = _flat_video(["red", "red", "red"])
    out = consistency.video_consistency(
        video, ["red a", "red b", "red c"], image_embed=_colour_embed, text_embed=_word_embed
    )
    assert out["visual_consistency"] == pytest.approx(100.0)
    assert out["semantic_consistency"] == pytest.approx(100.0, abs=1e-6)
    assert out["sequence_consistency"] == pytest.approx(100.0, abs=1e-6)


def test_consistency_distinct_scenes_lower_visual_same_semantic():
    video = _flat_video(["red", "green", "blue"])
    out = consistency.video_consistency(
        video, ["red", "green", "blue"], image_embed=_colour_embed, text_embed=_word_embed
    )
    assert out["visual_consistency"] < 5.0
    assert out["semantic_consistency"] == pytest.approx(100.0, abs=1e-6)
    expected = (out["visual_consistency"] + out["semantic_consistency"]) / 2
    assert out["sequence_consistency"] == pytest.approx(expected)
    # captions swapped -> semantic score collapses
    swapped = consistency.video_consistency(
        video, ["green", "blue", "red"], image_embed=_colour_embed, text_embed=_word_embed
    )
    assert swapped["semantic_consistency"] < 5.0


def test_consistency_rejects_bad_shapes():
    with pytest.raises(ValueError, match="equal scenes"):
        consistency.split_scenes(np.zeros((5, 2, 2, 3), np.uint8), 3)
    with pytest.raises(ValueError, match="text_embed"):
        consistency.video_consistency(
            _flat_video(["red", "red"]),
            ["red", "red"],
            image_embed=_colour_embed,
            text_embed=lambda c: np.ones((len(c), 5)),
        )


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    b = rng.standard_normal((4, 4))
    cov1, cov2 = a @ a.T + np.eye(4), b @ b.T + np.eye(4)
    mu1, mu2 = rng.standard_normal(4), rng.standard_normal(4)
    # reference: trace sqrt via eigenvalues of cov1 @ cov2 (real, positive for SPD pairs)
    eig = np.linalg.eigvals(cov1 @ cov2).real
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2) - 2 * np.sum(np.sqrt(eig))
    assert fvd.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(ref, rel=1e-9)
    assert fvd.frechet_distance(mu1, cov1, mu1, cov1) == pytest.approx(0.0, abs=1e-9)


def test_fvd_with_pluggable_features():
    rng = np.random.default_rng(1)
    real = rng.integers(0, 255, (40, 4, 8, 8, 3), dtype=np.uint8)
    same = real.copy()
    dark = (real // 4).astype(np.uint8)
    feats = lambda v: v.reshape(len(v), 4, -1, 3).mean(2).reshape(len(v), -1)  # noqa: E731
    assert fvd.fvd(real, same, features=feats, batch_size=7)["fvd"] == pytest.approx(0, abs=1e-6)
    far = fvd.fvd(real, dark, features=feats)
    assert far["fvd"] > 1000 and far["num_real"] == 40 and not far["rank_deficient"]
    with pytest.raises(ValueError, match="same D"):
        fvd.fvd_from_features(np.zeros((3, 2)), np.zeros((3, 4)))


def test_synthetic_metrics_on_renders_and_corruptions():
    from m2dit_jax.data import synthetic_shapes as ss
    from m2dit_jax.eval import synthetic_metrics as sm

    geometry = ss.ShapesGeometry()
    scripts = ss.sample_held_out_scripts(12, 3, seed=1)
    renders = [ss.render_script(s, geometry, seed=i)[1] for i, s in enumerate(scripts)]
    summary, rows = sm.score_videos(renders, scripts)
    for key in sm.METRICS:
        assert summary[key] == 1.0, key
    assert summary["num_scenes_scored"] == 36 and "shape_consistent" not in rows[0][0]

    # scene 2 redrawn with another shape and background: consistency breaks, alignment holds
    script = ss.Script(shape=0, background=0, colours=(0, 1, 2), motions=(0, 1, 2))
    video = ss.render_script(script, geometry, seed=0)[1]
    other = ss.Script(shape=2, background=2, colours=(0, 1, 2), motions=(0, 1, 2))
    video[4:8] = ss.render_script(other, geometry, seed=0)[1][4:8]
    scene2 = sm.score_video(video, script)[1]
    assert scene2["colour_ok"] and scene2["motion_ok"]
    assert not scene2["shape_consistent"] and not scene2["background_consistent"]

    # captions swapped between scenes: alignment breaks
    swapped = ss.Script(shape=0, background=0, colours=(1, 2, 0), motions=(0, 1, 2))
    assert sm.summarize(sm.score_video(ss.render_script(script, geometry)[1], swapped))[
        "colour_ok"
    ] == pytest.approx(0.0)

    # noise is never "consistent", and extended scoring skips the condition scenes
    noise = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3)).astype(np.uint8)
    noisy = sm.summarize(sm.score_video(noise, script))
    assert noisy["shape_consistent"] == 0.0 and noisy["background_consistent"] == 0.0
    assert [r["scene"] for r in sm.score_video(video, script, first_scene=2)] == [2]
    table = sm.format_table({"generated": summary})
    assert "alignment/colour" in table and "100.0%" in table
