"""Video files in and out: GIF (Pillow), MP4 (PyAV, H.264) and a captioned contact sheet (PNG).

Videos are (F, H, W, 3) uint8 arrays. Tiny demo frames (16x16) are enlarged with
nearest-neighbour ``scale`` so the files are watchable; ``read_video(..., size=(H, W))``
shrinks them back (box filter) to the model's frame size, e.g. for ``launch.sample --extend``.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

_BOUNDARY = (230, 40, 40)
_TEXT = (20, 20, 20)
_CUT = (0, 0, 0)
_BG = (255, 255, 255)


def check_video(video, name: str = "video") -> np.ndarray:
    """Returns ``video`` as a (F, H, W, 3) uint8 array or raises a ValueError naming the problem."""
    arr = np.asarray(video)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (frames, height, width, 3), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} has no frames")
    if arr.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {arr.dtype}")
    return arr


def enlarge(video: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (F, H, W, 3) by an integer factor."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if scale == 1:
        return video
    return np.repeat(np.repeat(video, scale, axis=1), scale, axis=2)


def timeline_strip(num_frames: int, width: int, num_scenes: int, height: int) -> np.ndarray:
    """(F, height, width, 3) uint8 playback bar: grey up to the current frame, red scene cuts."""
    strip = np.full((num_frames, height, width, 3), 235, np.uint8)
    for t in range(num_frames):
        strip[t, :, : int(round(width * (t + 1) / num_frames))] = 90
    for s in range(1, num_scenes):
        x = int(round(width * s / num_scenes))
        strip[:, :, max(0, x - 1) : x + 1] = _BOUNDARY
    return strip


def write_gif(
    path: str, video, *, fps: float = 4.0, scale: int = 4, num_scenes: int | None = None
) -> str:
    """Writes a looping GIF of ``video`` (F, H, W, 3) uint8; returns the path.

    Under the frames runs a thin playback bar with the scene cuts marked in red (``num_scenes``
    equal-length scenes; None = no bar). The bar also keeps every GIF frame distinct: GIF writers
    merge identical consecutive frames, which would change the frame count of a still scene.
    """
    frames = enlarge(check_video(video), scale)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if num_scenes is not None:
        bar = timeline_strip(len(frames), frames.shape[2], num_scenes, max(3, scale))
        frames = np.concatenate([frames, bar], axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=int(round(1000.0 / fps)),
        loop=0,
        optimize=False,
    )
    return path


def write_mp4(path: str, video, *, fps: int = 4, scale: int = 4, crf: int = 12) -> str:
    """Writes an H.264 MP4 (yuv420p) of ``video`` (F, H, W, 3) uint8; returns the path.

    The enlarged frame size must be even (a yuv420p requirement); ``crf`` 0..51, lower = better.
    """
    frames = enlarge(check_video(video), scale)
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"MP4 frame size must be even, got {height}x{width} (use an even scale)")
    if int(fps) != fps or fps <= 0:
        raise ValueError(f"fps must be a positive integer for MP4, got {fps}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BOX))


def read_video(path: str, *, size: tuple[int, int] | None = None) -> np.ndarray:
    """Reads every frame of a video file -> (F, H, W, 3) uint8, resized to ``size`` if given.

    Raises a ValueError naming the file when it is missing, not a video, or has no decodable
    frames (truncated / corrupt data).
    """
    if not os.path.isfile(path):
        raise ValueError(f"video file not found: {path}")
    frames, error = [], None
    try:
        with av.open(path) as container:
            if container.streams.video:
                for frame in container.decode(video=0):
                    frames.append(frame.to_ndarray(format="rgb24"))
            else:
                error = "it has no video stream"
    except (av.error.FFmpegError, OSError, EOFError) as err:  # PyAV's errors subclass these
        error = f"{type(err).__name__}: {err}"
        if frames:
            error = f"damaged after {len(frames)} readable frame(s) ({error})"
    if error is None and not frames:
        error = "no decodable frames"
    if error is not None:
        raise ValueError(f"cannot read video {path}: {error}")
    if size is not None:
        frames = [_resize(f, size) for f in frames]
    return np.stack(frames)


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: bitmap font, fixed size.
        return ImageFont.load_default()


def contact_sheet(
    videos: Sequence[np.ndarray],
    captions: Sequence[Sequence[str]],
    *,
    titles: Sequence[str] | None = None,
    scale: int = 4,
    gap: int = 6,
) -> Image.Image:
    """A grid image: one row per video, one column per frame, a gap with a dark line at every
    scene cut and each scene's caption printed under its frames.

    Args:
      videos: list of (F_i, H, W, 3) uint8 videos; video i has ``len(captions[i])`` scenes of
        equal length (F_i must be divisible by it).
      captions: per video, one caption per scene.
      titles: optional per-row label printed above the row.
      scale: nearest-neighbour enlargement of every frame.
      gap: pixels between scenes.
    """
    if len(videos) == 0:
        raise ValueError("contact_sheet needs at least one video")
    if len(captions) != len(videos):
        raise ValueError(f"got {len(videos)} videos but {len(captions)} caption lists")
    if titles is not None and len(titles) != len(videos):
        raise ValueError(f"got {len(videos)} videos but {len(titles)} titles")
    font = _font()
    line_h = 14
    rows = []
    for i, (video, caps) in enumerate(zip(videos, captions)):
        video = enlarge(check_video(video, f"videos[{i}]"), scale)
        if len(caps) == 0 or video.shape[0] % len(caps):
            raise ValueError(
                f"videos[{i}] has {video.shape[0]} frames, not divisible into {len(caps)} scenes"
            )
        rows.append((video, list(caps)))
    fh, fw = rows[0][0].shape[1:3]
    char_w = max(1, int(font.getlength("abcdefghij") / 10))
    layouts = []
    for video, caps in rows:
        per_scene = video.shape[0] // len(caps)
        scene_w = per_scene * fw
        wrapped = [textwrap.wrap(c, width=max(8, scene_w // char_w)) or [""] for c in caps]
        layouts.append((per_scene, scene_w, wrapped))
    width = max(len(caps) * (sw + gap) - gap for (_, caps), (_, sw, _) in zip(rows, layouts))
    title_h = line_h if titles is not None else 0
    heights = [title_h + fh + 4 + line_h * max(len(w) for w in wr) + 8 for _, _, wr in layouts]
    sheet = Image.new("RGB", (width + 2 * gap, sum(heights) + gap), _BG)
    draw = ImageDraw.Draw(sheet)
    y = gap
    for r, ((video, caps), (per_scene, scene_w, wrapped)) in enumerate(zip(rows, layouts)):
        if titles is not None:
            draw.text((gap, y), titles[r], fill=_TEXT, font=font)
        top = y + title_h
        for s in range(len(caps)):
            x0 = gap + s * (scene_w + gap)
            if s > 0:  # a cut: white gap with a dark line, visible on any frame colour
                mid = x0 - gap // 2 - 1
                draw.rectangle([mid, top - 3, mid + 1, top + fh + 2], fill=_CUT)
            for f in range(per_scene):
                frame = Image.fromarray(video[s * per_scene + f])
                sheet.paste(frame, (x0 + f * fw, top))
            for j, line in enumerate(wrapped[s]):
                draw.text((x0, top + fh + 4 + j * line_h), line, fill=_TEXT, font=font)
        y += heights[r]
    return sheet


def write_contact_sheet(path: str, videos, captions, **kwargs) -> str:
    """Saves ``contact_sheet(videos, captions, **kwargs)`` as a PNG; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    contact_sheet(videos, captions, **kwargs).save(path)
    return path
