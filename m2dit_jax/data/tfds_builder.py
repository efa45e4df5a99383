"""TFDS builder for multi-scene videos (no TensorFlow): manifest -> ArrayRecord.

One example = one manifest line (a single clip or a multi-shot video):
    "scenes":   Sequence of object Tensors — each scene/shot re-encoded as its own small H.264
                mp4 (short side resized + centre-cropped to the build size, native fps)
    "captions": Sequence(Text) — one per scene
    "id":       Text — "<video path>" relative to the manifest
Videos are stored as encoded bytes because ``tfds.features.Video`` needs TensorFlow; the grain
map decodes them with PyAV. Bad manifest lines and unreadable videos are skipped at build time
and reported by ``build_from_manifest``. Read back with ``tfds.data_source`` (random access).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from m2dit_jax.data.bad_input import BadSample, empty_counts, log_once
from m2dit_jax.data.manifest import parse_manifest
from m2dit_jax.data.video_io import decode_frames, encode_mp4, probe

DEFAULT_NAME = "m2dit_scenes"


class M2ditScenes(tfds.core.GeneratorBasedBuilder):
    """Multi-scene videos as re-encoded mp4 bytes per scene + captions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial schema: scenes (mp4 bytes), captions, id."}
    # Nothing is downloaded; without this TFDS looks up a checksums file next to the code,
    # which needs the optional `importlib_resources` package.
    url_infos = {}

    def __init__(
        self, *, manifest: str | None = None, height: int = 480, width: int = 720, **kwargs
    ):
        self._manifest, self._height, self._width = manifest, height, width
        self.build_skips = empty_counts()
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "scenes": tfds.features.Sequence(
                        tfds.features.Tensor(shape=(), dtype=np.object_)
                    ),
                    "captions": tfds.features.Sequence(tfds.features.Text()),
                    "id": tfds.features.Text(),
                }
            ),
            description=__doc__,
        )

    def _split_generators(self, dl_manager):
        if not self._manifest:
            raise ValueError("M2ditScenes needs manifest=PATH to build")
        return {"train": self._generate_examples(self._manifest)}

    def _generate_examples(self, manifest: str):
        entries, counts = parse_manifest(manifest)
        for reason, n in counts.items():
            self.build_skips[reason] += n
        root = os.path.dirname(os.path.abspath(manifest))
        for entry in entries:
            try:
                total, fps = probe(entry.video)
                scenes = []
                for shot in entry.shots:
                    start = shot.start or 0.0
                    end = min(shot.end, total / fps) if shot.end is not None else total / fps
                    count = int(np.floor((end - start) * fps + 1e-6))
                    if count < 1:
                        raise BadSample("too_short", entry.video, f"empty shot at {start}s")
                    frames = decode_frames(
                        entry.video,
                        range(count),
                        start_time=start,
                        height=self._height,
                        width=self._width,
                    )
                    scenes.append(encode_mp4(frames, fps=fps))
            except BadSample as error:
                log_once(error)
                self.build_skips[error.reason] += 1
                continue
            key = f"{os.path.relpath(entry.video, root)}:{entry.line}"
            yield (
                key,
                {
                    "scenes": scenes,
                    "captions": [s.caption for s in entry.shots],
                    "id": os.path.relpath(entry.video, root),
                },
            )


def build_from_manifest(
    manifest: str, data_dir: str, *, height: int, width: int
) -> tuple[str, dict[str, int]]:
    """Build the ArrayRecord dataset; returns (dataset directory, build-time skip counts)."""
    if height % 2 or width % 2:
        raise ValueError(f"height and width must be even for H.264, got {height}x{width}")
    builder = M2ditScenes(
        manifest=manifest, height=height, width=width, data_dir=data_dir, file_format="array_record"
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
        ),
    )
    return str(builder.data_dir), dict(builder.build_skips)
