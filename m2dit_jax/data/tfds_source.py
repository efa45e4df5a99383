"""``tfds`` source: the ArrayRecord dataset of ``tfds_builder`` read with ``tfds.data_source``.

Stage 1 units are records; a sample takes S records and one random scene of each. Stage 2
units are records; a sample takes S consecutive scenes (random first) of one record, which
must have at least S scenes (else ``too_few_shots``). Scenes are mp4 bytes decoded with PyAV
in the grain map; frame sampling follows ``frame_sampling`` exactly as for manifests.
Ragged scenes (``ragged=True``) are not supported here: the config refuses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from m2dit_jax.data.bad_input import BadSample, empty_counts
from m2dit_jax.data.frame_sampling import ClipSampling
from m2dit_jax.data.video_io import decode_frames, probe


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TfdsSource:
    def __init__(self, config):
        self.name, self.data_dir, self.split = config.tfds_name, config.path, config.tfds_split
        self.num_scenes = int(config.num_scenes)
        self.clip = ClipSampling.from_config(config)
        self.stage = int(config.stage)
        self.units_per_sample = self.num_scenes if self.stage == 1 else 1
        self.initial_skips = empty_counts()
        self._records = None
        self.num_units = len(self.records)

    @property
    def records(self):
        if self._records is None:
            import tensorflow_datasets as tfds

            import m2dit_jax.data.tfds_builder  # noqa: F401  (registers the builder)

            try:
                self._records = tfds.data_source(
                    self.name, data_dir=self.data_dir, split=self.split, download=False
                )
            except Exception as e:  # tfds raises several types for a missing dataset
                raise ValueError(
                    f"cannot open TFDS dataset {self.name!r} split {self.split!r} in "
                    f"{self.data_dir!r} (build it with launch/build_tfds.py): {e}"
                ) from e
        return self._records

    def __getstate__(self):
        return {**self.__dict__, "_records": None}

    def _record(self, unit: int) -> tuple[str, list[bytes], list[str]]:
        where = f"{self.data_dir}/{self.name}[{self.split}][{unit}]"
        try:
            r = self.records[unit]
            scenes, captions = list(r["scenes"]), [_text(c) for c in r["captions"]]
            ident = _text(r["id"])
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise BadSample("bad_record", where, f"record does not decode: {e}") from e
        if not scenes or len(scenes) != len(captions):
            raise BadSample("bad_record", where, f"{len(scenes)} scenes, {len(captions)} captions")
        for c in captions:
            if not c.strip():
                raise BadSample("empty_caption", where, "a caption is empty")
        return ident, scenes, captions

    def _clip(self, data: bytes, name: str, rng, stage: int) -> np.ndarray:
        available, _ = probe(data, name)
        offsets = self.clip.offsets(available, stage, rng)
        if offsets is None:
            raise BadSample("too_short", name, f"{available} frames, need {self.clip.frames}")
        return decode_frames(
            data, offsets, height=self.clip.height, width=self.clip.width, name=name
        )

    def load(self, units: Sequence[int], rng: np.random.Generator) -> dict[str, Any]:
        clips, captions, ids = [], [], []
        if self.stage == 1:
            for unit in units:
                ident, scenes, caps = self._record(unit)
                k = int(rng.integers(len(scenes)))
                clips.append(self._clip(scenes[k], f"{ident}#{k}", rng, 1))
                captions.append(caps[k])
                ids.append(f"{ident}#{k}")
        else:
            ident, scenes, caps = self._record(units[0])
            if len(scenes) < self.num_scenes:
                raise BadSample(
                    "too_few_shots", ident, f"{len(scenes)} shots, need {self.num_scenes}"
                )
            first = int(rng.integers(0, len(scenes) - self.num_scenes + 1))
            for k in range(first, first + self.num_scenes):
                clips.append(self._clip(scenes[k], f"{ident}#{k}", rng, 2))
                captions.append(caps[k])
            ids.append(f"{ident}#{first}-{first + self.num_scenes - 1}")
        return {
            "video": np.concatenate(clips, axis=0),
            "scene_frames": np.full(len(clips), self.clip.frames, np.int32),
            "captions": np.array(captions, dtype=object),
            "id": "|".join(ids),
        }
