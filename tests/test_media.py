"""GIF / MP4 / contact-sheet files open with the expected frame counts and sizes."""

import numpy as np
import pytest
from PIL import Image

from m2dit_jax import media


def _video(frames=12, size=16, seed=0):
    rng = np.random.default_rng(seed)
    video = np.zeros((frames, size, size, 3), np.uint8)
    for t in range(frames):
        video[t] = rng.integers(0, 4, 3) * 60  # flat colour per frame: survives H.264
    return video


def test_mp4_roundtrip_frame_count_and_size(tmp_path):
    video = _video()
    path = media.write_mp4(str(tmp_path / "a.mp4"), video, fps=4, scale=4)
    big = media.read_video(path)
    assert big.shape == (12, 64, 64, 3)
    small = media.read_video(path, size=(16, 16))
    assert small.shape == video.shape
    assert np.abs(small.astype(int) - video).max() <= 8


def test_gif_keeps_every_frame_even_when_still(tmp_path):
    still = np.full((12, 16, 16, 3), 77, np.uint8)
    path = media.write_gif(str(tmp_path / "a.gif"), still, scale=2, num_scenes=3)
    with Image.open(path) as im:
        assert im.n_frames == 12
        assert im.size == (32, 32 + 3)  # frame + playback bar
    frames = media.read_video(path)
    assert frames.shape[0] == 12


def test_read_video_rejects_bad_files(tmp_path):
    good = media.write_mp4(str(tmp_path / "g.mp4"), _video(), scale=2)
    truncated = tmp_path / "t.mp4"
    truncated.write_bytes(open(good, "rb").read()[:500])
    garbage = tmp_path / "x.mp4"
    garbage.write_bytes(b"not a video" * 50)
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match="cannot read video"):
            media.read_video(str(path))
    with pytest.raises(ValueError, match="not found"):
        media.read_video(str(tmp_path / "missing.mp4"))


def test_writers_validate_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        media.write_gif(str(tmp_path / "a.gif"), np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="even"):
        media.write_mp4(str(tmp_path / "a.mp4"), np.zeros((2, 5, 5, 3), np.uint8), scale=1)
    with pytest.raises(ValueError, match="frames"):
        media.check_video(np.zeros((0, 4, 4, 3), np.uint8))


def test_contact_sheet_layout(tmp_path):
    three = _video(12)
    five = _video(20, seed=1)
    path = media.write_contact_sheet(
        str(tmp_path / "sheet.png"),
        [three, five],
        [["a red square moves left", "b", "c"], ["1", "2", "3", "4", "5"]],
        titles=["script 0", "extended"],
        scale=2,
        gap=6,
    )
    with Image.open(path) as im:
        sheet = np.asarray(im.convert("RGB"))
    # widest row: 5 scenes x 4 frames x 32 px + 4 gaps, plus a margin on each side
    assert sheet.shape[1] == 5 * 4 * 32 + 4 * 6 + 2 * 6
    # the first frame of row 0 is pasted unchanged below the title line
    top = 6 + 14
    np.testing.assert_array_equal(sheet[top, 6 : 6 + 32], np.repeat(three[0, 0], 2, axis=0))
    # a dark cut line sits in the gap between scene 1 and scene 2
    cut_x = 6 + 4 * 32 + 6 // 2 - 1
    assert sheet[top + 5, cut_x].max() == 0
    with pytest.raises(ValueError, match="not divisible"):
        media.contact_sheet([three], [["a", "b", "c", "d", "e"]])
