"""Analytic detectors recover the generating attributes of synthetic_shapes clips."""

import numpy as np
import pytest

from m2dit_jax.data import synthetic_shapes as ss
from m2dit_jax.eval import shapes_detectors as det


def _accuracy(geometry, samples, noise=0.0, seed=0):
    source = ss.SyntheticShapesSource(samples, 3, geometry, seed=seed)
    rng = np.random.default_rng(seed)
    hits = {k: 0 for k in ("colour", "shape", "motion", "background")}
    total = 0
    for i in range(samples):
        x = source[i]
        video = x["video"]
        if noise:
            video = np.clip(video + rng.normal(0, noise, video.shape), 0, 255).astype(np.uint8)
        for s, found in enumerate(det.detect_scenes(video, 3)):
            total += 1
            hits["colour"] += found["colour"] == ss.COLOURS[x["attrs_colour"][s]]
            hits["motion"] += found["motion"] == ss.MOTIONS[x["attrs_motion"][s]]
            hits["shape"] += found["shape"] == ss.SHAPES[x["attrs_shape"]]
            hits["background"] += found["background"] == ss.BACKGROUNDS[x["attrs_background"]]
    return {k: v / total for k, v in hits.items()}


@pytest.mark.parametrize(
    "geometry",
    [ss.ShapesGeometry(), ss.ShapesGeometry(frames=6, height=32, width=24)],
    ids=["16x16x4", "32x24x6"],
)
def test_detectors_are_at_least_99_percent_accurate_on_clean_clips(geometry):
    accuracy = _accuracy(geometry, samples=300)
    assert min(accuracy.values()) >= 0.99, accuracy


def test_detectors_tolerate_pixel_noise():
    accuracy = _accuracy(ss.ShapesGeometry(), samples=100, noise=12.0, seed=1)
    assert min(accuracy.values()) >= 0.97, accuracy


def test_empty_scene_reads_none_and_bad_input_is_rejected():
    scene = np.broadcast_to(ss.BACKGROUND_RGB[1], (4, 16, 16, 3)).astype(np.uint8)
    found = det.detect(scene)
    assert found == {"colour": "none", "shape": "none", "motion": "none", "background": "grey"}
    with pytest.raises(ValueError, match="uint8"):
        det.detect(scene.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        det.detect(scene[0])
    with pytest.raises(ValueError, match="num_scenes=5"):
        det.detect_scenes(np.concatenate([scene] * 3), 5)


def test_static_object_has_no_motion():
    scene = ss.render_scene(0, 0, 2, 0, ss.ShapesGeometry(), np.random.default_rng(0))
    still = np.repeat(scene[:1], 4, axis=0)
    assert det.detect(still) == {
        "colour": "blue",
        "shape": "square",
        "motion": "none",
        "background": "black",
    }


def test_shape_report_on_references_is_exact():
    geometry = ss.ShapesGeometry()
    source = ss.SyntheticShapesSource(24, 1, geometry, seed=3)
    scenes = [source[i]["video"] for i in range(24)]
    shapes = [int(source[i]["attrs_shape"]) for i in range(24)]
    report = det.shape_report(scenes, shapes)
    confusion = np.asarray(report["confusion"])
    assert confusion.sum() == 24 and np.trace(confusion) == 24  # every reference read right
    expected = {name: ss.shape_template(name, 8).sum() for name in ss.SHAPES}  # 64 / 52 / 28
    for name in ss.SHAPES:
        if name in {ss.SHAPES[s] for s in shapes}:
            assert report["area"][name] == pytest.approx(expected[name])
    blank = np.broadcast_to(ss.BACKGROUND_RGB[0], (4, 16, 16, 3)).astype(np.uint8)
    assert det.shape_report([blank], [2])["confusion"][2] == [0, 0, 0, 1]  # "none"
    with pytest.raises(ValueError, match="one shape per scene"):
        det.shape_report(scenes, shapes[:3])
