import numpy as np
from PIL import Image

from launch import show_mask
from m2dit_jax.layout import SceneLayout


def test_mask_image_matches_dense_mask_at_full_resolution():
    layout = SceneLayout(3, 5, 2, 2, 3, text_pad_to=4)
    np.testing.assert_array_equal(show_mask.mask_image(layout), layout.dense_mask())


def test_show_mask_writes_png(tmp_path):
    out = show_mask.main(["--scenes", "3", "--out", str(tmp_path / "m.png")])
    img = Image.open(out)
    assert img.size[0] > 300 and img.mode == "RGB"


def test_large_layout_is_downsampled_without_dense_mask():
    layout = SceneLayout(3, 226, 4, 30, 45)  # 16.9k tokens: dense_mask() would refuse
    grid = show_mask.mask_image(layout, max_pixels=64)
    assert grid.shape[0] <= 64
    assert abs((1 - grid.mean()) - layout.blocked_fraction()) < 0.01
