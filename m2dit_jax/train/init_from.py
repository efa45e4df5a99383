"""``config.init_from``: where a fresh run's weights come from (applied only when the workdir
has no checkpoint to resume).

``init_from`` may name, and ``resolve_init_from`` tells them apart:

  * a diffusers pipeline folder (``model_index.json`` + ``transformer/``)   -> its transformer
  * a diffusers ``CogVideoXTransformer3DModel`` folder (``config.json`` + safetensors)
  * our converted params folder (``launch.convert`` / ``save_params``: ``config.json`` with
    format ``m2dit_params`` + ``params/``)
  * a training workdir (``checkpoints/``): its newest step, or ``WORKDIR@STEP``, or the step
    folder ``WORKDIR/checkpoints/STEP`` itself. Weights only: ``config.init_from_weights``
    picks ``"ema"`` (default) or ``"params"``; optimizer state, step and data position start
    fresh. This is the stage 1 -> stage 2 hand-off: one config line.

Every source must match the config's model (paths, shapes, dtypes of the parameters);
a mismatch is an error naming the differences.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

INIT_WEIGHTS = ("ema", "params")

# Model fields that describe how to run, not what the weights are: taken from our config when
# the architecture comes from a weights folder.
RUNTIME_MODEL_FIELDS = (
    "dtype",
    "param_dtype",
    "remat",
    "scan_layers",
    "attention_backend",
    "attention_options",
    "text_pad_to",
    "mask_mode",
)
# Grid fields a folder may state differently (positions are computed for any grid).
_GRID_FIELDS = ("sample_height", "sample_width", "sample_frames")


def check_loaded_config(config: ml_collections.ConfigDict, loaded: Any, where: str) -> None:
    """Raises ValueError naming every architecture field of ``where`` that differs."""
    mismatched = [
        f"model.{k}={config.model[k]!r} but {where} has {loaded[k]!r}"
        for k in config.model.keys()
        if k in loaded
        and k not in RUNTIME_MODEL_FIELDS
        and k not in _GRID_FIELDS
        and loaded[k] != config.model[k]
    ]
    if mismatched:
        raise ValueError("init_from does not match the config: " + "; ".join(mismatched))


@dataclasses.dataclass(frozen=True)
class InitSource:
    kind: str  # "diffusers" | "params" | "checkpoint"
    path: str  # transformer folder / params folder / checkpoint step folder
    step: int | None = None


def _is_diffusers_transformer(path: str) -> bool:
    if not os.path.isfile(os.path.join(path, "config.json")):
        return False
    return any(
        n.endswith(".safetensors") or n.endswith(".safetensors.index.json")
        for n in os.listdir(path)
    )


def _checkpoint_steps(checkpoints: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())


def resolve_init_from(init_from: str) -> InitSource:
    """Classifies ``init_from``; raises ValueError naming what was expected when it fits none."""
    path, step = init_from, None
    match = re.fullmatch(r"(.*)@(\d+)", init_from)
    if match and not os.path.exists(init_from):
        path, step = match.group(1), int(match.group(2))
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise ValueError(f"init_from={init_from!r}: {path} is not a directory")
    if os.path.isfile(os.path.join(path, "model_index.json")):
        transformer = os.path.join(path, "transformer")
        if not _is_diffusers_transformer(transformer):
            raise ValueError(
                f"init_from={init_from!r} is a pipeline folder but {transformer} holds no "
                "diffusers transformer (config.json + *.safetensors)"
            )
        return InitSource("diffusers", transformer)
    config_path = os.path.join(path, "config.json")
    if os.path.isfile(config_path) and os.path.isdir(os.path.join(path, "params")):
        with open(config_path) as f:
            if json.load(f).get("format") == "m2dit_params":
                return InitSource("params", path)
    if _is_diffusers_transformer(path):
        return InitSource("diffusers", path)
    parent = os.path.basename(os.path.dirname(path))
    if parent == "checkpoints" and os.path.basename(path).isdigit():
        return InitSource("checkpoint", path, int(os.path.basename(path)))
    checkpoints = os.path.join(path, "checkpoints")
    if os.path.isdir(checkpoints):
        steps = _checkpoint_steps(checkpoints)
        if not steps:
            raise ValueError(f"init_from={init_from!r}: {checkpoints} holds no checkpoint")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise ValueError(
                f"init_from={init_from!r}: no step {step} in {checkpoints} (has {steps})"
            )
        return InitSource("checkpoint", os.path.join(checkpoints, str(step)), step)
    raise ValueError(
        f"init_from={init_from!r} is none of: a diffusers pipeline folder (model_index.json), "
        "a diffusers transformer folder (config.json + safetensors), an m2dit params folder "
        "(launch.convert), a training workdir (checkpoints/) or WORKDIR@STEP"
    )


def restore_checkpoint_weights(step_dir: str, which: str, target: Any) -> Any:
    """Restores only ``state[which]`` ("ema" | "params") of a checkpoint step folder onto
    ``target`` (ShapeDtypeStructs with shardings); nothing else is read."""
    from m2dit_jax.train.checkpointing import CheckpointMismatch, structure_differences

    if which not in INIT_WEIGHTS:
        raise ValueError(f"init_from_weights={which!r} must be one of {INIT_WEIGHTS}")
    state_dir = os.path.join(step_dir, "state")
    checkpointer = ocp.PyTreeCheckpointer()
    meta = checkpointer.metadata(state_dir)
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)
    if tree is None:
        tree = getattr(meta, "tree", meta)
    if which not in tree:
        raise ValueError(f"{state_dir} has no {which!r} entry (has {sorted(tree)})")
    differences = structure_differences({which: tree[which]}, {which: target})
    if differences:
        raise CheckpointMismatch(
            f"init_from checkpoint {step_dir} does not match the config's model:\n  "
            + "\n  ".join(differences)
        )
    item = {which: target}
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), item)
    restored = checkpointer.restore(
        state_dir,
        args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
    )
    return restored[which]


def load_init_params(config: ml_collections.ConfigDict, mesh, program) -> tuple[Any, str]:
    """(params as a pure dict on the program's shardings, a description) from init_from."""
    source = resolve_init_from(str(config.init_from))
    target = program.abstract_state["params"]
    if source.kind == "checkpoint":
        which = str(config.get("init_from_weights", "ema"))
        params = restore_checkpoint_weights(source.path, which, target)
        return params, f"{which} of {source.path}"
    from flax import nnx

    runtime = {k: config.model[k] for k in RUNTIME_MODEL_FIELDS if k in config.model}
    if "attention_options" in runtime:
        runtime["attention_options"] = dict(runtime["attention_options"])
    with jax.set_mesh(mesh):
        if source.kind == "diffusers":
            from m2dit_jax.convert import load_diffusers_transformer

            model = load_diffusers_transformer(source.path, mesh=mesh, **runtime)
        else:
            from m2dit_jax.convert import load_params

            model = load_params(source.path, mesh=mesh, **runtime)
    check_loaded_config(config, model.config, source.path)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    del model
    return jax.device_put(params, program.state_shardings["params"]), source.path
