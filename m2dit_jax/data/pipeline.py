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

Every batch has ``scene_frames`` (B, S) int32: the frames of each scene on the frame axis of
its array (equal rows). Ragged scenes (``ragged=True``) bucket samples of equal layout:

- sources without per-unit layouts (synthetic_shapes, manifest stage 1): the units are batched
  as above and the batch's layout is drawn from (seed, batch index) (``FrameRule.draw``);
  every sample of the batch is loaded with it;
- sources with ``unit_layouts`` (manifest stage 2, latents shards; derived before decoding):
  ``LayoutBuckets`` groups units by layout; batch k's layout is drawn from (seed, k) with
  probability proportional to the layout's share of all units and its rows are the next
  ``batch_size`` units of that layout's stream (its units, reshuffled per pass from (seed,
  layout, pass)). Neither draw depends on the process, so every process of a job agrees on
  each step's layout. An epoch is ``units // (batch_size * process_count)`` batches.

Packed sequences (``pack_tokens`` > 0, ragged only; ``PackedLoader``): batch k has a packing
plan of P sample layouts (``m2dit_jax.data.packing``, from (seed, k) only, so all processes
and workers agree) and every row holds P samples, the j-th of layout plan[j], loaded as an
unpacked sample of that layout would be: draw-mode sources take the next samples of the
shuffled unit stream (samples are counted across batches, so an epoch uses every unit once),
bucketed sources the next units of that layout's stream. The samples' scenes are
concatenated in plan order (``scene_frames`` (B, P*S)); ``sample_scenes`` (B, P) and
``pack_fill`` (B,) are added and ``ids`` is (B, P). An epoch is the batches whose samples
fit in one pass over the units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import grain
import numpy as np

from m2dit_jax.data.bad_input import SKIP_REASONS, BadSample, empty_counts, log_once
from m2dit_jax.data.config import FOLD_ENCODERS, validate_data_config
from m2dit_jax.data.frame_sampling import FrameRule

SKIPS_KEY = "_skips"
_LAYOUT_TAG = 0x4A66  # rng stream of a batch's drawn layout
_SCHEDULE_TAG = 0x5C4E  # rng stream of the bucket schedule
_STREAM_TAG = 0x57E4  # rng stream of a layout group's per-pass order
_SCHEDULE_BLOCK = 1024


class SampleSource(Protocol):
    """What the pipeline needs from a source.

    ``num_units``: length of the index space (clips for stage-1 video sources, samples
    otherwise); ``units_per_sample``: units one sample reads (S or 1); ``load(units, rng)``
    -> one example dict (``video`` (S*F, H, W, 3) uint8 or ``latents``, ``scene_frames`` (S,)
    int32, ``captions`` (S,) object, ``id``, optional extras) or raises ``BadSample``;
    ``initial_skips``: counts of inputs dropped while indexing (e.g. invalid manifest lines).

    Ragged sources also have ``unit_layouts``: None = the pipeline draws each batch's layout
    and calls ``load(units, rng, scene_frames=layout)``; else a list over all (global) units
    of each unit's per-scene frame counts (None = unusable unit), which the pipeline buckets.
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


def _batch_layout(scene_frames: np.ndarray, frames_axis: int) -> tuple[int, ...]:
    """The one (S,) layout of a batch's (B, S) ``scene_frames``; checks rows and the axis."""
    first = tuple(int(f) for f in scene_frames[0])
    if not (scene_frames == scene_frames[:1]).all():
        raise ValueError(f"a batch mixes scene layouts {np.unique(scene_frames, axis=0)}")
    if sum(first) != frames_axis:
        raise ValueError(f"scene_frames {first} do not sum to the frame axis {frames_axis}")
    return first


class EncodeStage:
    """Optional encoders run inside the grain map (picklable, lazily built per worker).

    The video encoder encodes each scene on its own (scenes of their own lengths are split by
    ``scene_frames``) and turns ``scene_frames`` into latent frames (pixel / patch_t), keeping
    the pixel counts as ``video_scene_frames``. Outputs are numpy, except the conv codec's
    latents of equal-length scenes when no grain workers run (``num_workers=0``): those are
    the jax.Array still being computed, so the train loop never waits on the encode.
    """

    def __init__(self, config):
        self.num_scenes = int(config.num_scenes)
        self.text = (config.text_encoder, int(config.text_len), int(config.text_dim))
        self.text_seed = int(config.text_seed)
        self.video = (config.video_encoder, int(config.patch_t), int(config.patch_s))
        self.detail_scale = float(config.get("detail_scale", 1.0))
        self.autoencoder = str(config.get("autoencoder", ""))
        # Batches made in this process (no grain workers) may carry device arrays.
        self.in_process = int(config.get("num_workers", 0)) == 0
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
        if self.video[0] in FOLD_ENCODERS:
            if self._video_encoder is None:
                self._video_encoder = self._make_video_encoder()
            video = batch["video"]
            b, sf = video.shape[:2]
            pixel = batch["scene_frames"]
            layout = _batch_layout(pixel, sf)
            if len(set(layout)) == 1:  # len(layout): S scenes, or P * S when packed
                n = len(layout)
                scenes = video.reshape(b * n, sf // n, *video.shape[2:])
                if self.video[0] == "conv" and self.in_process:
                    # jitted: left in flight (a jax.Array) so that the loop does not wait on it
                    lat = self._video_encoder.encode(scenes, block=False)
                else:
                    lat = self._video_encoder.encode(scenes)
                batch["latents"] = lat.reshape(b, -1, *lat.shape[2:])
            else:  # ragged: encode each scene alone, concatenate along the frame axis
                starts = np.cumsum((0,) + layout)
                parts = [
                    self._video_encoder.encode(video[:, starts[i] : starts[i + 1]])
                    for i in range(len(layout))
                ]
                batch["latents"] = np.concatenate(parts, axis=1)
            batch["video_scene_frames"] = pixel
            batch["scene_frames"] = (pixel // self.video[1]).astype(np.int32)
        return batch

    def _make_video_encoder(self):
        if self.video[0] == "conv":
            from m2dit_jax.encoders.conv_autoencoder import ConvAutoencoder

            ae = ConvAutoencoder.load(self.autoencoder)
            if (ae.patch_t, ae.patch_s) != self.video[1:]:
                raise ValueError(
                    f"{self.autoencoder} folds patch_t={ae.patch_t}, patch_s={ae.patch_s}; the "
                    f"data config has patch_t={self.video[1]}, patch_s={self.video[2]}"
                )
            return ae
        from m2dit_jax.encoders.pixel import SpaceToDepthAutoencoder

        return SpaceToDepthAutoencoder(self.video[1], self.video[2], self.detail_scale)


class LayoutBuckets:
    """Bucketing of units that carry their own layout (see the module docstring).

    ``unit_batch(k)`` -> (layout id, (B,) global unit indices) of batch k; ``members(i)``: the
    units of layout i this process reads (all processes' units when it owns none of them).
    """

    def __init__(self, unit_layouts, *, seed, process_index, process_count, batch_size, shuffle):
        self.seed, self.batch_size, self.shuffle = int(seed), int(batch_size), bool(shuffle)
        valid = [(u, tuple(int(f) for f in lay)) for u, lay in enumerate(unit_layouts) if lay]
        if not valid:
            raise ValueError("the source has no unit with a usable scene layout")
        self.layouts = sorted({lay for _, lay in valid})
        index = {lay: i for i, lay in enumerate(self.layouts)}
        everyone = [[] for _ in self.layouts]
        for u, lay in valid:
            everyone[index[lay]].append(u)
        self._members = []
        for units in everyone:
            own = [u for u in units if u % process_count == process_index]
            self._members.append(np.asarray(own or units, np.int64))
        counts = np.array([len(u) for u in everyone], np.float64)
        self.global_counts = counts.astype(np.int64)
        self.probs = counts / counts.sum()
        self.batches_per_epoch = max(1, len(valid) // (self.batch_size * process_count))
        self._cum: list[np.ndarray] = [np.zeros(len(self.layouts), np.int64)]
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def members(self, layout_id: int) -> np.ndarray:
        return self._members[layout_id]

    def _block(self, b: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed % 2**32, b, _SCHEDULE_TAG])
        return rng.choice(len(self.layouts), size=_SCHEDULE_BLOCK, p=self.probs)

    def layout_of(self, k: int) -> tuple[int, int]:
        """(layout id of batch k, how many earlier batches had that layout)."""
        b, j = divmod(int(k), _SCHEDULE_BLOCK)
        while len(self._cum) <= b:  # counts per layout before each block, built lazily
            block = self._block(len(self._cum) - 1)
            self._cum.append(self._cum[-1] + np.bincount(block, minlength=len(self.layouts)))
        block = self._block(b)
        i = int(block[j])
        return i, int(self._cum[b][i] + np.count_nonzero(block[:j] == i))

    def _stream(self, layout_id: int, positions: np.ndarray) -> np.ndarray:
        members = self._members[layout_id]
        m = len(members)
        out = np.empty(len(positions), np.int64)
        for n, p in enumerate(positions):
            epoch, at = divmod(int(p), m)
            if self.shuffle:
                at = self._order(layout_id, epoch)[at]
            out[n] = members[at]
        return out

    def units_at(self, layout_id: int, positions: np.ndarray) -> np.ndarray:
        """Global units at ``positions`` of layout ``layout_id``'s stream (packed batches)."""
        return self._stream(layout_id, np.asarray(positions, np.int64))

    def _order(self, layout_id: int, epoch: int) -> np.ndarray:
        key = (layout_id, epoch)
        if key not in self._orders:
            if len(self._orders) >= 4 * len(self.layouts):
                self._orders.clear()
            m = len(self._members[layout_id])
            rng = np.random.default_rng([self.seed % 2**32, layout_id, epoch, _STREAM_TAG])
            self._orders[key] = rng.permutation(m)
        return self._orders[key]

    def unit_batch(self, k: int) -> tuple[int, np.ndarray]:
        i, n = self.layout_of(k)
        first = n * self.batch_size
        return i, self._stream(i, np.arange(first, first + self.batch_size))


class BatchLoader:
    """(batch position, unit indices (B,) or (B, S)) -> one batch dict; replaces bad inputs.

    Ragged: ``draw`` mode gives every sample the batch's drawn layout; with ``buckets`` the
    batch position alone picks the layout and its units (the element passed is ignored) and
    a bad input is replaced by another unit of the same layout.
    """

    def __init__(
        self, source: SampleSource, config, *, seed, process_index, process_count, buckets=None
    ):
        self.source = source
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.num_local = local_unit_count(source.num_units, process_index, process_count)
        self.num_scenes = int(config.num_scenes)
        self.strict = bool(config.strict)
        self.max_retries = int(config.max_retries)
        self.encode = EncodeStage(config)
        self.ragged = bool(config.get("ragged", False))
        self.rule = FrameRule.from_config(config) if self.ragged else None
        self.buckets = buckets

    def _global(self, local_units) -> list[int]:
        return [self.process_index + int(u) * self.process_count for u in local_units]

    def draw_layout(self, batch_index: int) -> tuple[int, ...]:
        """The layout of batch ``batch_index`` in draw mode: from (seed, batch index) only."""
        rng = np.random.default_rng([self.seed % 2**32, int(batch_index), _LAYOUT_TAG])
        return self.rule.draw(rng, self.num_scenes)

    def load_one(
        self, position: int, local_units, skips: np.ndarray, scene_frames=None, group=None
    ) -> dict[str, Any]:
        """One sample; ``group`` (bucketed mode): the unit's layout id, units are global."""
        units = np.atleast_1d(local_units)
        last_error = None
        kwargs = {} if scene_frames is None else {"scene_frames": scene_frames}
        for attempt in range(self.max_retries + 1):
            rng = np.random.default_rng([self.seed, self.process_index, position, attempt])
            try:
                chosen = [int(u) for u in units] if group is not None else self._global(units)
                example = self.source.load(chosen, rng, **kwargs)
            except BadSample as error:
                if self.strict:
                    raise ValueError(str(error)) from error
                log_once(error)
                last_error = error
                skips[SKIP_REASONS.index(error.reason)] += 1
                if group is not None:
                    members = self.buckets.members(group)
                    units = members[rng.integers(len(members), size=len(units))]
                else:
                    units = rng.integers(self.num_local, size=len(units))
                continue
            if "scene_frames" not in example:  # a source of equal scenes that does not say
                frames = len(example["latents" if "latents" in example else "video"])
                example["scene_frames"] = np.full(
                    self.num_scenes, frames // self.num_scenes, np.int32
                )
            return example
        raise ValueError(
            f"{self.max_retries + 1} bad inputs in a row for one sample (last: {last_error}); "
            "the data is mostly unusable — check the source"
        )

    def __call__(self, batch_index: int, unit_batch: np.ndarray) -> dict[str, np.ndarray]:
        skips = np.zeros(len(SKIP_REASONS), np.int64)
        scene_frames = group = None
        if self.buckets is not None:
            group, unit_batch = self.buckets.unit_batch(batch_index)
        elif self.ragged:
            scene_frames = self.draw_layout(batch_index)
        size = len(unit_batch)
        examples = [
            self.load_one(batch_index * size + j, units, skips, scene_frames, group)
            for j, units in enumerate(unit_batch)
        ]
        batch = _stack(examples)
        batch["ids"] = batch.pop("id")
        frames_axis = batch["latents" if "latents" in batch else "video"].shape[1]
        _batch_layout(batch["scene_frames"], frames_axis)
        batch = self.encode(batch)
        batch[SKIPS_KEY] = skips
        return batch


def _local_units(source, config, process_index: int, process_count: int) -> tuple[int, int]:
    """(units this process owns, units per sample); raises when they make no sample."""
    num_local = local_unit_count(source.num_units, process_index, process_count)
    per_sample = source.units_per_sample
    if num_local < per_sample:
        raise ValueError(
            f"process {process_index}/{process_count} owns {num_local} units of "
            f"{config.source!r}, fewer than one sample needs ({per_sample})"
        )
    return num_local, per_sample


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
    if int(config.get("pack_tokens", 0)) > 0:
        return _packed_dataset(
            source,
            config,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            batch_size=batch_size,
        )
    if bool(config.get("ragged", False)) and getattr(source, "unit_layouts", None) is not None:
        return _bucketed_dataset(
            source,
            config,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            batch_size=batch_size,
        )
    num_local, per_sample = _local_units(source, config, process_index, process_count)
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
    return _finish(ds, config, source)


def _bucketed_dataset(source, config, *, seed, process_index, process_count, batch_size):
    """Ragged sources with per-unit layouts: batches of one layout each (``LayoutBuckets``)."""
    buckets = LayoutBuckets(
        source.unit_layouts,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        batch_size=batch_size,
        shuffle=bool(config.shuffle),
    )
    ds = grain.MapDataset.range(buckets.batches_per_epoch)
    ds = ds.repeat(None if int(config.num_epochs) == 0 else int(config.num_epochs))
    loader = BatchLoader(
        source,
        config,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        buckets=buckets,
    )
    return _finish(ds.map_with_index(loader), config, source)


def _concat_samples(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """The P samples of one packed row -> one example: per-scene / frame arrays concatenated
    in plan order, per-sample scalars (``id``, ``attrs_shape``, ...) stacked to (P,)."""
    out = {}
    for key in examples[0]:
        values = [e[key] for e in examples]
        if np.ndim(values[0]) == 0:
            if isinstance(values[0], str):
                arr = np.empty(len(values), dtype=object)
                arr[:] = values
                out[key] = arr
            else:
                out[key] = np.stack([np.asarray(v) for v in values])
        else:
            out[key] = np.concatenate([np.asarray(v) for v in values], axis=0)
    return out


class PackedLoader:
    """(batch position, ignored) -> one packed batch (``pack_tokens`` > 0).

    Batch k's plan (``PackPlanner``) is a pure function of (seed, k); sample j of row r is
    loaded exactly as an unpacked sample of layout plan[j]: draw mode (``units`` given: the
    seeded, per-epoch reshuffled stream of this process's units, ``units_per_sample`` each)
    renders / decodes the stream's next sample with that layout; bucketed mode takes the
    next unit of that layout's stream (``LayoutBuckets``). Row-major order: the n-th sample
    of batch k is row n // P, slot n % P, and the stream positions continue across batches.
    """

    def __init__(self, inner: BatchLoader, planner, spec, *, batch_size, units=None):
        self.inner, self.planner, self.spec = inner, planner, spec
        self.batch_size, self.units = int(batch_size), units
        self.per_sample = inner.source.units_per_sample

    def _draw_units(self, m: int) -> list[int]:
        return [int(self.units[m * self.per_sample + i]) for i in range(self.per_sample)]

    def __call__(self, batch_index: int, _ignored=None) -> dict[str, np.ndarray]:
        skips = np.zeros(len(SKIP_REASONS), np.int64)
        keys = self.planner.plan(batch_index)
        layouts = [self.planner.layout_of(key) for key in keys]
        p, b = len(keys), self.batch_size
        first = self.planner.samples_before(batch_index) * b  # samples before this batch
        buckets = self.inner.buckets
        if buckets is not None:
            before = self.planner.counts_before(batch_index) * b
            per_plan = {key: keys.count(key) for key in set(keys)}
            earlier = [keys[:j].count(key) for j, key in enumerate(keys)]
        rows = []
        for r in range(b):
            examples = []
            for j, (key, layout) in enumerate(zip(keys, layouts)):
                m = first + r * p + j
                if buckets is None:
                    example = self.inner.load_one(m, self._draw_units(m), skips, layout)
                else:
                    at = before[key] + r * per_plan[key] + earlier[j]
                    unit = buckets.units_at(key, np.array([at]))
                    example = self.inner.load_one(m, unit, skips, None, key)
                if tuple(int(f) for f in example["scene_frames"]) != layout:
                    raise ValueError(
                        f"a sample has scene_frames {tuple(example['scene_frames'])}, its "
                        f"packing plan slot {layout}"
                    )
                examples.append(example)
            rows.append(_concat_samples(examples))
        batch = _stack(rows)
        batch["ids"] = batch.pop("id")
        batch["sample_scenes"] = np.array(
            [[len(layout) for layout in layouts]] * b, np.int32
        ).reshape(b, p)
        fill = self.spec.plan_tokens(layouts) / self.spec.budget
        batch["pack_fill"] = np.full(b, fill, np.float32)
        frames_axis = batch["latents" if "latents" in batch else "video"].shape[1]
        _batch_layout(batch["scene_frames"], frames_axis)
        batch = self.inner.encode(batch)
        batch[SKIPS_KEY] = skips
        return batch


def _packed_dataset(source, config, *, seed, process_index, process_count, batch_size):
    """Packed rows (``pack_tokens`` > 0): see ``PackedLoader`` and ``m2dit_jax.data.packing``."""
    from m2dit_jax.data.packing import PackSpec, bucket_planner, draw_planner

    epochs = int(config.num_epochs)
    buckets = units = None
    if getattr(source, "unit_layouts", None) is not None:
        buckets = LayoutBuckets(
            source.unit_layouts,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            batch_size=batch_size,
            shuffle=bool(config.shuffle),
        )
        spec = PackSpec.from_config(config)
        shapes = getattr(source, "_shapes", None)
        if config.source == "latents" and shapes is not None and len(shapes[2]) == 3:
            stored = int(shapes[2][1])
            if spec.text_tokens != stored:
                raise ValueError(
                    f"data config field 'pack_text_tokens': the latents records hold {stored} "
                    f"text tokens per scene, the packing counts {spec.text_tokens} "
                    "(set pack_text_tokens to the stored count)"
                )
        planner = bucket_planner(
            buckets.layouts, buckets.probs, spec, seed=seed, vocabulary=int(config.pack_plans)
        )
        units_per_epoch = int(buckets.global_counts.sum()) // process_count
    else:
        num_local, per_sample = _local_units(source, config, process_index, process_count)
        units = grain.MapDataset.range(num_local)
        if config.shuffle:
            units = units.shuffle(seed=seed % 2**32)
        units = units.repeat(None)
        planner = draw_planner(config, seed=seed, vocabulary=int(config.pack_plans))
        spec = planner.spec
        units_per_epoch = num_local // per_sample
    per_epoch = planner.batches_within(units_per_epoch // batch_size) if epochs else 1
    inner = BatchLoader(
        source,
        config,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        buckets=buckets,
    )
    loader = PackedLoader(inner, planner, spec, batch_size=batch_size, units=units)
    ds = grain.MapDataset.range(per_epoch).repeat(None if epochs == 0 else epochs)
    return _finish(ds.map_with_index(loader), config, source)


def _finish(ds, config, source) -> _SkipAccountingIterator:
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
