"""The train state: one pytree of plain dicts, born sharded, and its restore target.

    state = {
      "step":      int32 ()                  optimizer steps taken (skipped ones included)
      "params":    pure dict of arrays       nnx.to_pure_dict(nnx.state(model, nnx.Param))
      "opt_state": optax state               mirrors params where it holds moments
      "ema":       pure dict like params     the exponential moving average (export this)
      "rng":       uint32 key data           the seed's "train" stream; step k uses fold_in(rng, k)
      "nonfinite": {"total", "run"} int32    skipped updates in all / in a row
    }

With LoRA (``config.lora.rank > 0``, ``m2dit_jax.train.lora``) "params" / "opt_state" / "ema"
hold the trainable adapters only and one more entry holds the frozen model weights once:

      "base":      pure dict like the model   never differentiated, updated or averaged

Plain nested dicts (not NNX Variables) keep checkpoints readable by any tool:
``state["ema"]`` restores straight into a model with ``nnx.merge(graphdef, ema, rest)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from m2dit_jax.rng import stream


@dataclasses.dataclass
class ModelParts:
    """What the train step needs to rebuild the NNX model from pure param dicts."""

    graphdef: Any
    rest: Any  # non-Param model state (empty for Mask2DiT), closed over as constants

    def bind(self, params: Any) -> nnx.Module:
        """A model view on ``params`` (pure dict); safe inside jit and grad."""
        return nnx.merge(self.graphdef, params, self.rest)


def split_model(model: nnx.Module) -> tuple[ModelParts, Any]:
    """(ModelParts, params as a pure dict of arrays)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return ModelParts(graphdef, rest), nnx.to_pure_dict(params)


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(
    params: Any, tx: optax.GradientTransformation, mesh: Mesh, base: Any = None
) -> dict[str, Any]:
    """Shardings of every state leaf: moments follow their parameter, scalars replicate;
    ``base`` (LoRA: the frozen weights, arrays or ShapeDtypeStructs) keeps its own."""
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    abstract_opt = jax.eval_shape(tx.init, params)
    rep = _replicated(mesh)
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, param_sh, transform_non_params=lambda _: rep
    )
    out = {
        "step": rep,
        "params": param_sh,
        "opt_state": opt_sh,
        "ema": param_sh,
        "rng": rep,
        "nonfinite": {"total": rep, "run": rep},
    }
    if base is not None:
        out["base"] = jax.tree.map(lambda x: x.sharding, base)
    return out


def _state_builder(tx: optax.GradientTransformation, seed: int):
    def build(p, base=None):
        state = {
            "step": jnp.zeros((), jnp.int32),
            "params": p,
            "opt_state": tx.init(p),
            # A distinct buffer: the EMA must never alias the trained params.
            "ema": jax.tree.map(lambda x: x + jnp.zeros((), x.dtype), p),
            "rng": jax.random.key_data(stream(seed, "train")),
            "nonfinite": {"total": jnp.zeros((), jnp.int32), "run": jnp.zeros((), jnp.int32)},
        }
        if base is not None:
            state["base"] = base
        return state

    return build


def init_train_state(
    params: Any, tx: optax.GradientTransformation, mesh: Mesh, seed: int, base: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Builds the state around already-sharded ``params`` (LoRA: the adapters, plus the
    frozen ``base``, which is donated into the state); returns (state, shardings).

    Optimizer moments and the EMA are created directly with their target shardings (jit
    with out_shardings), never as a host copy.
    """
    shardings = state_shardings(params, tx, mesh, base)
    build = _state_builder(tx, seed)
    if base is None:
        state = jax.jit(build, out_shardings=shardings)(params)
    else:
        state = jax.jit(build, out_shardings=shardings, donate_argnums=(1,))(params, base)
    return state, shardings


def abstract_train_state(
    abstract_params: Any, tx: optax.GradientTransformation, mesh: Mesh, base: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ShapeDtypeStruct state with shardings, shardings) from ShapeDtypeStruct params that
    carry their shardings: nothing is allocated (ahead-of-time compilation, restore targets).
    LoRA: ``abstract_params`` are the adapters and ``base`` the frozen weights."""
    shardings = state_shardings(abstract_params, tx, mesh, base)
    shapes = jax.eval_shape(_state_builder(tx, 0), abstract_params, base)
    return abstract_state(shapes, shardings), shardings


def abstract_state(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with target shardings: the restore target (any mesh shape)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def count_params(params: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
