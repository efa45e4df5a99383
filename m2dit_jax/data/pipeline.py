"""``make_dataset``: the grain pipeline shared by every source.

    units (clips or samples) of this process's shard
      -> seeded shuffle, reshuffled per epoch -> repeat
      -> group S units per sample (stage-1 video sources) -> batch of unit indices
      -> load + decode (bad inputs replaced, counted) -> encode stage
      -> to_iter_dataset -> mp_prefetch(num_workers) -> skip accounting

Every batch is a pure function of (seed, process, batch position): the pipeline yields the
same batches for any worker count and resumes exactly from ``get_state()``. Batching happens
on unit indices *before* loading, so a bad input is replaced by another deterministic draw from
the same shard and a batch always has ``batch_size`` samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import grain
import numpy as np

from m2dit_jax.data.bad_input import SKIP_REASONS, BadSample, empty_counts, log_once
from m2dit_jax.data.config import validate_data_config

SKIPS_KEY = "_skips"


class SampleSource(Protocol):
    """What the pipeline needs from a source.

    ``num_units``: length of the index space (clips for stage-1 video sources, samples
    otherwise); ``units_per_sample``: units one sample reads (S or 1); ``load(units, rng)``
    -> one example dict (``video`` (S*F, H, W, 3) uint8 or ``latents``, ``captions`` (S,)
    object, ``id``, optional extras) or raises ``BadSample``; ``initial_skips``: counts of
    inputs dropped while indexing (e.g. invalid manifest lines).
    """

    num_units: int
    units_per_sample: int
    initial_skips: dict[str, int]

    def load(self, units: Sequence[int], rng: np.random.Generator) -> dict[str, Any]: ...


def build_source(config, *, process_index: int, process_count: int) -> SampleSource:
    """config.source -> a SampleSource (imports only what the chosen source needs)."""
    if config.source == "synthetic_shapes":
        from m2dit_jax.data.sources import SyntheticShapesSampleSource

        return SyntheticShapesSampleSource(config)
    if config.source == "manifest":
        from m2dit_jax.data.manifest import ManifestSource

        return ManifestSource(config)
    if config.source == "tfds":
        from m2dit_jax.data.tfds_source import TfdsSource

        return TfdsSource(config)
    from m2dit_jax.data.sources import LatentsSampleSource

    return LatentsSampleSource(config)


def _stack(examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    out = {}
    for key in examples[0]:
        values = [e[key] for e in examples]
        if isinstance(values[0], str) or (
            isinstance(values[0], np.ndarray) and values[0].dtype == object
        ):
            arr = np.empty((len(values),) + np.shape(values[0]), dtype=object)
            for i, v in enumerate(values):
                arr[i] = v
            out[key] = arr
        else:
            out[key] = np.stack([np.asarray(v) for v in values])
    return out


class EncodeStage:
    """Optional numpy encoders run inside the grain map (picklable, lazily built per worker)."""

    def __init__(self, config):
        self.num_scenes = int(config.num_scenes)
        self.text = (config.text_encoder, int(config.text_len), int(config.text_dim))
        self.text_seed = int(config.text_seed)
        self.video = (config.video_encoder, int(config.patch_t), int(config.patch_s))
        self._text_encoder = None
        self._video_encoder = None

    def __getstate__(self):
        return {**self.__dict__, "_text_encoder": None, "_video_encoder": None}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.text[0] == "hashed":
            if self._text_encoder is None:
                from m2dit_jax.encoders.text import HashedWordEncoder

                self._text_encoder = HashedWordEncoder(self.text[1], self.text[2], self.text_seed)
            captions = batch["captions"]
            b, s = captions.shape
            embeds, mask = self._text_encoder.encode(list(captions.reshape(-1)))
            batch["text_embeds"] = embeds.reshape(b, s * self.text[1], self.text[2])
            batch["text_mask"] = mask.reshape(b, s * self.text[1])
        if self.video[0] == "space_to_depth":
            if self._video_encoder is None:
                from m2dit_jax.encoders.pixel import SpaceToDepthAutoencoder

                self._video_encoder = SpaceToDepthAutoencoder(self.video[1], self.video[2])
            video = batch["video"]
            b, sf = video.shape[:2]
            scenes = video.reshape(b * self.num_scenes, sf // self.num_scenes, *video.shape[2:])
            lat = self._video_encoder.encode(scenes)
            batch["latents"] = lat.reshape(b, -1, *lat.shape[2:])
        return batch


class BatchLoader:
    """(batch position, unit indices (B,) or (B, S)) -> one batch dict; replaces bad inputs."""

    def __init__(self, source: SampleSource, config, *, seed, process_index, process_count):
        self.source = source
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.num_local = local_unit_count(source.num_units, process_index, process_count)
        self.num_scenes = int(config.num_scenes)
        self.strict = bool(config.strict)
        self.max_retries = int(config.max_retries)
        self.encode = EncodeStage(config)

    def _global(self, local_units) -> list[int]:
        return [self.process_index + int(u) * self.process_count for u in local_units]

    def load_one(self, position: int, local_units, skips: np.ndarray) -> dict[str, Any]:
        units = np.atleast_1d(local_units)
        last_error = None
        for attempt in range(self.max_retries + 1):
            rng = np.random.default_rng([self.seed, self.process_index, position, attempt])
            try:
                example = self.source.load(self._global(units), rng)
            except BadSample as error:
                if self.strict:
                    raise ValueError(str(error)) from error
                log_once(error)
                last_error = error
                skips[SKIP_REASONS.index(error.reason)] += 1
                units = rng.integers(self.num_local, size=len(units))
                continue
            return example
        raise ValueError(
            f"{self.max_retries + 1} bad inputs in a row for one sample (last: {last_error}); "
            "the data is mostly unusable — check the source"
        )

    def __call__(self, batch_index: int, unit_batch: np.ndarray) -> dict[str, np.ndarray]:
        skips = np.zeros(len(SKIP_REASONS), np.int64)
        size = len(unit_batch)
        examples = [
            self.load_one(batch_index * size + j, units, skips)
            for j, units in enumerate(unit_batch)
        ]
        batch = _stack(examples)
        batch["ids"] = batch.pop("id")
        batch = self.encode(batch)
        batch[SKIPS_KEY] = skips
        return batch


def local_unit_count(num_units: int, process_index: int, process_count: int) -> int:
    """Units owned by one process: global units process_index, process_index + count, ..."""
    return max(0, -(-(num_units - process_index) // process_count))


class _SkipAccountingIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, initial: dict[str, int]):
        super().__init__(parent)
        self._counts = empty_counts()
        for reason, count in initial.items():
            self._counts[reason] += count

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._parent)
        for reason, count in zip(SKIP_REASONS, batch.pop(SKIPS_KEY)):
            self._counts[reason] += int(count)
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "skip_counts": dict(self._counts)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._counts = empty_counts()
        self._counts.update({k: int(v) for k, v in state["skip_counts"].items()})

    def skip_counts(self) -> dict[str, int]:
        """Bad inputs skipped so far on this process, by reason (all reasons listed)."""
        return dict(self._counts)


class _SkipAccountingIterDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, initial: dict[str, int]):
        super().__init__(parent)
        self._initial = initial

    def __iter__(self) -> _SkipAccountingIterator:
        return _SkipAccountingIterator(self._parent.__iter__(), self._initial)


def make_dataset(
    config, *, seed: int, process_index: int = 0, process_count: int = 1, batch_size: int
) -> _SkipAccountingIterator:
    """Build this process's batch iterator.

    Args:
      config: a ``default_data_config()``-shaped ConfigDict.
      seed: shuffle / sampling seed (same seed -> same batches, any worker count).
      process_index, process_count: this JAX process and how many there are; the process
        reads only units ``process_index::process_count``.
      batch_size: this process's share of the global batch.

    Returns:
      A grain ``DatasetIterator``: ``next(it)`` -> batch dict, ``get_state()``/``set_state()``
      (JSON-able; checkpoint with ``grain.checkpoint.CheckpointSave``), ``skip_counts()``.
    """
    validate_data_config(config)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
    source = build_source(config, process_index=process_index, process_count=process_count)
    num_local = local_unit_count(source.num_units, process_index, process_count)
    per_sample = source.units_per_sample
    if num_local < per_sample:
        raise ValueError(
            f"process {process_index}/{process_count} owns {num_local} units of "
            f"{config.source!r}, fewer than one sample needs ({per_sample})"
        )
    ds = grain.MapDataset.range(num_local)
    if config.shuffle:
        ds = ds.shuffle(seed=seed % 2**32)
    ds = ds.repeat(None if int(config.num_epochs) == 0 else int(config.num_epochs))
    if per_sample > 1:
        ds = ds.batch(per_sample, drop_remainder=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    loader = BatchLoader(
        source, config, seed=seed, process_index=process_index, process_count=process_count
    )
    ds = ds.map_with_index(loader)
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=int(config.prefetch_buffer_size))
    )
    if int(config.num_workers) > 0:
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=int(config.num_workers),
                per_worker_buffer_size=int(config.prefetch_buffer_size),
            )
        )
    return iter(_SkipAccountingIterDataset(it_ds, source.initial_skips))
