"""Reading PyTorch-layout checkpoints (safetensors) into NNX modules, with strict key checks.

Both frozen encoders keep their parameter paths identical to the PyTorch state-dict names
(``encoder.down_blocks.0.resnets.0.conv1.conv.weight`` is the NNX path
``('encoder', 'down_blocks', 0, 'resnets', 0, 'conv1', 'conv', 'weight')``), so a checkpoint
maps onto a module by joining paths with dots; only the layout of each tensor changes
(torch conv/linear weights are transposed to channels-last / (in, out)).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx


def read_config(folder: str | os.PathLike, name: str = "config.json") -> dict:
    """The JSON config of a diffusers/transformers model folder."""
    path = os.path.join(os.fspath(folder), name)
    if not os.path.isfile(path):
        raise ValueError(f"no {name} in {os.fspath(folder)!r}")
    with open(path) as f:
        return json.load(f)


def safetensors_files(folder: str | os.PathLike) -> list[str]:
    """The weight files of a model folder: from its ``*.safetensors.index.json`` if present,
    else every ``*.safetensors`` file in it (a single-file or a sharded checkpoint)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"model folder {folder!r} does not exist")
    names = sorted(os.listdir(folder))
    indexes = [n for n in names if n.endswith(".safetensors.index.json")]
    if indexes:
        with open(os.path.join(folder, indexes[0])) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = [n for n in names if n.endswith(".safetensors")]
    if not files:
        raise ValueError(f"no .safetensors weights in {folder!r}")
    paths = [os.path.join(folder, n) for n in files]
    for p in paths:
        if not os.path.isfile(p):
            raise ValueError(f"weight shard {p!r} named by the index is missing")
    return paths


def load_safetensors(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a model folder as numpy arrays (bf16 stays ml_dtypes.bfloat16)."""
    from safetensors import safe_open

    tensors: dict[str, np.ndarray] = {}
    for path in safetensors_files(folder):
        with safe_open(path, framework="numpy") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors


def torch_to_jax_layout(value: np.ndarray, *, is_embedding: bool = False) -> np.ndarray:
    """Torch layout -> ours: conv (O, I, *k) -> (*k, I, O); linear (O, I) -> (I, O);
    embedding tables (N, D) unchanged."""
    if value.ndim >= 3:
        return np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
    if value.ndim == 2 and not is_embedding:
        return value.T
    return value


def param_names(module: nnx.Module) -> dict[str, nnx.Param]:
    """Dotted torch-style name -> Param variable, for every parameter of ``module``."""
    names = {}
    for path, var in nnx.graph.iter_graph(module):
        if isinstance(var, nnx.Param):
            names[".".join(str(p) for p in path)] = var
    return names


def assign_torch_state(
    module: nnx.Module,
    tensors: Mapping[str, np.ndarray],
    *,
    what: str,
    rename: Callable[[str], str | None] = lambda k: k,
    is_embedding: Callable[[str], bool] = lambda name: False,
    param_dtype=jnp.float32,
) -> None:
    """Copy a torch state dict into ``module`` in place, converting layouts.

    ``rename`` maps a checkpoint key to the module's dotted name (None = ignore the key);
    ``is_embedding(name)`` marks (N, D) lookup tables that keep their layout.
    Raises ValueError naming missing keys, unexpected keys and shape mismatches.
    """
    params = param_names(module)
    renamed: dict[str, np.ndarray] = {}
    unexpected = []
    for key, value in tensors.items():
        name = rename(key)
        if name is None:
            continue
        if name in params:
            renamed[name] = value
        else:
            unexpected.append(key)
    missing = sorted(set(params) - set(renamed))
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {sorted(unexpected)}")
    converted = {}
    for name, value in renamed.items():
        value = torch_to_jax_layout(np.asarray(value), is_embedding=is_embedding(name))
        want = tuple(params[name].shape)
        if tuple(value.shape) != want:
            problems.append(f"{name}: checkpoint shape {value.shape} (converted) != model {want}")
        converted[name] = value
    if problems:
        raise ValueError(f"{what} checkpoint does not match the model: " + "; ".join(problems))
    for name, value in converted.items():
        # set_value (not [...] =) also fills abstract placeholders built with seed=None.
        params[name].set_value(jnp.asarray(value.astype(np.float32), dtype=param_dtype))


def jax_to_torch_layout(value: np.ndarray, *, is_embedding: bool = False) -> np.ndarray:
    """Inverse of ``torch_to_jax_layout``."""
    if value.ndim >= 3:
        return np.transpose(value, (value.ndim - 1, value.ndim - 2) + tuple(range(value.ndim - 2)))
    if value.ndim == 2 and not is_embedding:
        return value.T
    return value


def save_torch_state(
    module: nnx.Module,
    folder: str | os.PathLike,
    config: Mapping,
    *,
    weights_name: str,
    is_embedding: Callable[[str], bool] = lambda name: False,
) -> None:
    """Write ``module`` as a PyTorch-layout folder: ``config.json`` + one safetensors file
    (float32), loadable by diffusers/transformers and by our loaders."""
    from safetensors.numpy import save_file

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    tensors = {
        name: np.ascontiguousarray(
            jax_to_torch_layout(np.asarray(var[...], np.float32), is_embedding=is_embedding(name))
        )
        for name, var in param_names(module).items()
    }
    save_file(tensors, os.path.join(folder, weights_name), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(dict(config), f, indent=2)
