"""Precompute VAE latents and T5 caption embeddings into ``latents`` ArrayRecord shards.

    python -m launch.precompute --pretrained /ckpt/CogVideoX-5b --out /data/latents \\
        --data.source=manifest --data.path=/data/shots.jsonl --data.frames=49 \\
        --data.height=480 --data.width=720 --data.num_scenes=3 --data.stage=2 \\
        [--samples_per_shard=64 --batch_size=2 --dtype=bfloat16 --latents_dtype=float16]

Reads a pixel source of ``m2dit_jax.data`` (synthetic_shapes, manifest or tfds; the data
section's fields are ``--data.*`` flags), VAE-encodes every scene on its own and T5-encodes
every caption on its own, in fixed-size jitted batches split over all local devices; on a
cluster every process runs the same command and takes every ``process_count``-th shard.
Output in ``--out``:

- ``latents-KKKKK-of-NNNNN.array_record``: the records of ``m2dit_jax.data.latents_format``
  (scaled latents (S, F', h, w, C), text embeds (S, T, D), text mask, captions, id, meta);
  train on them with ``--config.data.source=latents --config.data.path=OUT``.
- ``_state/job.json`` (the job's parameters; a re-run with different ones is refused) and
  ``_state/shard-KKKKK.json`` per finished shard (its counts, skipped inputs by reason and
  per-channel latent sums). A re-run skips finished shards, so an interrupted job resumes.
- ``stats.json``: counts (samples, scenes, shards, skipped inputs by reason) and the latent
  mean/std per channel over everything written.

Stage-1 pixel sources draw S unrelated clips per sample: they are grouped once by a seeded
permutation, so a sample's scenes are fixed by ``--seed``.

Ragged scenes (``--data.ragged=True``; use ``--data.frame_rule=4k+1`` for a CogVideoX VAE):
sources that derive each unit's layout (manifest stage 2: shot durations at ``--data.fps``)
keep it; the others (synthetic_shapes, manifest stage 1) draw sample i's per-scene frame
counts from (``--seed``, i). Every scene is still VAE-encoded on its own (clips of one length
share a jitted call, so one compile per distinct length), and the record stores the scenes
concatenated with their latent frame counts (``LatentRecord.scene_frames``). Train on them
with ``--config.data.ragged=True`` (the pipeline buckets records by layout).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

STATE_DIR = "_state"
POSTERIORS = ("mode", "sample")
LATENT_DTYPES = ("float16", "float32")
logger = logging.getLogger("m2dit_jax.precompute")


@dataclasses.dataclass(frozen=True)
class PrecomputeOptions:
    """How the job batches, stores and shards its output.

    samples_per_shard: multi-scene samples per ArrayRecord file.
    batch_size: samples encoded per jitted call (its S scenes/captions are encoded at once).
    seed: clip grouping (stage 1), per-sample frame sampling, posterior samples.
    max_samples: 0 = every sample the source has, else at most this many.
    latents_dtype / embeds_dtype: stored dtypes ("float16" halves the files).
    posterior: "mode" (the mean; deterministic) or "sample" (mean + std * noise).
    """

    samples_per_shard: int = 64
    batch_size: int = 1
    seed: int = 0
    max_samples: int = 0
    latents_dtype: str = "float32"
    embeds_dtype: str = "float32"
    posterior: str = "mode"

    def __post_init__(self):
        for name in ("samples_per_shard", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"precompute option {name} must be positive, got {self}")
        if self.max_samples < 0:
            raise ValueError(f"precompute option max_samples must be >= 0, got {self.max_samples}")
        for name in ("latents_dtype", "embeds_dtype"):
            if getattr(self, name) not in LATENT_DTYPES:
                raise ValueError(f"precompute option {name} must be one of {LATENT_DTYPES}")
        if self.posterior not in POSTERIORS:
            raise ValueError(f"precompute option posterior must be one of {POSTERIORS}")


class SceneVideoEncoder:
    """uint8 clips (N, F, H, W, 3) -> scaled latents (N, F', h, w, C) float32, jitted over a
    fixed clip batch split across ``mesh``'s devices (weights replicated)."""

    def __init__(self, vae, mesh, *, clips_per_call: int, tiling=None, posterior="mode"):
        import jax
        from flax import nnx
        from jax.sharding import NamedSharding, PartitionSpec

        axes = tuple(mesh.axis_names)
        size = int(np.prod([mesh.shape[a] for a in axes]))
        self.clips_per_call = -(-clips_per_call // size) * size
        self.vae = vae
        graphdef, state = nnx.split(vae)
        replicated = NamedSharding(mesh, PartitionSpec())
        rows = NamedSharding(mesh, PartitionSpec(axes))
        self._state = jax.device_put(state, replicated)
        sample = posterior == "sample"

        @functools.partial(jax.jit, in_shardings=(replicated, rows, replicated), out_shardings=rows)
        def encode(state, clips, key):
            from m2dit_jax.encoders.vae import pixels_to_unit

            model = nnx.merge(graphdef, state)
            return model.encode(pixels_to_unit(clips), key=key if sample else None, tiling=tiling)

        self._encode = encode

    def __call__(self, clips: np.ndarray, key) -> np.ndarray:
        n = len(clips)
        if n > self.clips_per_call:
            raise ValueError(f"{n} clips exceed the compiled batch of {self.clips_per_call}")
        if n < self.clips_per_call:  # keep one compiled shape: pad with copies of clip 0
            pad = np.broadcast_to(clips[:1], (self.clips_per_call - n, *clips.shape[1:]))
            clips = np.concatenate([clips, pad])
        return np.asarray(self._encode(self._state, clips, key))[:n]


def _json_write(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def shard_name(index: int, count: int) -> str:
    return f"latents-{index:05d}-of-{count:05d}.array_record"


class _Stats:
    """Per-channel first/second moments (float64) plus counters of one shard."""

    def __init__(self):
        self.sum = self.sumsq = None
        self.values = 0
        self.samples = self.scenes = 0
        self.skipped: dict[str, int] = {}

    def add_latents(self, latents: np.ndarray) -> None:
        flat = latents.reshape(-1, latents.shape[-1]).astype(np.float64)
        if self.sum is None:
            self.sum = np.zeros(flat.shape[1])
            self.sumsq = np.zeros(flat.shape[1])
        self.sum += flat.sum(0)
        self.sumsq += np.square(flat).sum(0)
        self.values += flat.shape[0]

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "scenes": self.scenes,
            "skipped": self.skipped,
            "latent_values_per_channel": self.values,
            "latent_sum": None if self.sum is None else self.sum.tolist(),
            "latent_sumsq": None if self.sumsq is None else self.sumsq.tolist(),
        }


_LAYOUT_TAG = 0x4A66  # rng stream of a sample's drawn scene lengths


def _scene_clips(example: dict[str, Any], num_scenes: int, frames: int) -> list[np.ndarray]:
    """A sample's (sum_i F_i, H, W, 3) video -> its S clips (F_i, H, W, 3)."""
    video = np.asarray(example["video"])
    scene_frames = example.get("scene_frames")
    if scene_frames is None:
        scene_frames = (frames,) * num_scenes
    scene_frames = [int(f) for f in scene_frames]
    if len(scene_frames) != num_scenes or sum(scene_frames) != len(video):
        raise ValueError(
            f"sample {example.get('id')!r}: scene_frames {scene_frames} do not split its "
            f"{len(video)} frames into {num_scenes} scenes"
        )
    starts = np.cumsum([0] + scene_frames)
    return [video[starts[k] : starts[k + 1]] for k in range(num_scenes)]


def _encode_scenes(video_encoder, clips: list[np.ndarray], key) -> list[np.ndarray]:
    """Encode every clip on its own; clips of one length share a call (one compiled shape
    per length). Equal clips make exactly one call with ``key``; length group g of ragged
    clips uses ``fold_in(key, g)``."""
    import jax

    lengths = sorted({len(c) for c in clips})
    out: list[np.ndarray | None] = [None] * len(clips)
    for g, length in enumerate(lengths):
        idx = [n for n, c in enumerate(clips) if len(c) == length]
        group_key = key if len(lengths) == 1 else jax.random.fold_in(key, g)
        lat = video_encoder(np.stack([clips[n] for n in idx]), group_key)
        for n, x in zip(idx, lat):
            out[n] = x
    return out


def _sample_units(source, num_samples: int, seed: int) -> list[list[int]]:
    """Global unit indices of every sample: S grouped clips (stage 1) or one unit."""
    per = int(source.units_per_sample)
    if per == 1:
        return [[i] for i in range(num_samples)]
    order = np.random.default_rng([seed, 0x5EED]).permutation(source.num_units)
    return [order[i * per : (i + 1) * per].tolist() for i in range(num_samples)]


_RAGGED_FIELDS = ("ragged", "min_frames", "max_frames", "frame_rule", "fps", "token_budget")


def _job_description(data_config, options: PrecomputeOptions, num_samples, num_shards, vae, text):
    skip = {"num_workers"}
    if not data_config.get("ragged", False):  # equal jobs describe themselves as before
        skip |= set(_RAGGED_FIELDS)
    return {
        "data": {k: data_config[k] for k in sorted(data_config.keys()) if k not in skip},
        "options": dataclasses.asdict(options),
        "num_samples": num_samples,
        "num_shards": num_shards,
        "vae": {"latent_channels": vae.config.latent_channels,
                "scaling_factor": vae.config.scaling_factor},
        "text": {"text_len": int(text.text_len), "dim": int(text.dim)},
    }  # fmt: skip


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _check_job(state_dir: str, job: dict) -> None:
    """Record the job's parameters, or refuse to resume a directory made by another job."""
    path = os.path.join(state_dir, "job.json")
    now = _flatten(json.loads(json.dumps(job)))
    if not os.path.isfile(path):
        _json_write(path, job)
        return
    with open(path) as f:
        before = _flatten(json.load(f))
    diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if diff:
        raise ValueError(
            f"{path} was written by a different job (differs in {diff}); use a new --out "
            "or delete the directory to start over"
        )


def precompute(
    data_config,
    out_dir: str,
    *,
    vae,
    text_encoder,
    options: PrecomputeOptions = PrecomputeOptions(),
    tiling=None,
    process_index: int = 0,
    process_count: int = 1,
    mesh=None,
) -> dict[str, Any]:
    """Encode the data source into latents shards in ``out_dir`` (see module docstring).

    Args:
      data_config: a ``default_data_config()``-shaped ConfigDict (pixel source, encoders
        "none"); ``frames``/``height``/``width`` set the clip size.
      vae: a ``CogVideoXVAE``; text_encoder: any ``TextEncoder`` (e.g. ``T5TextEncoder``).
      options, tiling: see ``PrecomputeOptions`` / ``SpatialTiling``.
      process_index, process_count: this process takes shards ``process_index::process_count``.
      mesh: devices to split each batch over (default: all of this process's devices).

    Returns: this process's summary ``{"shards_written", "shards_already_done", "samples",
      "skipped", "seconds"}``; ``stats.json`` is rewritten from every finished shard.
    """
    import jax

    from m2dit_jax.data import LatentRecord, write_latent_shard
    from m2dit_jax.data.bad_input import BadSample, log_once
    from m2dit_jax.data.config import validate_data_config
    from m2dit_jax.data.pipeline import build_source

    validate_data_config(data_config)
    if data_config.source == "latents":
        raise ValueError("data config field 'source': precompute needs a pixel source, not latents")
    for field in ("text_encoder", "video_encoder"):
        if data_config[field] != "none":
            raise ValueError(
                f"data config field {field!r} must be 'none' for precompute (the job encodes)"
            )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    t0 = time.time()
    num_scenes, frames = int(data_config.num_scenes), int(data_config.frames)
    ragged = bool(data_config.get("ragged", False))
    source = build_source(data_config, process_index=0, process_count=1)
    unit_layouts = getattr(source, "unit_layouts", None) if ragged else None
    if unit_layouts is not None:  # the units carry their own layouts: every usable one
        usable = [[u] for u, layout in enumerate(unit_layouts) if layout]
        num_samples = len(usable)
    else:
        num_samples = source.num_units // int(source.units_per_sample)
    if options.max_samples:
        num_samples = min(num_samples, options.max_samples)
    if num_samples == 0:
        raise ValueError(f"data source {data_config.source!r} yields no sample")
    if unit_layouts is not None:
        units = usable[:num_samples]
    else:
        units = _sample_units(source, num_samples, options.seed)
    rule = None
    if ragged and unit_layouts is None:
        from m2dit_jax.data.frame_sampling import FrameRule

        rule = FrameRule.from_config(data_config)
    num_shards = -(-num_samples // options.samples_per_shard)
    state_dir = os.path.join(out_dir, STATE_DIR)
    os.makedirs(state_dir, exist_ok=True)
    job = _job_description(data_config, options, num_samples, num_shards, vae, text_encoder)
    _check_job(state_dir, job)

    if mesh is None:
        mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
    video_encoder = SceneVideoEncoder(
        vae, mesh, clips_per_call=options.batch_size * num_scenes, tiling=tiling,
        posterior=options.posterior,
    )  # fmt: skip
    meta = {
        "source": str(data_config.source),
        "frames": frames,
        "height": int(data_config.height),
        "width": int(data_config.width),
        "vae_scaling_factor": float(vae.config.scaling_factor),
        "posterior": options.posterior,
        "text_encoder": type(text_encoder).__name__,
    }
    if ragged:  # scenes of their own lengths: no single "frames"
        del meta["frames"]
        meta.update(
            ragged=True,
            min_frames=int(data_config.min_frames),
            max_frames=int(data_config.max_frames),
            frame_rule=str(data_config.frame_rule),
        )
    summary = {"shards_written": 0, "shards_already_done": 0, "samples": 0, "skipped": {}}
    for shard in range(process_index, num_shards, process_count):
        stats_path = os.path.join(state_dir, f"shard-{shard:05d}.json")
        if os.path.isfile(stats_path):
            summary["shards_already_done"] += 1
            continue
        stats = _Stats()
        records = []
        first = shard * options.samples_per_shard
        indices = range(first, min(first + options.samples_per_shard, num_samples))
        for start in range(0, len(indices), options.batch_size):
            examples = []
            for i in indices[start : start + options.batch_size]:
                rng = np.random.default_rng([options.seed, i])
                kwargs = {}
                if rule is not None:  # drawn per sample, on its own stream
                    layout_rng = np.random.default_rng([options.seed, i, _LAYOUT_TAG])
                    kwargs["scene_frames"] = rule.draw(layout_rng, num_scenes)
                try:
                    example = source.load(units[i], rng, **kwargs)
                    captions = [str(c) for c in example["captions"]]
                    if len(captions) != num_scenes or not all(c.strip() for c in captions):
                        raise BadSample("empty_caption", str(example.get("id", i)), f"{captions}")
                except BadSample as error:
                    if data_config.strict:
                        raise ValueError(str(error)) from error
                    log_once(error)
                    stats.skip(error.reason)
                    continue
                examples.append((i, example, captions))
            if not examples:
                continue
            clips = [c for _, e, _ in examples for c in _scene_clips(e, num_scenes, frames)]
            key = jax.random.fold_in(jax.random.key(options.seed), examples[0][0])
            latents = _encode_scenes(video_encoder, clips, key)
            embeds, mask = text_encoder.encode([c for _, _, caps in examples for c in caps])
            for j, (i, example, captions) in enumerate(examples):
                scene = slice(j * num_scenes, (j + 1) * num_scenes)
                per_scene = [x.astype(options.latents_dtype) for x in latents[scene]]
                scene_frames = tuple(len(x) for x in per_scene)
                if len(set(scene_frames)) == 1:
                    lat = np.stack(per_scene)
                else:
                    lat = np.concatenate(per_scene)
                stats.add_latents(lat)
                records.append(
                    LatentRecord(
                        id=str(example.get("id", f"sample-{i}")),
                        captions=captions,
                        latents=lat,
                        text_embeds=embeds[scene].astype(options.embeds_dtype),
                        text_mask=mask[scene],
                        meta=meta,
                        scene_frames=scene_frames,
                    )
                )
                stats.samples += 1
                stats.scenes += num_scenes
        if records:
            # Write under a temporary folder first: a half-written shard is never listed.
            partial = os.path.join(state_dir, f"partial-{shard:05d}")
            os.makedirs(partial, exist_ok=True)
            tmp = os.path.join(partial, shard_name(shard, num_shards))
            write_latent_shard(tmp, records)
            os.replace(tmp, os.path.join(out_dir, shard_name(shard, num_shards)))
            os.rmdir(partial)
        _json_write(stats_path, stats.to_json())
        summary["shards_written"] += 1
        summary["samples"] += stats.samples
        for reason, n in stats.skipped.items():
            summary["skipped"][reason] = summary["skipped"].get(reason, 0) + n
        logger.info("shard %d/%d: %d samples, skipped %s", shard, num_shards, stats.samples,
                    stats.skipped)  # fmt: skip
    if process_count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("m2dit_precompute_done")
    if process_index == 0:
        write_stats(out_dir, num_shards, source.initial_skips)
    summary["seconds"] = time.time() - t0
    return summary


def write_stats(out_dir: str, num_shards: int, initial_skips: dict[str, int]) -> dict[str, Any]:
    """Merge every ``_state/shard-*.json`` into ``stats.json`` (counts, latent mean/std)."""
    state_dir = os.path.join(out_dir, STATE_DIR)
    total = _Stats()
    done = 0
    for shard in range(num_shards):
        path = os.path.join(state_dir, f"shard-{shard:05d}.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            s = json.load(f)
        done += 1
        total.samples += s["samples"]
        total.scenes += s["scenes"]
        for reason, n in s["skipped"].items():
            total.skipped[reason] = total.skipped.get(reason, 0) + n
        if s["latent_sum"] is not None:
            if total.sum is None:
                total.sum = np.zeros(len(s["latent_sum"]))
                total.sumsq = np.zeros(len(s["latent_sum"]))
            total.sum += np.asarray(s["latent_sum"])
            total.sumsq += np.asarray(s["latent_sumsq"])
            total.values += s["latent_values_per_channel"]
    skipped = dict(total.skipped)
    for reason, n in initial_skips.items():
        if n:
            skipped[reason] = skipped.get(reason, 0) + n
    out: dict[str, Any] = {
        "shards_total": num_shards,
        "shards_done": done,
        "complete": done == num_shards,
        "samples": total.samples,
        "scenes": total.scenes,
        "skipped": skipped,
        "skipped_total": int(sum(skipped.values())),
    }
    if total.values:
        mean = total.sum / total.values
        var = np.maximum(total.sumsq / total.values - np.square(mean), 0.0)
        out["latent_mean"] = mean.tolist()
        out["latent_std"] = np.sqrt(var).tolist()
        out["latent_values_per_channel"] = total.values
    _json_write(os.path.join(out_dir, "stats.json"), out)
    return out


# --------------------------------------------------------------------------------------------
# Command line


def _parse_tiling(text: str):
    from m2dit_jax.encoders.vae import SpatialTiling

    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"--tiling must be HxW pixels (e.g. 240x360), got {text!r}") from e
    return SpatialTiling(h, w)


def main(argv: Sequence[str]) -> dict[str, Any]:
    import jax.numpy as jnp
    from absl import flags

    from m2dit_jax.encoders.t5 import T5TextEncoder
    from m2dit_jax.encoders.vae import load_diffusers_vae

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {list(argv[1:])}")
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[FLAGS.dtype]
    if FLAGS.process_count > 1 or FLAGS.coordinator:
        import jax

        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator or None,
            num_processes=FLAGS.process_count or None,
            process_id=FLAGS.process_index if FLAGS.coordinator else None,
        )
    import jax

    options = PrecomputeOptions(
        samples_per_shard=FLAGS.samples_per_shard,
        batch_size=FLAGS.batch_size,
        seed=FLAGS.seed,
        max_samples=FLAGS.max_samples,
        latents_dtype=FLAGS.latents_dtype,
        embeds_dtype=FLAGS.embeds_dtype,
        posterior=FLAGS.posterior,
    )
    vae = load_diffusers_vae(os.path.join(FLAGS.pretrained, "vae"), dtype=dtype, param_dtype=dtype)
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
    text = T5TextEncoder.from_pretrained(
        FLAGS.pretrained,
        text_len=FLAGS.text_len,
        dtype=dtype,
        param_dtype=dtype,
        batch_size=FLAGS.batch_size * int(FLAGS.data.num_scenes),
        mesh=mesh,
    )
    summary = precompute(
        FLAGS.data,
        FLAGS.out,
        vae=vae,
        text_encoder=text,
        options=options,
        tiling=_parse_tiling(FLAGS.tiling),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        mesh=mesh,
    )
    print(json.dumps(summary, sort_keys=True))
    return summary


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    from m2dit_jax.data import default_data_config

    config_flags.DEFINE_config_dict("data", default_data_config(), "Data source (--data.*).")
    flags.DEFINE_string("pretrained", None, "CogVideoX folder with vae/ text_encoder/ tokenizer/.")
    flags.DEFINE_string("out", None, "Output directory for the latents shards.")
    flags.DEFINE_integer("samples_per_shard", 64, "Samples per ArrayRecord shard.")
    flags.DEFINE_integer("batch_size", 1, "Samples per encode call (all their scenes at once).")
    flags.DEFINE_integer("seed", 0, "Clip grouping / frame sampling / posterior seed.")
    flags.DEFINE_integer("max_samples", 0, "Encode at most this many samples (0 = all).")
    flags.DEFINE_integer("text_len", 226, "Caption tokens (CogVideoX: 226).")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Encoder compute dtype.")
    flags.DEFINE_enum("latents_dtype", "float32", list(LATENT_DTYPES), "Stored latents dtype.")
    flags.DEFINE_enum("embeds_dtype", "float32", list(LATENT_DTYPES), "Stored embeds dtype.")
    flags.DEFINE_enum("posterior", "mode", list(POSTERIORS), "VAE posterior mode or sample.")
    flags.DEFINE_string("tiling", "", "Spatial VAE tiling HxW in pixels ('' = off).")
    flags.DEFINE_string("coordinator", "", "Multi-host: coordinator host:port.")
    flags.DEFINE_integer("process_count", 0, "Multi-host: number of processes.")
    flags.DEFINE_integer("process_index", 0, "Multi-host: this process.")
    flags.mark_flags_as_required(["pretrained", "out"])


def run() -> None:
    from absl import app

    _define_flags()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def _main(argv):
        try:
            main(argv)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(_main)


if __name__ == "__main__":
    run()
