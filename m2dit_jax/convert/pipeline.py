"""Writing a diffusers transformer folder straight from flat parameter arrays.

``launch.export`` restores a checkpoint's EMA (or raw) parameters as a flat ``{"a/b/kernel":
numpy array}`` dict (NNX state paths joined by "/"). ``save_transformer_from_flat`` maps those
to diffusers' ``CogVideoXTransformer3DModel`` tensors with the same rules as
``save_diffusers_transformer`` — one tensor at a time, no model object and no device copy, so
host memory stays at the restored arrays plus one shard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import jax.numpy as jnp
import ml_collections
import numpy as np

from m2dit_jax.convert.diffusers import CONFIG_NAME, parse_size
from m2dit_jax.convert.mapping import config_to_diffusers, rules
from m2dit_jax.convert.safetensors_io import write_folder


def _key(rule, layer: int | None, scanned: bool) -> str:
    if layer is None:
        path = rule.ours
    elif scanned:
        path = ("blocks",) + rule.ours
    else:
        path = ("blocks", layer) + rule.ours
    return "/".join(str(p) for p in path)


def expected_keys(config: ml_collections.ConfigDict) -> set[str]:
    """The flat parameter keys a Mask2DiT with ``config`` has."""
    out = set()
    for rule in rules(config):
        if rule.per_block and not config.scan_layers:
            out.update(_key(rule, i, False) for i in range(config.num_layers))
        else:
            out.add(_key(rule, 0 if rule.per_block else None, config.scan_layers))
    return out


def save_transformer_from_flat(
    params: dict[str, np.ndarray],
    config: ml_collections.ConfigDict,
    path: str,
    *,
    dtype: str | None = None,
    max_shard_size: int | str = "10GB",
) -> list[str]:
    """Writes ``params`` (flat, our layout) as a diffusers transformer folder.

    ``dtype`` "float32" / "bfloat16" casts the stored tensors (default: as given). Missing,
    unexpected or mis-shaped parameters are a ValueError naming them. Returns the files.
    """
    want = expected_keys(config)
    missing, unexpected = sorted(want - set(params)), sorted(set(params) - want)
    if missing or unexpected:
        raise ValueError(
            f"parameters do not match the model config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    out_dtype = np.dtype(jnp.dtype(dtype)) if dtype is not None else None
    num_layers = config.num_layers

    def cast(array: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(array)
        return array if out_dtype is None else array.astype(out_dtype)

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        for rule in rules(config):
            if not rule.per_block:
                yield rule.theirs, cast(rule.to_theirs(np.asarray(params[_key(rule, None, False)])))
                continue
            for layer in range(num_layers):
                if config.scan_layers:
                    stacked = params[_key(rule, 0, True)]
                    if stacked.shape[0] != num_layers:
                        raise ValueError(
                            f"{_key(rule, 0, True)} stacks {stacked.shape[0]} layers, config "
                            f"says {num_layers}"
                        )
                    value = np.asarray(stacked[layer])
                else:
                    value = np.asarray(params[_key(rule, layer, False)])
                yield rule.theirs.format(i=layer), cast(rule.to_theirs(value))

    os.makedirs(path, exist_ok=True)
    files = write_folder(path, tensors(), parse_size(max_shard_size))
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config_to_diffusers(config), f, indent=2)
    return files
