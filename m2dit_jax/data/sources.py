"""Adapters from the file-free sources (synthetic_shapes, latents shards) to the pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from m2dit_jax.data.bad_input import BadSample, empty_counts
from m2dit_jax.data.synthetic_shapes import ShapesGeometry, SyntheticShapesSource


class SyntheticShapesSampleSource:
    """``synthetic_shapes`` as a pipeline source: one unit = one sample."""

    units_per_sample = 1
    unit_layouts = None  # ragged: the pipeline draws each batch's layout

    def __init__(self, config):
        # Ragged scenes are prefixes of a max_frames rendering: the motion step fits
        # max_frames, so it is the same for every scene length.
        self.ragged = bool(config.get("ragged", False))
        geometry = ShapesGeometry(
            frames=int(config.max_frames if self.ragged else config.frames),
            height=int(config.height),
            width=int(config.width),
            object_size=int(config.object_size) or None,
            step=int(config.step) or None,
        )
        self.shapes = SyntheticShapesSource(
            int(config.num_samples),
            int(config.num_scenes),
            geometry,
            seed=int(config.synthetic_seed),
            holdout_fraction=float(config.holdout_fraction),
            held_out=config.synthetic_split == "heldout",
        )
        self.num_units = len(self.shapes)
        self.initial_skips = empty_counts()

    def load(
        self, units: Sequence[int], rng: np.random.Generator, scene_frames=None
    ) -> dict[str, Any]:
        if self.ragged and scene_frames is None:
            raise ValueError("ragged synthetic_shapes samples need their scene_frames")
        return self.shapes.sample(units[0], scene_frames)


class LatentsSampleSource:
    """``latents`` ArrayRecord shards as a pipeline source: one unit = one record.

    Batch keys: ``latents`` (sum_i F_i, h, w, C) in the stored dtype, ``scene_frames`` (S,)
    int32 (the stored latent frames per scene), ``text_embeds`` (S*T, D), ``text_mask``
    (S*T,), ``captions`` (S,), ``id`` str. A record that does not decode or disagrees with
    ``num_scenes`` (or with the first record's shapes) is skipped as ``bad_record``.

    With ``ragged=True`` the per-scene frame counts may differ between records (only they:
    frame size, channels, dtypes and text shapes must still match the first record), and
    every record's ``scene_frames`` is read once at start-up (``unit_layouts``, for the
    pipeline's bucketing; records that do not decode there are counted as ``bad_record``).
    """

    units_per_sample = 1

    def __init__(self, config):
        from m2dit_jax.data.latents_format import LatentShardSource

        self.records = LatentShardSource(config.path)
        self.num_units = len(self.records)
        self.num_scenes = int(config.num_scenes)
        self.ragged = bool(config.get("ragged", False))
        self.strict = bool(config.strict)
        self.initial_skips = empty_counts()
        self._shapes = self._reference_shapes()
        self.unit_layouts = self._scan_layouts() if self.ragged else None

    def _key(self, r):
        """What every record must share: all shapes (ragged: all but the frame counts)."""
        lat = r.latents.shape[-3:] if self.ragged else r.latents.shape
        return (lat, r.latents.dtype, r.text_embeds.shape, r.text_embeds.dtype)

    def _reference_shapes(self):
        from m2dit_jax.data.latents_format import LatentFormatError, decode_record

        for i in range(min(self.num_units, 64)):
            try:
                r = decode_record(self.records[i])
            except LatentFormatError:
                continue
            if r.is_ragged and not self.ragged:
                continue  # refused in load: equal scenes only without ragged=True
            return self._key(r)
        raise ValueError(f"none of the first latents records in {self.records.paths} decodes")

    def _scan_layouts(self) -> list:
        from m2dit_jax.data.latents_format import LatentFormatError, record_scene_frames

        layouts = []
        for i in range(self.num_units):
            try:
                frames, why = record_scene_frames(self.records[i]), ""
            except LatentFormatError as err:
                frames, why = None, str(err)
            if frames is not None and len(frames) != self.num_scenes:
                frames, why = None, f"{len(frames)} scenes, num_scenes={self.num_scenes}"
            if frames is None:
                if self.strict:
                    raise ValueError(f"latents record {i} of {self.records.paths}: {why}")
                self.initial_skips["bad_record"] += 1
            layouts.append(frames)
        return layouts

    def load(
        self, units: Sequence[int], rng: np.random.Generator, scene_frames=None
    ) -> dict[str, Any]:
        from m2dit_jax.data.latents_format import LatentFormatError, decode_record

        where = f"{self.records.paths[0]}[record {units[0]}]"
        try:
            r = decode_record(self.records[units[0]])
        except LatentFormatError as e:
            raise BadSample("bad_record", where, str(e)) from e
        if r.is_ragged and not self.ragged:
            raise BadSample(
                "bad_record",
                where,
                f"record {r.id!r} has scenes of their own lengths {r.scene_frames}: set "
                "ragged=True to bucket such records",
            )
        shapes = self._key(r)
        if r.num_scenes != self.num_scenes or shapes != self._shapes:
            raise BadSample(
                "bad_record",
                where,
                f"record {r.id!r} has shapes {shapes}, expected {self._shapes} "
                f"with num_scenes={self.num_scenes}",
            )
        return {
            "latents": r.concatenated_latents(),
            "scene_frames": np.asarray(r.scene_frames, np.int32),
            "text_embeds": r.text_embeds.reshape(-1, r.text_embeds.shape[-1]),
            "text_mask": r.text_mask.reshape(-1),
            "captions": np.array(r.captions, dtype=object),
            "id": r.id,
        }
