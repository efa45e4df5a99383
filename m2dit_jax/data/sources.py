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

    def __init__(self, config):
        geometry = ShapesGeometry(
            frames=int(config.frames),
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

    def load(self, units: Sequence[int], rng: np.random.Generator) -> dict[str, Any]:
        return self.shapes[units[0]]


class LatentsSampleSource:
    """``latents`` ArrayRecord shards as a pipeline source: one unit = one record.

    Batch keys: ``latents`` (S*F, h, w, C) in the stored dtype, ``text_embeds`` (S*T, D),
    ``text_mask`` (S*T,), ``captions`` (S,), ``id`` str. A record that does not decode or
    disagrees with ``num_scenes`` (or with the first record's shapes) is skipped as
    ``bad_record``.
    """

    units_per_sample = 1

    def __init__(self, config):
        from m2dit_jax.data.latents_format import LatentShardSource

        self.records = LatentShardSource(config.path)
        self.num_units = len(self.records)
        self.num_scenes = int(config.num_scenes)
        self.initial_skips = empty_counts()
        self._shapes = self._reference_shapes()

    def _reference_shapes(self):
        from m2dit_jax.data.latents_format import LatentFormatError, decode_record

        for i in range(min(self.num_units, 64)):
            try:
                r = decode_record(self.records[i])
            except LatentFormatError:
                continue
            return (r.latents.shape, r.latents.dtype, r.text_embeds.shape, r.text_embeds.dtype)
        raise ValueError(f"none of the first latents records in {self.records.paths} decodes")

    def load(self, units: Sequence[int], rng: np.random.Generator) -> dict[str, Any]:
        from m2dit_jax.data.latents_format import LatentFormatError, decode_record

        where = f"{self.records.paths[0]}[record {units[0]}]"
        try:
            r = decode_record(self.records[units[0]])
        except LatentFormatError as e:
            raise BadSample("bad_record", where, str(e)) from e
        shapes = (r.latents.shape, r.latents.dtype, r.text_embeds.shape, r.text_embeds.dtype)
        if r.num_scenes != self.num_scenes or shapes != self._shapes:
            raise BadSample(
                "bad_record",
                where,
                f"record {r.id!r} has shapes {shapes}, expected {self._shapes} "
                f"with num_scenes={self.num_scenes}",
            )
        s, f = r.latents.shape[:2]
        return {
            "latents": r.latents.reshape(s * f, *r.latents.shape[2:]),
            "text_embeds": r.text_embeds.reshape(-1, r.text_embeds.shape[-1]),
            "text_mask": r.text_mask.reshape(-1),
            "captions": np.array(r.captions, dtype=object),
            "id": r.id,
        }
