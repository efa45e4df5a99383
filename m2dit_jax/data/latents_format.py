"""Record schema of the precomputed ``latents`` ArrayRecord shards (no TensorFlow).

One record = one multi-scene sample, serialised with msgpack:

    {
      "format": "m2dit-latents",          # magic
      "version": 2,                        # LATENTS_FORMAT_VERSION
      "id": str,                           # traceability (video path + shot ids, ...)
      "captions": [str] * S,
      "scene_frames": [int] * S,           # latent frames of each scene (version 2)
      "latents": array (S, F, h, w, C)      float16 | float32  (equal scenes), or
                 array (sum_i F_i, h, w, C)                     (ragged: scenes concatenated)
      "text_embeds": array (S, T, D)        float16 | float32
      "text_mask": array (S, T)             bool, True = real token
      "meta": {str: str | int | float},    # free-form (vae name, scaling factor, fps, ...)
    }

Arrays are stored as ``{"dtype": str, "shape": [..], "data": bytes}`` (C order, little-endian),
so a record is independent of numpy's pickle format. Latents are the *scaled* VAE latents the
DiT trains on (CogVideoX: ``vae_latent * scaling_factor``), frames-first per scene.

Version 1 records (before ragged scenes) have no ``scene_frames`` and always 5-D latents;
they still read (every scene has F frames). Version 2 adds ``scene_frames``, checked against
the latents: a record of scenes of their own lengths ("ragged") stores its scenes concatenated
along the frame axis. Equal scenes are always stored 5-D (a ragged record whose counts are
all equal is normalised to that form).

``write_latent_shard(path, records)`` writes one ArrayRecord file (group_size 1 for random
access); ``read_latent_shard(path)`` reads it back; ``LatentShardSource(paths)`` is a grain
random-access source over many shards returning decoded ``LatentRecord`` objects.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

LATENTS_FORMAT = "m2dit-latents"
LATENTS_FORMAT_VERSION = 2
# Versions the reader accepts (1: no scene_frames, equal scenes only).
READABLE_VERSIONS = (1, 2)
# ArrayRecord options: one record per chunk so that random access reads exactly one record.
ARRAY_RECORD_OPTIONS = "group_size:1"

_FLOAT_DTYPES = ("float16", "float32")


class LatentFormatError(ValueError):
    """A latents record is malformed (wrong magic/version, shapes or dtypes)."""


@dataclasses.dataclass(frozen=True)
class LatentRecord:
    """One multi-scene sample of precomputed encoder outputs.

    Attributes:
      id: a unique, human-readable sample id.
      captions: S caption strings (what the text embeddings encode).
      latents: (S, F, h, w, C) float16/float32 scaled VAE latents, one clip per scene; for
        scenes of their own lengths (sum_i F_i, h, w, C), scenes concatenated, with
        ``scene_frames`` given.
      text_embeds: (S, T, D) float16/float32 text-encoder outputs, one caption per scene.
      text_mask: (S, T) bool, True = real token.
      meta: free-form scalar metadata (str/int/float values).
      scene_frames: (S,) latent frames per scene; None = from a 5-D ``latents``. Always set
        after construction; ``is_ragged`` when they differ.
    """

    id: str
    captions: tuple[str, ...]
    latents: np.ndarray
    text_embeds: np.ndarray
    text_mask: np.ndarray
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    scene_frames: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "captions", tuple(self.captions))
        latents = np.asarray(self.latents)
        frames = self.scene_frames
        if frames is not None:
            frames = tuple(frames)
            if (
                not all(
                    isinstance(f, (int, np.integer)) and not isinstance(f, bool) and f > 0
                    for f in frames
                )
                or not frames
            ):
                raise LatentFormatError(
                    f"latents record {self.id!r}: scene_frames must be positive ints, "
                    f"got {frames!r}"
                )
            frames = tuple(int(f) for f in frames)
            if latents.ndim == 4 and len(set(frames)) == 1 and sum(frames) == latents.shape[0]:
                latents = latents.reshape(len(frames), frames[0], *latents.shape[1:])
        elif latents.ndim == 5:
            frames = (latents.shape[1],) * latents.shape[0]
        object.__setattr__(self, "scene_frames", frames)
        object.__setattr__(self, "latents", latents)
        object.__setattr__(self, "text_embeds", np.asarray(self.text_embeds))
        object.__setattr__(self, "text_mask", np.asarray(self.text_mask))
        object.__setattr__(self, "meta", dict(self.meta))
        validate_record(self)

    @property
    def num_scenes(self) -> int:
        return len(self.scene_frames)

    @property
    def is_ragged(self) -> bool:
        """True when the scenes have different latent frame counts (latents are 4-D)."""
        return self.latents.ndim == 4

    def concatenated_latents(self) -> np.ndarray:
        """(sum_i F_i, h, w, C): every scene's latents along one frame axis."""
        if self.is_ragged:
            return self.latents
        return self.latents.reshape(-1, *self.latents.shape[2:])

    def scene_latents(self, i: int) -> np.ndarray:
        """(F_i, h, w, C) latents of scene i."""
        start = sum(self.scene_frames[:i])
        return self.concatenated_latents()[start : start + self.scene_frames[i]]


def validate_record(record: LatentRecord) -> None:
    """Raise ``LatentFormatError`` naming the field when the record breaks the schema."""
    if not isinstance(record.id, str) or not record.id:
        raise LatentFormatError(f"latents record id must be a non-empty str, got {record.id!r}")
    lat, emb, mask = record.latents, record.text_embeds, record.text_mask
    where = f"latents record {record.id!r}"
    frames = record.scene_frames
    if lat.ndim == 4 and frames is not None:
        if sum(frames) != lat.shape[0]:
            raise LatentFormatError(
                f"{where}: scene_frames {frames} sum to {sum(frames)} frames but the latents "
                f"(sum_i F_i, h, w, C) have {lat.shape[0]}"
            )
    elif lat.ndim != 5:
        raise LatentFormatError(
            f"{where}: latents must be (S, F, h, w, C), or (sum_i F_i, h, w, C) with "
            f"scene_frames, got {lat.shape}"
        )
    elif frames != (lat.shape[1],) * lat.shape[0]:
        raise LatentFormatError(
            f"{where}: scene_frames {frames} disagree with latents of shape {lat.shape}"
        )
    if lat.dtype.name not in _FLOAT_DTYPES:
        raise LatentFormatError(f"{where}: latents dtype must be float16/float32, got {lat.dtype}")
    num_scenes = len(frames)
    if num_scenes < 1 or min(lat.shape) < 1:
        raise LatentFormatError(f"{where}: latents has an empty axis: {lat.shape}")
    if emb.ndim != 3 or emb.shape[0] != num_scenes:
        raise LatentFormatError(
            f"{where}: text_embeds must be (S={num_scenes}, T, D), got {emb.shape}"
        )
    if emb.dtype.name not in _FLOAT_DTYPES:
        raise LatentFormatError(
            f"{where}: text_embeds dtype must be float16/float32, got {emb.dtype}"
        )
    if mask.shape != emb.shape[:2] or mask.dtype != np.bool_:
        raise LatentFormatError(
            f"{where}: text_mask must be bool {emb.shape[:2]}, got {mask.dtype} {mask.shape}"
        )
    if not mask.any(axis=1).all():
        raise LatentFormatError(f"{where}: a scene's text_mask has no real token")
    if len(record.captions) != num_scenes:
        raise LatentFormatError(f"{where}: {len(record.captions)} captions for {num_scenes} scenes")
    for i, caption in enumerate(record.captions):
        if not isinstance(caption, str) or not caption.strip():
            raise LatentFormatError(f"{where}: caption {i} is empty or not a str: {caption!r}")
    for key, value in record.meta.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
            raise LatentFormatError(f"{where}: meta[{key!r}] must be a str/int/float scalar")


def _pack_array(x: np.ndarray) -> dict[str, Any]:
    x = np.ascontiguousarray(x)
    return {"dtype": x.dtype.newbyteorder("<").str, "shape": list(x.shape), "data": x.tobytes()}


def _unpack_array(packed: Any, field: str) -> np.ndarray:
    try:
        dtype = np.dtype(packed["dtype"])
        shape = tuple(int(d) for d in packed["shape"])
        data = packed["data"]
        return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    except (KeyError, TypeError, ValueError) as e:
        raise LatentFormatError(f"latents record field {field!r} is not a packed array: {e}") from e


def encode_record(record: LatentRecord) -> bytes:
    """LatentRecord -> bytes (msgpack, schema version ``LATENTS_FORMAT_VERSION``)."""
    validate_record(record)
    return msgpack.packb(
        {
            "format": LATENTS_FORMAT,
            "version": LATENTS_FORMAT_VERSION,
            "id": record.id,
            "captions": list(record.captions),
            "scene_frames": list(record.scene_frames),
            "latents": _pack_array(record.latents),
            "text_embeds": _pack_array(record.text_embeds),
            "text_mask": _pack_array(record.text_mask),
            "meta": dict(record.meta),
        },
        use_bin_type=True,
    )


def _unpack_record(data: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(data, raw=False)
    except Exception as e:  # msgpack raises several unrelated exception types
        raise LatentFormatError(f"latents record is not valid msgpack: {e}") from e
    if not isinstance(obj, dict) or obj.get("format") != LATENTS_FORMAT:
        raise LatentFormatError("record is not an m2dit latents record (bad 'format' field)")
    version = obj.get("version")
    if version not in READABLE_VERSIONS:
        raise LatentFormatError(
            f"latents record version {version!r} is not supported (reader knows "
            f"{READABLE_VERSIONS})"
        )
    missing = {"id", "captions", "latents", "text_embeds", "text_mask"} - set(obj)
    if version >= 2:
        missing |= {"scene_frames"} - set(obj)
    if missing:
        raise LatentFormatError(f"latents record misses fields {sorted(missing)}")
    return obj


def record_scene_frames(data: bytes) -> tuple[int, ...]:
    """The (S,) latent frames per scene of an encoded record, without building its arrays
    (for bucketing: read once per record at start-up). Raises ``LatentFormatError``."""
    obj = _unpack_record(data)
    try:
        if "scene_frames" in obj:
            frames = tuple(int(f) for f in obj["scene_frames"])
        else:
            shape = obj["latents"]["shape"]
            frames = (int(shape[1]),) * int(shape[0])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise LatentFormatError(f"latents record has no readable scene frame counts: {e}") from e
    if not frames or min(frames) <= 0:
        raise LatentFormatError(f"latents record has bad scene_frames {frames}")
    return frames


def decode_record(data: bytes) -> LatentRecord:
    """bytes -> LatentRecord; raises ``LatentFormatError`` on a foreign or newer record."""
    obj = _unpack_record(data)
    frames = obj.get("scene_frames")
    if frames is not None and not isinstance(frames, list):
        raise LatentFormatError(f"latents record field 'scene_frames' must be a list: {frames!r}")
    return LatentRecord(
        id=obj["id"],
        captions=tuple(obj["captions"]),
        latents=_unpack_array(obj["latents"], "latents"),
        text_embeds=_unpack_array(obj["text_embeds"], "text_embeds"),
        text_mask=_unpack_array(obj["text_mask"], "text_mask"),
        meta=obj.get("meta") or {},
        scene_frames=None if frames is None else tuple(frames),
    )


def write_latent_shard(path: str | os.PathLike, records: Iterable[LatentRecord]) -> int:
    """Write records to one ArrayRecord file at ``path``; returns the number written."""
    from array_record.python.array_record_module import ArrayRecordWriter

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = ArrayRecordWriter(path, ARRAY_RECORD_OPTIONS)
    count = 0
    try:
        for record in records:
            writer.write(encode_record(record))
            count += 1
    finally:
        writer.close()
    return count


def read_latent_shard(path: str | os.PathLike) -> Iterator[LatentRecord]:
    """Yield the decoded records of one shard in order."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(os.fspath(path))
    try:
        for i in range(reader.num_records()):
            yield decode_record(reader.read([i])[0])
    finally:
        reader.close()


def expand_shard_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """A directory, a glob pattern, a file or a list of them -> sorted shard file paths."""
    import glob

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            files += sorted(
                os.path.join(p, f)
                for f in os.listdir(p)
                if ".array_record" in f or f.endswith(".ar")
            )
        elif any(c in p for c in "*?["):
            files += sorted(glob.glob(p))
        else:
            files.append(p)
    if not files:
        raise ValueError(f"no latents shards found at {paths!r}")
    for f in files:
        if not os.path.isfile(f):
            raise ValueError(f"latents shard {f!r} does not exist")
    return files


class LatentShardSource:
    """grain random-access source over latents shards; ``source[i]`` -> raw record bytes.

    Decoding is left to the pipeline's map so that a corrupt record can be counted and
    skipped like any other bad input (``decode_record`` raises ``LatentFormatError``).
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]):
        import grain

        self.paths = expand_shard_paths(paths)
        self._source = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> bytes:
        return self._source[index]

    def __repr__(self) -> str:
        return f"LatentShardSource({len(self.paths)} shards, {len(self)} records)"
