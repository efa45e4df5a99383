"""synthetic_shapes: deterministic samples, captions, scripts and the held-out split."""

import numpy as np
import pytest

from m2dit_jax.data import synthetic_shapes as ss


def test_sample_is_deterministic_and_well_formed():
    geometry = ss.ShapesGeometry(frames=4, height=16, width=16)
    a, b = (ss.SyntheticShapesSource(100, 3, geometry, seed=7) for _ in range(2))
    x, y = a[42], b[42]
    np.testing.assert_array_equal(x["video"], y["video"])
    assert x["video"].shape == (12, 16, 16, 3) and x["video"].dtype == np.uint8
    assert x["captions"].shape == (3,) and x["captions"].dtype == object
    assert x["attrs_colour"].shape == (3,) and x["attrs_motion"].shape == (3,)
    other = ss.SyntheticShapesSource(100, 3, geometry, seed=8)[42]
    assert not np.array_equal(other["video"], x["video"])
    with pytest.raises(IndexError):
        a[100]


def test_captions_state_shape_only_in_scene_one_and_never_the_background():
    script = ss.Script.from_scenes(
        [
            {"colour": "red", "motion": "left"},
            {"colour": "red", "motion": "up"},
            {"colour": "blue", "motion": "down"},
        ],
        shape="plus",
        background="white",
    )
    captions = script.captions()
    assert captions == [
        "a red plus moves left",
        "the object stays red and moves up",
        "the object turns blue and moves down",
    ]
    for caption in captions:
        assert not any(b in caption for b in ss.BACKGROUNDS)
    assert ss.script_from_captions(captions) == {
        "shape": "plus",
        "colours": ["red", "red", "blue"],
        "motions": ["left", "up", "down"],
    }


def test_render_script_keeps_shape_and_background_and_moves_the_object():
    geometry = ss.ShapesGeometry()
    script = ss.Script(shape=1, background=2, colours=(0, 1, 3), motions=(0, 1, 3))
    captions, video = ss.render_script(script, geometry, seed=3)
    assert len(captions) == 3 and video.shape == (12, 16, 16, 3)
    bg = ss.BACKGROUND_RGB[2]
    for s, (colour, motion) in enumerate(zip(script.colours, script.motions)):
        scene = video[4 * s : 4 * s + 4]
        obj = (scene == ss.COLOUR_RGB[colour]).all(-1)
        assert ((scene == bg).all(-1) | obj).all()  # only background and this scene's colour
        sizes = obj.sum((1, 2))
        assert (sizes == sizes[0]).all() and sizes[0] == ss.shape_template("circle", 8).sum()
        ys, xs = np.nonzero(obj[0])
        ye, xe = np.nonzero(obj[-1])
        dy, dx = ye.mean() - ys.mean(), xe.mean() - xs.mean()
        expected = ss.MOTION_VECTORS[motion] * geometry.step * 3
        np.testing.assert_allclose([dy, dx], expected)


def test_held_out_scripts_never_appear_in_training_samples():
    geometry = ss.ShapesGeometry()
    held = ss.sample_held_out_scripts(20, 3, holdout_fraction=0.2, seed=1)
    assert all(ss.is_held_out(s, 0.2) for s in held)
    held_keys = {s.key() for s in held}
    source = ss.SyntheticShapesSource(500, 3, geometry, seed=0, holdout_fraction=0.2)
    for i in range(500):
        x = source[i]
        script = ss.Script(
            int(x["attrs_shape"]),
            int(x["attrs_background"]),
            tuple(int(c) for c in x["attrs_colour"]),
            tuple(int(m) for m in x["attrs_motion"]),
        )
        assert not ss.is_held_out(script, 0.2)
        assert script.key() not in held_keys


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(frames=8, height=16, width=16, step=2), "does not fit"),
        (dict(height=16, width=16, object_size=3), "object_size"),
        (dict(frames=0), "frames must be positive"),
    ],
)
def test_bad_geometry_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ss.ShapesGeometry(**kwargs)


def test_bad_script_is_rejected():
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        ss.Script.from_scenes([{"colour": "purple", "motion": "up"}], shape="square")
    with pytest.raises(ValueError, match="no 'motion'"):
        ss.Script.from_scenes([{"colour": "red"}], shape="square")
    with pytest.raises(ValueError, match="needs a shape"):
        ss.Script.from_scenes([{"colour": "red", "motion": "up"}])
    with pytest.raises(ValueError, match="at least one scene"):
        ss.Script.from_scenes([], shape="square")
