"""Our own parameter checkpoint: ``DIR/config.json`` (the model config) + ``DIR/params`` (orbax).

The params item is an orbax ``StandardSave`` of the model's ``nnx.Param`` state (pure dict of
arrays), so it restores sharded onto any mesh shape with ``load_params(dir, mesh=...)``. This is
what ``python -m launch.convert`` writes from a diffusers folder and reads to export one.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from m2dit_jax.model.config import get_model_config
from m2dit_jax.model.create import param_shardings
from m2dit_jax.model.transformer import Mask2DiT

FORMAT = "m2dit_params"
VERSION = 1


def save_params(model: Mask2DiT, directory: str) -> str:
    """Writes ``model``'s config and parameters under ``directory`` (must not hold params)."""
    directory = os.path.abspath(directory)
    params_dir = os.path.join(directory, "params")
    if os.path.exists(params_dir):
        raise ValueError(f"{params_dir} already exists; choose an empty output folder")
    os.makedirs(directory, exist_ok=True)
    state = nnx.state(model, nnx.Param).to_pure_dict()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(params_dir, state)
    checkpointer.wait_until_finished()
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(
            {"format": FORMAT, "version": VERSION, "model": model.config.to_dict()}, f, indent=2
        )
    return directory


def read_config(directory: str) -> ml_collections.ConfigDict:
    """The model config stored in a ``save_params`` folder."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{directory} is not an m2dit params folder (no config.json)")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return get_model_config("tiny", **meta["model"])


def load_params(directory: str, *, mesh: Mesh | None = None, **config_overrides) -> Mask2DiT:
    """Restores a Mask2DiT saved by ``save_params`` (optionally sharded onto ``mesh``).

    ``config_overrides`` may change runtime fields (dtype, remat, attention backend); fields
    that change parameter shapes (including scan_layers) must stay as saved.
    """
    config = read_config(directory)
    config.update(config_overrides)
    abstract = nnx.eval_shape(lambda: Mask2DiT(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    if mesh is not None:
        shardings = param_shardings(abstract_state, mesh).to_pure_dict()
    else:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract_state.to_pure_dict())
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state.to_pure_dict(),
        shardings,
    )
    restored = ocp.StandardCheckpointer().restore(
        os.path.join(os.path.abspath(directory), "params"), target
    )
    nnx.replace_by_pure_dict(abstract_state, restored)
    return nnx.merge(graphdef, abstract_state)
