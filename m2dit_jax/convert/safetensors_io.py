"""Streaming safetensors folders (single file or sharded with an index), bf16 included.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
byte offsets) and the raw little-endian tensor bytes. Reading memory-maps each file, so a
tensor costs host memory only while it is being converted; NumPy's missing bfloat16 comes from
``ml_dtypes`` (a JAX dependency).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


def _read_header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


class SafetensorsFolder:
    """Lazy access to every tensor of a diffusers model folder.

    ``folder`` holds ``diffusion_pytorch_model.safetensors`` or the sharded files plus
    ``diffusion_pytorch_model.safetensors.index.json`` (any single ``*.safetensors`` file is
    accepted too).
    """

    def __init__(self, folder: str):
        self.folder = folder
        index = os.path.join(folder, INDEX_NAME)
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            single = os.path.join(folder, WEIGHTS_NAME)
            if os.path.exists(single):
                files = [WEIGHTS_NAME]
            else:
                files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
            if not files:
                raise ValueError(f"no safetensors weights found in {folder}")
        self._entries: dict[str, tuple[str, int, dict]] = {}
        for name in files:
            path = os.path.join(folder, name)
            header, data_start = _read_header(path)
            for key, info in header.items():
                if key in self._entries:
                    raise ValueError(f"tensor {key!r} appears in two files of {folder}")
                self._entries[key] = (path, data_start, info)

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key][2]["shape"])

    def get(self, key: str) -> np.ndarray:
        """The tensor as a read-only memory-mapped array (no copy until used)."""
        if key not in self._entries:
            raise ValueError(f"tensor {key!r} not found in {self.folder}")
        path, data_start, info = self._entries[key]
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"tensor {key!r} has unsupported dtype {info['dtype']}")
        dtype = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"tensor {key!r} in {path} has inconsistent byte offsets")
        if end == begin:
            return np.zeros(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)


def _write_file(path: str, tensors: list[tuple[str, np.ndarray]]) -> None:
    header, offset = {}, 0
    for name, array in tensors:
        if array.dtype not in _NAMES:
            raise ValueError(f"cannot write tensor {name!r} of dtype {array.dtype}")
        header[name] = {
            "dtype": _NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, array in tensors:
            f.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())


def write_folder(
    folder: str, tensors: Iterable[tuple[str, np.ndarray]], max_shard_bytes: int | None = None
) -> list[str]:
    """Writes tensors as diffusers safetensors, sharded (with an index) above max_shard_bytes.

    Tensors are consumed one shard at a time, so an iterator keeps host memory to one shard.
    Returns the written file names.
    """
    os.makedirs(folder, exist_ok=True)
    for old in os.listdir(folder):  # a previous save must not leave stale shards behind
        if old.startswith("diffusion_pytorch_model") and (
            old.endswith(".safetensors") or old == INDEX_NAME
        ):
            os.remove(os.path.join(folder, old))
    current: list[tuple[str, np.ndarray]] = []
    size = 0
    pending_files: list[tuple[str, list[tuple[str, np.ndarray]]]] = []

    def flush(parts):
        name = f"part-{len(pending_files):05d}.tmp"
        _write_file(os.path.join(folder, name), parts)
        pending_files.append((name, [(n, None) for n, _ in parts]))

    for name, array in _iter(tensors):
        if max_shard_bytes and current and size + array.nbytes > max_shard_bytes:
            flush(current)
            current, size = [], 0
        current.append((name, array))
        size += array.nbytes
    if current or not pending_files:
        flush(current)
    total = len(pending_files)
    written, weight_map = [], {}
    for i, (tmp, entries) in enumerate(pending_files):
        final = (
            WEIGHTS_NAME
            if total == 1
            else (f"diffusion_pytorch_model-{i + 1:05d}-of-{total:05d}.safetensors")
        )
        os.replace(os.path.join(folder, tmp), os.path.join(folder, final))
        written.append(final)
        weight_map.update({n: final for n, _ in entries})
    index = os.path.join(folder, INDEX_NAME)
    if total > 1:
        total_size = sum(os.path.getsize(os.path.join(folder, f)) for f in written)
        with open(index, "w") as f:
            json.dump(
                {"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=2
            )
    elif os.path.exists(index):
        os.remove(index)
    return written


def _iter(tensors: Iterable[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
    seen = set()
    for name, array in tensors:
        if name in seen:
            raise ValueError(f"tensor {name!r} written twice")
        seen.add(name)
        yield name, np.asarray(array)
