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


class SafetensorsFolder(Mapping):
    """The tensors of a model folder, read one at a time on access.

    ``folder[key]`` opens the tensor's file, reads that tensor only (numpy; bf16 stays
    ml_dtypes.bfloat16) and closes it again — a file kept mapped would keep every page read
    so far resident — and ``shape(key)`` comes from the headers read once. Loading a module
    through this mapping keeps the host peak at the module plus one tensor, not twice the
    checkpoint. Duplicate keys across shards are an error naming both files.
    """

    def __init__(self, folder: str | os.PathLike):
        from safetensors import safe_open

        self.folder = os.fspath(folder)
        self._where: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for path in safetensors_files(self.folder):
            with safe_open(path, framework="numpy") as f:
                for key in f.keys():
                    if key in self._where:
                        raise ValueError(
                            f"tensor {key!r} is in both {self._where[key]!r} and {path!r}"
                        )
                    self._where[key] = path
                    self._shapes[key] = tuple(f.get_slice(key).get_shape())

    def __getitem__(self, key: str) -> np.ndarray:
        from safetensors import safe_open

        with safe_open(self._where[key], framework="numpy") as f:
            return f.get_tensor(key)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]


def load_safetensors(folder: str | os.PathLike) -> SafetensorsFolder:
    """The tensors of a model folder (one file or a sharded checkpoint), read lazily."""
    return SafetensorsFolder(folder)


def _jax_layout_shape(shape: tuple[int, ...], *, is_embedding: bool) -> tuple[int, ...]:
    """The shape ``torch_to_jax_layout`` gives a tensor of ``shape``."""
    if len(shape) >= 3:
        return tuple(shape[2:]) + (shape[1], shape[0])
    if len(shape) == 2 and not is_embedding:
        return (shape[1], shape[0])
    return tuple(shape)


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
    keys: dict[str, str] = {}  # module name -> checkpoint key (no tensor read yet)
    unexpected = []
    for key in tensors:
        name = rename(key)
        if name is None:
            continue
        if name in params:
            keys[name] = key
        else:
            unexpected.append(key)
    missing = sorted(set(params) - set(keys))
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {sorted(unexpected)}")
    for name, key in keys.items():  # every shape checked before anything is assigned
        shape = (
            tensors.shape(key) if isinstance(tensors, SafetensorsFolder) else np.shape(tensors[key])
        )
        got = _jax_layout_shape(tuple(shape), is_embedding=is_embedding(name))
        want = tuple(params[name].shape)
        if got != want:
            problems.append(f"{name}: checkpoint shape {got} (converted) != model {want}")
    if problems:
        raise ValueError(f"{what} checkpoint does not match the model: " + "; ".join(problems))
    for name, key in keys.items():  # one tensor in host memory at a time
        value = torch_to_jax_layout(np.asarray(tensors[key]), is_embedding=is_embedding(name))
        # set_value (not [...] =) also fills abstract placeholders built with seed=None.
        params[name].set_value(jnp.asarray(np.asarray(value, np.float32), dtype=param_dtype))
        del value


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
