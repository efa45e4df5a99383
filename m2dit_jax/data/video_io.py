"""PyAV video I/O: probe, seek-and-decode selected frames, resize + centre crop, encode mp4.

Decoding seeks to the first wanted frame (keyframe before it) instead of decoding from the
file start, and stops after the last wanted frame. Any PyAV/ffmpeg failure becomes
``BadSample("unreadable_video")``; running out of frames becomes ``BadSample("too_short")``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import av
import numpy as np

from m2dit_jax.data.bad_input import BadSample


def _open(src: str | bytes, name: str):
    if isinstance(src, str) and not os.path.exists(src):
        raise BadSample("missing_file", name, "file does not exist")
    try:
        container = av.open(io.BytesIO(src) if isinstance(src, bytes) else src)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise BadSample("unreadable_video", name, f"cannot open: {e}") from e
    if not container.streams.video:
        container.close()
        raise BadSample("unreadable_video", name, "no video stream")
    return container


def probe(src: str | bytes, name: str | None = None) -> tuple[int, float]:
    """(frame count, fps) of the first video stream (count estimated from the duration when
    the container does not store it)."""
    name = name or (src if isinstance(src, str) else "<bytes>")
    container = _open(src, name)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if fps <= 0:
            raise BadSample("unreadable_video", name, "stream has no frame rate")
        frames = int(stream.frames or 0)
        if frames <= 0:
            duration = (
                float(stream.duration * stream.time_base)
                if stream.duration
                else (container.duration or 0) / av.time_base
            )
            frames = int(math.floor(duration * fps))
        return frames, fps
    finally:
        container.close()


def resize_crop_size(src_h: int, src_w: int, height: int, width: int) -> tuple[int, int]:
    """Size after scaling the source so it covers (height, width) (short-side resize)."""
    scale = max(height / src_h, width / src_w)
    return max(height, round(src_h * scale)), max(width, round(src_w * scale))


def decode_frames(
    src: str | bytes,
    offsets: Sequence[int],
    *,
    start_time: float = 0.0,
    height: int,
    width: int,
    name: str | None = None,
) -> np.ndarray:
    """Decode frames ``start_time + offsets / fps`` -> (N, height, width, 3) uint8.

    Offsets are frame indices counted from ``start_time`` (sorted, non-negative). Frames are
    resized so the short side covers the target, then centre-cropped.
    """
    name = name or (src if isinstance(src, str) else "<bytes>")
    offsets = list(offsets)
    if not offsets or sorted(offsets) != offsets or offsets[0] < 0:
        raise ValueError(f"offsets must be sorted, non-negative and non-empty: {offsets[:8]}")
    container = _open(src, name)
    out = np.empty((len(offsets), height, width, 3), np.uint8)
    filled = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate)
        tb = float(stream.time_base)
        first_time = start_time + offsets[0] / fps
        if first_time > 0:
            container.seek(int(first_time / tb), stream=stream, backward=True, any_frame=False)
        scaled = None
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            index = round((frame.pts * tb - start_time) * fps)
            if index < offsets[filled]:
                continue
            if scaled is None:
                scaled = resize_crop_size(frame.height, frame.width, height, width)
            rgb = frame.to_ndarray(format="rgb24", width=scaled[1], height=scaled[0])
            top, left = (scaled[0] - height) // 2, (scaled[1] - width) // 2
            crop = rgb[top : top + height, left : left + width]
            while filled < len(offsets) and offsets[filled] <= index:
                out[filled] = crop  # a dropped source frame repeats its predecessor
                filled += 1
            if filled == len(offsets):
                break
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        raise BadSample("unreadable_video", name, f"decoding failed: {e}") from e
    finally:
        container.close()
    if filled < len(offsets):
        raise BadSample(
            "too_short",
            name,
            f"decoded {filled} of {len(offsets)} needed frames after t={start_time:.2f}s "
            "(too short or truncated)",
        )
    return out


def encode_mp4(
    frames: np.ndarray, fps: float = 8.0, codec: str = "libx264", crf: int = 20
) -> bytes:
    """(N, H, W, 3) uint8 -> mp4 bytes (yuv420p; H and W must be even for libx264)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.dtype} {frames.shape}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=round(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_mp4(path: str, frames: np.ndarray, fps: float = 8.0, **kwargs) -> None:
    """Write (N, H, W, 3) uint8 frames to an H.264 mp4 file."""
    with open(path, "wb") as f:
        f.write(encode_mp4(frames, fps, **kwargs))
