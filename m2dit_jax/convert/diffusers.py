"""diffusers ``CogVideoXTransformer3DModel`` folders <-> ``Mask2DiT``.

``load_diffusers_transformer`` streams one tensor at a time from memory-mapped safetensors
(single or sharded with an index), converts it (lossless transposes/reshapes, cast to
``param_dtype``) and places it — directly with its NamedSharding when a mesh is given — so
peak host memory is the largest single (layer-stacked) parameter, not a second model copy.
``save_diffusers_transformer`` is the exact inverse; load -> save -> load is bit-exact.
"""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from m2dit_jax.convert.mapping import Rule, config_from_diffusers, config_to_diffusers, rules
from m2dit_jax.convert.safetensors_io import SafetensorsFolder, write_folder
from m2dit_jax.model.create import param_shardings
from m2dit_jax.model.transformer import Mask2DiT

CONFIG_NAME = "config.json"
# Buffers diffusers may store that are recomputed from the config (never trained).
_DERIVED = ("patch_embed.pos_embedding",)


def resolve_transformer_folder(path: str) -> str:
    """``path`` itself if it holds a config.json, else ``path/transformer`` (a pipeline root)."""
    if os.path.isfile(os.path.join(path, CONFIG_NAME)):
        return path
    sub = os.path.join(path, "transformer")
    if os.path.isfile(os.path.join(sub, CONFIG_NAME)):
        return sub
    raise ValueError(f"{path} is neither a diffusers transformer folder nor a pipeline root")


def _names(rule: Rule, num_layers: int) -> list[str]:
    if rule.per_block:
        return [rule.theirs.format(i=i) for i in range(num_layers)]
    return [rule.theirs]


def _our_path(rule: Rule, layer: int | None, scanned: bool) -> tuple:
    if layer is None:
        return rule.ours
    return ("blocks",) + rule.ours if scanned else ("blocks", layer) + rule.ours


def _short(names) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - 10} more" if len(names) > 10 else ""
    return ", ".join(names[:10]) + more


def load_diffusers_transformer(
    path: str, *, mesh: Mesh | None = None, **config_overrides
) -> Mask2DiT:
    """Builds a Mask2DiT from a diffusers transformer folder (or pipeline root).

    Args:
      path: folder with config.json + diffusion_pytorch_model*.safetensors (or its parent).
      mesh: place every parameter directly onto this mesh with its logical sharding.
      config_overrides: runtime fields of our config (dtype, remat, scan_layers,
        attention_backend, text_pad_to, ...).
    Raises:
      ValueError naming missing / unexpected / mis-shaped tensors or unsupported config values.
    """
    folder = resolve_transformer_folder(path)
    with open(os.path.join(folder, CONFIG_NAME)) as f:
        config = config_from_diffusers(json.load(f), **config_overrides)
    reader = SafetensorsFolder(folder)
    table = rules(config)
    expected = {n for r in table for n in _names(r, config.num_layers)}
    present = set(reader.keys()) - set(_DERIVED)
    missing, unexpected = expected - present, present - expected
    if missing or unexpected:
        raise ValueError(
            f"diffusers checkpoint {folder} does not match the config: "
            f"missing tensors [{_short(missing)}]; unexpected tensors [{_short(unexpected)}]"
        )

    abstract = nnx.eval_shape(lambda: Mask2DiT(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = param_shardings(abstract_state, mesh) if mesh is not None else None
    param_dtype = np.dtype(jnp.dtype(config.param_dtype))
    flat_abstract = dict(nnx.to_flat_state(abstract_state))
    flat_shardings = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
    values = {}

    def convert(rule: Rule, name: str, want: tuple) -> np.ndarray:
        array = rule.to_ours(np.asarray(reader.get(name)))
        if tuple(array.shape) != tuple(want):
            raise ValueError(
                f"tensor {name!r} has shape {reader.shape(name)}, which maps to "
                f"{tuple(array.shape)} but the model expects {tuple(want)}"
            )
        return np.ascontiguousarray(array, dtype=param_dtype)

    def place(key: tuple, host: np.ndarray) -> jax.Array:
        if key in flat_shardings:
            sharding = flat_shardings[key]
            sharding = sharding.get_value() if isinstance(sharding, nnx.Variable) else sharding
            return jax.device_put(host, sharding)
        return jnp.asarray(host)

    for rule in table:
        if rule.per_block and config.scan_layers:
            key = _our_path(rule, 0, True)
            want = flat_abstract[key].shape
            host = np.stack(
                [convert(rule, name, want[1:]) for name in _names(rule, config.num_layers)]
            )
            values[key] = place(key, host)
            del host
            continue
        for layer, name in enumerate(_names(rule, config.num_layers)):
            key = _our_path(rule, layer if rule.per_block else None, config.scan_layers)
            values[key] = place(key, convert(rule, name, flat_abstract[key].shape))

    state = nnx.from_flat_state([(k, v.replace(values[k])) for k, v in flat_abstract.items()])
    return nnx.merge(graphdef, state)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(size: int | str) -> int:
    """``10GB`` / ``500MiB`` / bytes -> bytes (decimal units as in diffusers)."""
    if isinstance(size, int) and size > 0:
        return size
    match = _SIZE.match(str(size))
    if not match:
        raise ValueError(f"max_shard_size must be bytes or like '10GB', got {size!r}")
    unit = match.group(2).upper() if match.group(2) else None
    return int(float(match.group(1)) * _UNITS[unit])


def save_diffusers_transformer(
    model: Mask2DiT,
    path: str,
    *,
    max_shard_size: int | str = "10GB",
    dtype: str | None = None,
) -> list[str]:
    """Writes ``model`` as a diffusers transformer folder (config.json + safetensors).

    Tensors leave the devices one parameter at a time. ``dtype`` ("float32" / "bfloat16")
    casts the stored tensors (default: the parameters' own dtype). Returns the weight files.
    """
    config = model.config
    table = rules(config)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    out_dtype = np.dtype(jnp.dtype(dtype)) if dtype is not None else None

    def host(key) -> np.ndarray:
        return np.asarray(jax.device_get(flat[key].get_value()))

    def tensors():
        for rule in table:
            if rule.per_block and config.scan_layers:
                stacked = host(_our_path(rule, 0, True))
                for layer, name in enumerate(_names(rule, config.num_layers)):
                    yield name, _cast(rule.to_theirs(stacked[layer]), out_dtype)
                del stacked
                continue
            for layer, name in enumerate(_names(rule, config.num_layers)):
                key = _our_path(rule, layer if rule.per_block else None, config.scan_layers)
                yield name, _cast(rule.to_theirs(host(key)), out_dtype)

    os.makedirs(path, exist_ok=True)
    files = write_folder(path, tensors(), parse_size(max_shard_size))
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config_to_diffusers(config), f, indent=2)
    return files


def _cast(array: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    array = np.ascontiguousarray(array)
    return array if dtype is None else array.astype(dtype)
