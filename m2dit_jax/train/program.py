"""The one builder of the train program: loss, abstract state, batch spec and the jitted step.

Used by the trainer (``train_and_evaluate``), the ahead-of-time tool (``launch/compile.py``)
and ``benchmarks/train.py``, so the program they compile, measure and run is the same:

    program = build_train_program(config, mesh)             # nothing allocated yet
    step = program.step_for(batch_shardings(mesh, batch))   # jitted, state donated
    state, metrics = step(state, batch)

``program.abstract_state`` (ShapeDtypeStructs with shardings) is the restore target of a
checkpoint and the argument of ``step.lower`` for AOT compilation.

With ``config.lora.rank > 0`` the same builder makes the LoRA program (``program.lora`` is the
``LoraSpec``): the state holds the frozen weights once under ``"base"`` and the adapters (with
their AdamW moments and EMA) under ``"params"`` / ``"opt_state"`` / ``"ema"``; the step merges
them inside the jit (``m2dit_jax.train.lora``). ``init_state``, ``weights_target``,
``eval_parts`` and ``eval_view`` hide the difference from the trainer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from m2dit_jax.train import lora as lora_lib
from m2dit_jax.train.optimizer import make_optimizer
from m2dit_jax.train.state import ModelParts, abstract_train_state, init_train_state
from m2dit_jax.train.step import batch_shardings, make_train_step


def make_schedule(config: ml_collections.ConfigDict):
    """The training ``CogVideoXSchedule`` of the ``diffusion`` section."""
    from m2dit_jax.diffusion import CogVideoXSchedule

    d = config.diffusion
    return CogVideoXSchedule.create(
        snr_shift_scale=float(d.snr_shift_scale), num_train_timesteps=int(d.num_train_timesteps)
    )


def make_loss(config: ml_collections.ConfigDict, *, held_out: bool = False) -> Callable[..., Any]:
    """``loss(model, batch, rng) -> (loss, metrics)`` from the ``diffusion`` section; with
    ``held_out`` the deterministic evaluation loss (``eval_loss_fn``: fixed timesteps, noise
    from the key, no caption dropout)."""
    from m2dit_jax.diffusion import eval_loss_fn, loss_fn

    d = config.diffusion
    options = dict(
        schedule=make_schedule(config),
        num_scenes=int(config.data.num_scenes),
        p_cond=float(d.p_cond),
        target_scene=str(d.target_scene),
        cond_mask_mode=str(d.get("cond_mask_mode", "mask2dit")),
    )
    if held_out:
        return functools.partial(eval_loss_fn, **options)
    return functools.partial(
        loss_fn,
        caption_dropout=float(d.caption_dropout),
        timestep_sampling=str(d.get("timestep_sampling", "uniform")),
        logit_mean=float(d.get("logit_mean", 0.0)),
        logit_std=float(d.get("logit_std", 1.0)),
        loss_weighting=str(d.get("loss_weighting", "none")),
        min_snr_gamma=float(d.get("min_snr_gamma", 5.0)),
        **options,
    )


def abstract_params(model_config: ml_collections.ConfigDict, mesh: Mesh):
    """(ModelParts, params as ShapeDtypeStructs carrying their NamedShardings); allocates
    nothing, so a 5B model's program can be built on a laptop."""
    from m2dit_jax.model import Mask2DiT, param_shardings

    abstract_model = nnx.eval_shape(lambda: Mask2DiT(model_config, rngs=nnx.Rngs(0)))
    graphdef, params_state, rest = nnx.split(abstract_model, nnx.Param, ...)
    shardings = nnx.to_pure_dict(param_shardings(params_state, mesh))
    shapes = nnx.to_pure_dict(params_state)
    params = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )
    return ModelParts(graphdef, rest), params


def batch_spec(config: ml_collections.ConfigDict, *, batch_size: int | None = None):
    """Host batch shapes of ``config`` as ShapeDtypeStructs (the keys the step reads):
    latents (B, S*F, H, W, C) f32, text_embeds (B, S*T, D) f32, cond (B, S) bool."""
    m = config.model
    b = int(batch_size or config.train.batch_size)
    s = int(config.data.num_scenes)
    return {
        "latents": jax.ShapeDtypeStruct(
            (
                b,
                s * int(m.sample_frames),
                int(m.sample_height),
                int(m.sample_width),
                int(m.in_channels),
            ),
            jnp.float32,
        ),
        "text_embeds": jax.ShapeDtypeStruct((b, s * int(m.text_len), int(m.text_dim)), jnp.float32),
        "cond": jax.ShapeDtypeStruct((b, s), jnp.bool_),
    }


@dataclasses.dataclass
class TrainProgram:
    """Everything the train step is made of, for one config on one mesh."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    parts: ModelParts
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    loss: Callable[..., Any]
    abstract_state: Any  # ShapeDtypeStructs with shardings
    state_shardings: Any
    lora: lora_lib.LoraSpec | None = None
    model_params: Any = None  # the full model's abstract params (the weights init_from fills)

    def step_for(
        self,
        batch_sharding: Any,
        *,
        donate: bool = True,
        scene_frames: tuple[int, ...] | None = None,
        samples: tuple[int, ...] | None = None,
    ):
        """The jitted ``step(state, batch) -> (state, metrics)`` for batches sharded so;
        ``scene_frames``: the batches' per-scene latent frames (scenes of their own lengths;
        one compiled step per distinct tuple), None = equal scenes; ``samples``: packed rows'
        scenes per packed sample (one compiled step per packing plan)."""
        loss = self.loss
        if scene_frames is not None:
            loss = functools.partial(loss, scene_frames=tuple(scene_frames))
        if samples is not None:
            loss = functools.partial(loss, samples=tuple(samples))
        return make_train_step(
            self.parts,
            self.tx,
            self.lr_schedule,
            loss,
            state_shardings=self.state_shardings,
            batch_sharding=batch_sharding,
            grad_accum_steps=int(self.config.optim.grad_accum_steps),
            ema_decay=float(self.config.optim.ema_decay),
            donate=donate,
            lora=self.lora,
        )

    # ---- what the trainer needs to know about LoRA (identity for full fine-tuning)

    def weights_target(self) -> Any:
        """A program-like view whose ``abstract_state["params"]`` / ``state_shardings
        ["params"]`` are the full model's weights: what ``init_from`` loads."""
        if self.lora is None:
            return self
        shardings = jax.tree.map(lambda x: x.sharding, self.model_params)
        return dataclasses.replace(
            self,
            abstract_state={"params": self.model_params},
            state_shardings={"params": shardings},
        )

    def init_state(self, params: Any, seed: int) -> dict[str, Any]:
        """The fresh train state (step 0) around the model weights ``params`` (sharded):
        LoRA keeps them as the frozen base and creates the adapters from the "lora" stream."""
        if self.lora is None:
            return init_train_state(params, self.tx, self.mesh, seed)[0]
        abstract = self.abstract_state["params"]
        shardings = self.state_shardings["params"]
        adapters = jax.jit(
            lambda: lora_lib.init_adapters(self.lora, abstract, seed), out_shardings=shardings
        )()
        base = jax.jit(
            lambda p: lora_lib.cast_base(self.lora, p),
            out_shardings=self.state_shardings["base"],
            donate_argnums=(0,),
        )(params)
        return init_train_state(adapters, self.tx, self.mesh, seed, base=base)[0]

    def eval_parts(self) -> Any:
        """(parts, param shardings) for the held-out evaluation's jit."""
        if self.lora is None:
            return self.parts, self.state_shardings["params"]
        sh = {"base": self.state_shardings["base"], "lora": self.state_shardings["params"]}
        return lora_lib.LoraParts(self.parts, self.lora), sh

    def eval_view(self, state: dict[str, Any]) -> dict[str, Any]:
        """``{"params", "ema"}`` as the evaluation binds them (LoRA: each on the base)."""
        if self.lora is None:
            return state
        base = state["base"]
        return {
            "params": {"base": base, "lora": state["params"]},
            "ema": {"base": base, "lora": state["ema"]},
        }

    def abstract_batch(self, batch_size: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
        """``batch_spec`` with the step's batch shardings attached (for ``step.lower``)."""
        host = batch_spec(self.config, batch_size=batch_size)
        sh = batch_shardings(self.mesh, host)
        return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh[k]) for k, v in host.items()}


def build_train_program(config: ml_collections.ConfigDict, mesh: Mesh) -> TrainProgram:
    """The train program of ``config`` on ``mesh`` (abstract: nothing is allocated)."""
    parts, params = abstract_params(config.model, mesh)
    tx, lr_schedule = make_optimizer(config.optim, int(config.train.num_steps))
    spec = lora_lib.lora_spec(config)
    if spec is None:
        state, shardings = abstract_train_state(params, tx, mesh)
    else:
        adapters = lora_lib.abstract_adapters(spec, params)
        base = lora_lib.base_abstract(spec, params)
        state, shardings = abstract_train_state(adapters, tx, mesh, base=base)
    return TrainProgram(
        config=config,
        mesh=mesh,
        parts=parts,
        tx=tx,
        lr_schedule=lr_schedule,
        loss=make_loss(config),
        abstract_state=state,
        state_shardings=shardings,
        lora=spec,
        model_params=params,
    )
