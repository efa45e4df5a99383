"""Shot-cut accuracy on ground-truth multi-scene renders (PySceneDetect ContentDetector)."""

import numpy as np
import pytest

from m2dit_jax.data.synthetic_shapes import ShapesGeometry, render_scene
from m2dit_jax.eval import cuts
from m2dit_jax.media import enlarge

pytest.importorskip("scenedetect")

GEOMETRY = ShapesGeometry(frames=4, height=16, width=16)


def _render(rng, backgrounds, geometry=GEOMETRY, scale=4):
    """One video, scene i over background ``backgrounds[i]``; one shape, random colour/motion."""
    shape = int(rng.integers(3))
    scenes = [
        render_scene(shape, b, int(rng.integers(4)), int(rng.integers(4)), geometry, rng)
        for b in backgrounds
    ]
    return enlarge(np.concatenate(scenes), scale)


def test_ground_truth_renders_every_boundary_found_nothing_spurious():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(40):
        backgrounds = rng.permutation(3)  # consecutive scenes differ in background
        rows.append(cuts.video_cut_accuracy(_render(rng, backgrounds), 3))
    summary = cuts.summarize_cuts(rows)
    assert summary["boundaries"] == 80 and summary["num_videos"] == 40
    assert summary["boundary_recall"] == 1.0
    assert summary["spurious_cuts"] == 0
    assert rows[0]["boundaries"] == [4, 8] and rows[0]["detected"] == [4, 8]


def test_a_video_without_cut_has_no_spurious_cut():
    rng = np.random.default_rng(1)
    one_scene = ShapesGeometry(frames=12, height=32, width=32)
    for background in range(3):
        row = cuts.video_cut_accuracy(_render(rng, [background], one_scene, scale=2), 1)
        assert row["detected"] == [] and row["spurious"] == []
        assert np.isnan(row["boundary_recall"])


def test_a_shifted_cut_is_missed_and_spurious():
    rng = np.random.default_rng(2)
    video = _render(rng, [0, 2])  # the cut is at frame 4
    assert cuts.detect_cuts(video) == [4]
    on_time = cuts.video_cut_accuracy(video, 2, boundaries=[5])  # 1 frame off: within tolerance
    assert on_time["hits"] == {5: 4} and on_time["boundary_recall"] == 1.0
    late = cuts.video_cut_accuracy(video, 2, boundaries=[6])  # claimed at 6, seen at 4
    assert late["missed"] == [6] and late["spurious"] == [4] and late["boundary_recall"] == 0.0


def test_match_cuts_is_one_to_one_nearest_first():
    match = cuts.match_cuts([3, 4, 9], [4, 8], tolerance=1)
    assert match == {"hits": {4: 4, 8: 9}, "missed": [], "spurious": [3]}
    assert cuts.scene_boundaries(3, 5) == [5, 10]
    with pytest.raises(ValueError, match="equal scenes"):
        cuts.video_cut_accuracy(np.zeros((7, 4, 4, 3), np.uint8), 2)
