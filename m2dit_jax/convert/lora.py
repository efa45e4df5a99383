"""LoRA files in diffusers' CogVideoX layout: export ours, import ours or a third party's.

The file is one safetensors file (``pytorch_lora_weights.safetensors``) of torch-layout
tensors, what ``CogVideoXPipeline.load_lora_weights`` / ``CogVideoXTransformer3DModel.
load_lora_adapter`` (peft) read::

    transformer.transformer_blocks.{i}.attn1.to_q.lora_A.weight    (r, in)
    transformer.transformer_blocks.{i}.attn1.to_q.lora_B.weight    (out, r)

with ``W_torch += scale * lora_B @ lora_A``. Export bakes our ``alpha / r`` into ``lora_B``
and writes peft's adapter config as safetensors metadata (``lora_adapter_metadata``:
``transformer.r``, ``transformer.lora_alpha`` = r, ``transformer.target_modules``), so every
loader — with or without the metadata — applies exactly our update at scale 1.

Import (``lora_deltas`` / ``merge_lora_flat`` / ``merge_lora_into_model``) accepts keys with
or without the ``transformer.`` (or peft's ``base_model.model.``) prefix and ``.default``
adapter names, any ``nn.Linear`` of the transformer (block projections, FF, adaLN linears,
``patch_embed.text_proj``, ``time_embedding.*``, ``norm_out.linear``, ``proj_out``), per-module
ranks, and the scale convention of the file: peft metadata (``lora_alpha`` / ``alpha_pattern``
/ ``use_rslora``), kohya-style ``.alpha`` tensors, or none (scale 1, diffusers' convention).
LoRAs are merged into the weights (no unmerged branch at sampling time).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from m2dit_jax.convert.mapping import rules
from m2dit_jax.convert.safetensors_io import _DTYPES, _NAMES

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"
PREFIX = "transformer"
_KEY = re.compile(
    r"^(?:transformer\.|base_model\.model\.|diffusion_model\.)?(?P<mod>.+?)\."
    r"(?:lora_(?P<ab>[AB])(?:\.default)?\.weight|(?P<alpha>alpha))$"
)


def _block_modules(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Our block module path ("attn/to_q") -> diffusers' module inside a block ("attn1.to_q")."""
    out = {}
    head = "transformer_blocks.{i}."
    for rule in rules(config):
        if rule.per_block and rule.ours[-1] == "kernel":
            out["/".join(rule.ours[:-1])] = rule.theirs[len(head) : -len(".weight")]
    return out


# --------------------------------------------------------------------------- file I/O


def write_lora_file(
    path: str, tensors: dict[str, np.ndarray], metadata: dict[str, Any] | None = None
) -> None:
    """A safetensors file with ``{"format": "pt", "lora_adapter_metadata": json}``."""
    header, offset, order = {}, 0, sorted(tensors)
    for name in order:
        array = tensors[name]
        if array.dtype not in _NAMES:
            raise ValueError(f"cannot write tensor {name!r} of dtype {array.dtype}")
        header[name] = {
            "dtype": _NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    meta = {"format": "pt"}
    if metadata:
        meta[METADATA_KEY] = json.dumps(metadata, indent=2, sort_keys=True)
    header["__metadata__"] = meta
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in order:
            a = tensors[name]
            f.write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())


def read_lora_file(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """(tensors, peft adapter metadata or None) of a LoRA safetensors file (or a folder
    holding ``pytorch_lora_weights.safetensors`` / a single ``*.safetensors``)."""
    if os.path.isdir(path):
        names = [n for n in os.listdir(path) if n.endswith(".safetensors")]
        if WEIGHT_NAME in names:
            names = [WEIGHT_NAME]
        if len(names) != 1:
            raise ValueError(f"--lora {path}: expected one .safetensors file, found {names}")
        path = os.path.join(path, names[0])
    if not os.path.isfile(path):
        raise ValueError(f"LoRA file {path} does not exist")
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(size))
        data = f.read()
    meta = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        dt = _DTYPES[info["dtype"]]
        tensors[name] = np.frombuffer(data[begin:end], dtype=dt).reshape(info["shape"])
    adapter = json.loads(meta[METADATA_KEY]) if meta.get(METADATA_KEY) else None
    if adapter is not None:  # diffusers prefixes the keys with the component name
        adapter = {k.removeprefix(f"{PREFIX}."): v for k, v in adapter.items()}
    return tensors, adapter


# --------------------------------------------------------------------------- export


def lora_state_dict(
    adapters: dict[str, np.ndarray],
    config: ml_collections.ConfigDict,
    *,
    rank: int,
    alpha: float,
    dtype: str = "float32",
    dropout: float = 0.0,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, peft metadata) of our adapters (flat ``{".../attn/to_q/lora_a": array}``,
    scanned ``(L, ...)`` or per block) in diffusers' layout; ``alpha / rank`` baked into B."""
    import jax.numpy as jnp

    modules = _block_modules(config)
    out_dtype = np.dtype(jnp.dtype(dtype))
    scale = float(alpha) / int(rank)
    tensors, targets = {}, []
    pattern = re.compile(r"^blocks/(?:(?P<layer>\d+)/)?(?P<module>.+)/lora_a$")
    for key in sorted(adapters):
        found = pattern.match(key)
        if not found:
            if key.endswith("/lora_b"):
                continue
            raise ValueError(f"unexpected adapter entry {key!r}")
        module = found.group("module")
        if module not in modules:
            raise ValueError(f"adapter {key!r}: {module!r} is not a block Dense module")
        a_all = np.asarray(adapters[key], np.float32)
        b_all = np.asarray(adapters[key[: -len("lora_a")] + "lora_b"], np.float32)
        if found.group("layer") is None:
            layers = list(enumerate(zip(a_all, b_all, strict=True)))
        else:
            layers = [(int(found.group("layer")), (a_all, b_all))]
        for i, (a, b) in layers:
            r = a.shape[-1]
            name = f"transformer_blocks.{i}.{modules[module]}"
            lora_a = a.reshape(-1, r).T  # (r, in)
            lora_b = (scale * b.reshape(r, -1)).T  # (out, r)
            tensors[f"{PREFIX}.{name}.lora_A.weight"] = lora_a.astype(out_dtype)
            tensors[f"{PREFIX}.{name}.lora_B.weight"] = lora_b.astype(out_dtype)
            targets.append(name)
    metadata = {
        f"{PREFIX}.r": int(rank),
        f"{PREFIX}.lora_alpha": int(rank),  # alpha / r already in lora_B: scale 1
        f"{PREFIX}.target_modules": sorted(targets),
        f"{PREFIX}.lora_dropout": float(dropout),  # what training used (no effect at inference)
        f"{PREFIX}.bias": "none",
    }
    return tensors, metadata


def export_lora(
    adapters: dict[str, np.ndarray],
    config: ml_collections.ConfigDict,
    out: str,
    *,
    rank: int,
    alpha: float,
    dtype: str = "float32",
    dropout: float = 0.0,
) -> str:
    """Writes ``out`` (a .safetensors path, or a folder -> ``OUT/pytorch_lora_weights.
    safetensors``); returns the file path."""
    path = out if out.endswith(".safetensors") else os.path.join(out, WEIGHT_NAME)
    tensors, metadata = lora_state_dict(
        adapters, config, rank=rank, alpha=alpha, dtype=dtype, dropout=dropout
    )
    write_lora_file(path, tensors, metadata)
    return path


# --------------------------------------------------------------------------- import


def _theirs_index(config: ml_collections.ConfigDict) -> dict[str, tuple[Any, int | None]]:
    """diffusers Linear module name -> (rule, layer) for every kernel we can merge into."""
    out = {}
    for rule in rules(config):
        if rule.ours[-1] != "kernel" or rule.theirs == "patch_embed.proj.weight":
            continue  # the patch embedding is a Conv2d
        mod = rule.theirs[: -len(".weight")]
        if rule.per_block:
            for i in range(config.num_layers):
                out[mod.format(i=i)] = (rule, i)
        else:
            out[mod] = (rule, None)
    return out


def _module_scale(module: str, rank: int, metadata: dict | None, alphas: dict) -> float:
    if metadata is not None:
        alpha = float(metadata.get("lora_alpha", metadata.get("r", rank)))
        for pattern, value in (metadata.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = float(value)
                break
        denom = math.sqrt(rank) if metadata.get("use_rslora") else rank
        return alpha / denom
    if module in alphas:
        return float(alphas[module]) / rank
    return 1.0


def lora_deltas(
    lora: str | tuple[dict[str, np.ndarray], dict | None],
    config: ml_collections.ConfigDict,
    scale: float = 1.0,
) -> Iterator[tuple[Any, int | None, np.ndarray]]:
    """(rule, layer, delta in our kernel layout, f32) for every module of the LoRA: the file
    (path) or (tensors, metadata); ``scale`` multiplies the file's own scale."""
    tensors, metadata = read_lora_file(lora) if isinstance(lora, str) else lora
    index = _theirs_index(config)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    alphas, unknown = {}, []
    for key, value in tensors.items():
        found = _KEY.match(key)
        if not found:
            unknown.append(key)
            continue
        mod = found.group("mod")
        if found.group("alpha"):
            alphas[mod] = float(np.asarray(value, np.float32).reshape(-1)[0])
        else:
            pairs.setdefault(mod, {})[found.group("ab")] = value
    missing = [m for m in pairs if m not in index]
    if unknown or missing:
        raise ValueError(
            "the LoRA file has entries a CogVideoX transformer cannot take: "
            + ", ".join((unknown + missing)[:8])
            + (" ..." if len(unknown) + len(missing) > 8 else "")
        )
    for mod in sorted(pairs):
        ab = pairs[mod]
        if set(ab) != {"A", "B"}:
            raise ValueError(f"LoRA module {mod} has lora_{sorted(ab)} only (needs A and B)")
        a = np.asarray(ab["A"], np.float32)
        b = np.asarray(ab["B"], np.float32)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"LoRA module {mod}: lora_A {a.shape} / lora_B {b.shape} mismatch")
        s = float(scale) * _module_scale(mod, a.shape[0], metadata, alphas)
        rule, layer = index[mod]
        yield rule, layer, rule.to_ours(s * (b @ a))


def _flat_key(rule, layer: int | None, scanned: bool) -> tuple[str, int | None]:
    """(flat key of the kernel, index into its layer axis or None)."""
    if layer is None:
        return "/".join(rule.ours), None
    if scanned:
        return "/".join(("blocks",) + rule.ours), layer
    return "/".join(("blocks", str(layer)) + rule.ours), None


def merge_lora_flat(
    params: dict[str, np.ndarray],
    config: ml_collections.ConfigDict,
    lora: str | tuple[dict[str, np.ndarray], dict | None],
    scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """A copy of flat params (numpy, our layout) with the LoRA merged (summed in f32)."""
    out = dict(params)
    for rule, layer, d in lora_deltas(lora, config, scale):
        key, i = _flat_key(rule, layer, bool(config.scan_layers))
        w = np.array(out[key]) if out[key] is params[key] else out[key]
        target = w if i is None else w[i]
        if target.shape != d.shape:
            raise ValueError(f"LoRA delta for {key} is {d.shape}, the kernel is {target.shape}")
        merged = (target.astype(np.float32) + d).astype(w.dtype)
        if i is None:
            w = merged
        else:
            w[i] = merged
        out[key] = w
    return out


def merge_lora_into_model(model, lora: str | tuple, scale: float = 1.0) -> int:
    """Merges a LoRA file into an NNX Mask2DiT in place (each kernel keeps its sharding and
    dtype); returns the number of modules merged."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    config = model.config
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    count = 0

    def node(path):
        tree = pure
        for k in path[:-1]:
            tree = tree[k] if k in tree else tree[int(k)]
        return tree

    fns: dict[tuple[str, bool], Any] = {}

    def updater(key: str, w, stacked: bool):
        """One compiled update per kernel (the layer index is traced), keeping w's sharding."""
        if (key, stacked) not in fns:
            sharding = getattr(w, "sharding", None)

            def one(w, d, i):
                target = w[i] if stacked else w
                new = (target.astype(jnp.float32) + d).astype(w.dtype)
                return w.at[i].set(new) if stacked else new

            fns[key, stacked] = jax.jit(one, out_shardings=sharding, donate_argnums=(0,))
        return fns[key, stacked]

    for rule, layer, d in lora_deltas(lora, config, scale):
        key, i = _flat_key(rule, layer, bool(config.scan_layers))
        path = key.split("/")
        parent = node(path)
        w = parent[path[-1]]
        stacked = i is not None
        parent[path[-1]] = updater(key, w, stacked)(w, jnp.asarray(d), jnp.int32(i or 0))
        count += 1
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return count
