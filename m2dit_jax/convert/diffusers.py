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


# Fields that define the architecture (and therefore the tensors): must agree for model=.
_ARCH_FIELDS = (
    "num_layers",
    "num_heads",
    "head_dim",
    "in_channels",
    "out_channels",
    "patch_size",
    "text_dim",
    "time_embed_dim",
    "positions",
    "mlp_ratio",
)


def load_diffusers_transformer(
    path: str,
    *,
    mesh: Mesh | None = None,
    model: Mask2DiT | None = None,
    positions_convention: str | None = None,
    **config_overrides,
) -> Mask2DiT:
    """Builds (or fills) a Mask2DiT from a diffusers transformer folder (or pipeline root).

    Args:
      path: folder with config.json + diffusion_pytorch_model*.safetensors (or its parent).
      mesh: place every parameter directly onto this mesh with its logical sharding.
      model: an existing Mask2DiT (e.g. from ``create_model(..., mesh=...)``) to load into,
        in place, keeping each parameter's current sharding; its config must describe the same
        architecture. Returned as well.
      positions_convention: "diffusers" (default: today's diffusers tables) or "release"
        (the Mask²DiT release's position tables off the sample grid, see
        ``m2dit_jax.model.positions``); stored in the model config. For a sin-cos (2B)
        checkpoint "release" also selects ``sincos_temporal="stretch"`` unless that is given.
        With ``model=`` it must equal the model's own convention (or be None).
      config_overrides: runtime fields of our config (dtype, remat, scan_layers,
        attention_backend, text_pad_to, ...) when building a new model.
    Raises:
      ValueError naming missing / unexpected / mis-shaped tensors, unsupported config values or
      architecture fields that differ from ``model``'s.
    """
    folder = resolve_transformer_folder(path)
    with open(os.path.join(folder, CONFIG_NAME)) as f:
        diffusers_config = json.load(f)
    if model is not None:
        if config_overrides or mesh is not None:
            raise ValueError("load_diffusers_transformer: pass either model= or mesh/overrides")
        config = model.config
        own = config.get("positions_convention", "diffusers")
        if positions_convention is not None and positions_convention != own:
            raise ValueError(
                f"load_diffusers_transformer: positions_convention={positions_convention!r} "
                f"differs from the model's {own!r} (set it in the model config instead)"
            )
        theirs = config_from_diffusers(diffusers_config)
        differ = [
            f"{k}: checkpoint {theirs[k]!r} vs model {config[k]!r}"
            for k in _ARCH_FIELDS
            if theirs[k] != config[k]
        ]
        if differ:
            raise ValueError(f"checkpoint {folder} does not fit the model: {'; '.join(differ)}")
    else:
        if positions_convention is not None:
            config_overrides["positions_convention"] = positions_convention
            sincos = not diffusers_config.get("use_rotary_positional_embeddings", False)
            if positions_convention == "release" and sincos:
                config_overrides.setdefault("sincos_temporal", "stretch")
        config = config_from_diffusers(diffusers_config, **config_overrides)
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

    if model is not None:
        graphdef, target_state = None, nnx.state(model, nnx.Param)
        targets = dict(nnx.to_flat_state(target_state))
        shardings = {k: v.get_value().sharding for k, v in targets.items()}
    else:
        abstract = nnx.eval_shape(lambda: Mask2DiT(config, rngs=nnx.Rngs(0)))
        graphdef, target_state = nnx.split(abstract)
        targets = dict(nnx.to_flat_state(target_state))
        shardings = {}
        if mesh is not None:
            shardings = dict(nnx.to_flat_state(param_shardings(target_state, mesh)))
    param_dtype = np.dtype(jnp.dtype(config.param_dtype))
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
        if key in shardings:
            return jax.device_put(host, shardings[key])
        return jnp.asarray(host)

    for rule in table:
        if rule.per_block and config.scan_layers:
            key = _our_path(rule, 0, True)
            want = targets[key].shape
            host = np.stack(
                [convert(rule, name, want[1:]) for name in _names(rule, config.num_layers)]
            )
            values[key] = place(key, host)
            del host
            continue
        for layer, name in enumerate(_names(rule, config.num_layers)):
            key = _our_path(rule, layer if rule.per_block else None, config.scan_layers)
            values[key] = place(key, convert(rule, name, targets[key].shape))

    if model is not None:
        for key, variable in targets.items():
            variable.set_value(values[key])
        return model
    state = nnx.from_flat_state([(k, v.replace(values[k])) for k, v in targets.items()])
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
