"""``train_and_evaluate(config, workdir)``: the config-driven, sharded, resumable train loop.

Order of work: multi-host start-up -> config checks (before anything is compiled) -> mesh ->
model born sharded -> optimizer/EMA state born sharded -> data -> restore the newest good
checkpoint (state + data iterator) -> jitted steps with metrics, checkpoints, preemption and
non-finite handling -> final checkpoint and held-out evaluation.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from m2dit_jax.sharding import make_mesh
from m2dit_jax.train import distributed
from m2dit_jax.train.checkpointing import Checkpointer
from m2dit_jax.train.config_checks import check_config, model_layout
from m2dit_jax.train.metrics import MetricsWriter, ProgressBar, peak_tflops_per_device, throughput
from m2dit_jax.train.optimizer import make_optimizer
from m2dit_jax.train.preemption import PreemptionGuard
from m2dit_jax.train.profiler import StepProfiler
from m2dit_jax.train.state import abstract_state, count_params, init_train_state, split_model
from m2dit_jax.train.step import DEVICE_KEYS, batch_shardings, make_train_step

log = logging.getLogger(__name__)

DatasetFactory = Callable[..., Any]


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the last good state was checkpointed."""


# Model fields that describe how to run, not what the weights are: taken from our config when
# the architecture comes from a diffusers folder.
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


def _build_model(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *, resuming: bool):
    """The model born sharded on ``mesh``: converted CogVideoX weights when ``init_from`` names a
    diffusers folder (skipped when resuming: the checkpoint overwrites them), else random init."""
    from m2dit_jax.model import create_model

    with jax.set_mesh(mesh):
        if not config.init_from or resuming:
            return create_model(config.model, seed=int(config.seed), mesh=mesh)
        from m2dit_jax.convert import load_diffusers_transformer

        runtime = {k: config.model[k] for k in RUNTIME_MODEL_FIELDS if k in config.model}
        if "attention_options" in runtime:
            runtime["attention_options"] = dict(runtime["attention_options"])
        model = load_diffusers_transformer(config.init_from, mesh=mesh, **runtime)
    loaded = model.config
    mismatched = [
        f"model.{k}={config.model[k]!r} but {config.init_from} has {loaded[k]!r}"
        for k in config.model.keys()
        if k in loaded
        and k not in RUNTIME_MODEL_FIELDS
        and loaded[k] != config.model[k]
        and k not in ("sample_height", "sample_width", "sample_frames")
    ]
    if mismatched:
        raise ValueError("init_from does not match the config: " + "; ".join(mismatched))
    return model


def _default_dataset_factory(data_config, *, seed, process_index, process_count, batch_size):
    from m2dit_jax.data import make_dataset

    return make_dataset(
        data_config,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        batch_size=batch_size,
    )


def _device_batch(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    missing = [k for k in ("latents", "text_embeds") if k not in batch]
    if missing:
        raise ValueError(
            f"data batches lack {missing} (have {sorted(batch)}): set data.video_encoder / "
            "data.text_encoder or use a latents source"
        )
    return {k: np.asarray(batch[k]) for k in DEVICE_KEYS if k in batch}


def _make_loss(config: ml_collections.ConfigDict):
    from m2dit_jax.diffusion import CogVideoXSchedule, loss_fn

    d = config.diffusion
    schedule = CogVideoXSchedule.create(
        snr_shift_scale=float(d.snr_shift_scale), num_train_timesteps=int(d.num_train_timesteps)
    )
    return functools.partial(
        loss_fn,
        schedule=schedule,
        num_scenes=int(config.data.num_scenes),
        p_cond=float(d.p_cond),
        target_scene=str(d.target_scene),
        caption_dropout=float(d.caption_dropout),
    )


def _flops_per_sample(config: ml_collections.ConfigDict, layout) -> float:
    from m2dit_jax.model.flops import train_flops_per_sample

    return float(train_flops_per_sample(config.model, layout))


def _write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def enable_compilation_cache(directory: str) -> None:
    """Persist every compiled executable under ``directory`` (jax's on-disk cache)."""
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class _Window:
    """Host-side running means of per-step metrics between two log points."""

    def __init__(self):
        self.values: dict[str, list[np.ndarray]] = {}
        self.step_times: list[float] = []
        self.data_times: list[float] = []

    def add(self, metrics: dict[str, Any], step_time: float | None, data_time: float) -> None:
        for k, v in metrics.items():
            self.values.setdefault(k, []).append(np.asarray(v, np.float64))
        if step_time is not None:
            self.step_times.append(step_time)
        self.data_times.append(data_time)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, vs in self.values.items():
            if k in ("learning_rate", "nonfinite_run", "nonfinite_total"):
                out[k] = vs[-1]
            elif k == "skipped":
                out["skipped_in_window"] = np.sum(vs)
            else:
                out[k] = np.mean(np.stack(vs), axis=0)
        if self.step_times:
            out["step_time_s"] = float(np.mean(self.step_times))
        out["data_time_s"] = float(np.mean(self.data_times)) if self.data_times else 0.0
        return out


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    dataset_factory: DatasetFactory | None = None,
) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its newest good checkpoint).

    Args:
      config: a full training config (see ``m2dit_jax.train.defaults``).
      workdir: checkpoints/, tb/, metrics.jsonl, config.json and profile/ go here.
      dataset_factory: replaces ``m2dit_jax.data.make_dataset`` (same keyword signature).

    Returns:
      {"step", "losses" (per step run in this call), "eval" (held-out metrics), "preempted",
       "start_step", "compile_s", "mean_step_time_s", "params"}.
    """
    distributed.initialize(config.distributed)
    if config.train.compilation_cache_dir:
        enable_compilation_cache(config.train.compilation_cache_dir)
    mesh_shape = check_config(
        config, num_devices=jax.device_count(), process_count=jax.process_count()
    )
    devices = jax.devices()[: int(config.mesh.num_devices) or None]
    mesh = make_mesh(mesh_shape, devices)
    workdir = os.path.abspath(workdir)
    _write_config(workdir, config)
    t_cfg = config.train
    num_steps = int(t_cfg.num_steps)
    stop_at = min(int(t_cfg.stop_at_step) or num_steps, num_steps)
    layout = model_layout(config)
    global_batch = int(t_cfg.batch_size)
    dataset_factory = dataset_factory or _default_dataset_factory

    checkpoint_dir = os.path.join(workdir, "checkpoints")
    resuming = os.path.isdir(checkpoint_dir) and any(
        d.isdigit() for d in os.listdir(checkpoint_dir)
    )
    model = _build_model(config, mesh, resuming=resuming)
    parts, params = split_model(model)
    del model
    tx, lr_schedule = make_optimizer(config.optim, num_steps)
    state, shardings = init_train_state(params, tx, mesh, int(config.seed))
    del params
    n_params = count_params(state["params"])

    dataset = dataset_factory(
        config.data,
        seed=int(config.seed),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        batch_size=distributed.local_batch_size(global_batch),
    )
    checkpointer = Checkpointer(
        checkpoint_dir,
        keep=int(t_cfg.keep_checkpoints),
        async_save=bool(t_cfg.async_checkpointing),
    )
    restored_step, restored = checkpointer.restore_latest(abstract_state(state, shardings), dataset)
    if restored is not None:
        state = restored
        log.info("resumed from checkpoint at step %d", restored_step)
    start_step = int(jax.device_get(state["step"]))

    loss = _make_loss(config)
    step_fn = None  # compiled on the first batch (shardings depend on its keys/ranks)
    writer = MetricsWriter(workdir, tensorboard=t_cfg.tensorboard, jsonl=t_cfg.jsonl)
    if start_step == 0:
        writer.write_text("config", "```\n" + str(config) + "\n```")
    peak, peak_source = peak_tflops_per_device(float(t_cfg.peak_tflops_per_device))
    flops_per_sample = _flops_per_sample(config, layout)
    video_tokens = layout.video_total
    bar = ProgressBar(start_step, num_steps, enabled=bool(t_cfg.progress_bar))
    bar.write(
        f"{config.name}: {n_params / 1e6:.2f}M params, mesh {mesh_shape}, "
        f"{jax.process_count()} process(es), global batch {global_batch}, "
        f"{layout.seq_len} tokens/sample; start step {start_step}/{num_steps}; "
        f"peak {peak:.3g} TFLOP/s/device ({peak_source})"
    )
    profiler = StepProfiler(workdir, t_cfg.profile_start_step, t_cfg.profile_num_steps)

    losses: list[float] = []
    window = _Window()
    step = start_step
    last_saved = restored_step if restored is not None else None
    preempted = False
    compile_s = 0.0
    all_step_times: list[float] = []
    t_last = time.perf_counter()

    def save(step_now: int, force: bool = False) -> None:
        nonlocal last_saved
        if last_saved == step_now:
            return
        checkpointer.save(step_now, state, dataset, force=force)
        last_saved = step_now

    try:
        with jax.set_mesh(mesh), PreemptionGuard(bool(t_cfg.checkpoint_on_preemption)) as guard:
            while step < stop_at:
                t_data = time.perf_counter()
                host_batch = _device_batch(next(dataset))
                data_time = time.perf_counter() - t_data
                if step_fn is None:
                    b_sh = batch_shardings(mesh, host_batch)
                    step_fn = make_train_step(
                        parts,
                        tx,
                        lr_schedule,
                        loss,
                        state_shardings=shardings,
                        batch_sharding=b_sh,
                        grad_accum_steps=int(config.optim.grad_accum_steps),
                        ema_decay=float(config.optim.ema_decay),
                    )
                profiler.before_step(step)
                batch = distributed.to_global(host_batch, b_sh)
                t0 = time.perf_counter()
                state, metrics = step_fn(state, batch)
                metrics = jax.device_get(metrics)
                now = time.perf_counter()
                first = step == start_step
                if first:
                    compile_s = now - t0
                step_time = None if first else now - t_last
                t_last = now
                step += 1
                profiler.after_step(step, state["step"])
                if step_time is not None:
                    all_step_times.append(step_time)
                losses.append(float(metrics["loss"]))
                window.add(metrics, step_time, data_time)
                bar.update(1, loss=float(metrics["loss"]))

                if step % int(t_cfg.log_every) == 0 or step == stop_at:
                    summary = window.summary()
                    if "step_time_s" in summary:
                        summary.update(
                            throughput(
                                summary["step_time_s"],
                                global_batch,
                                video_tokens,
                                flops_per_sample,
                                mesh.size,
                                peak,
                            )
                        )
                    skips = getattr(dataset, "skip_counts", lambda: {})()
                    summary.update({f"data_skipped/{k}": v for k, v in skips.items()})
                    if first:
                        summary["compile_s"] = compile_s
                    writer.write(step, summary)
                    window = _Window()

                if int(metrics["nonfinite_run"]) >= int(t_cfg.max_consecutive_nonfinite):
                    save(step, force=True)
                    checkpointer.wait()
                    raise TrainingDiverged(
                        f"{int(metrics['nonfinite_run'])} non-finite steps in a row (loss or "
                        f"gradient NaN/Inf) at step {step}; the last good parameters are saved "
                        f"in {checkpointer.directory} (step {step}). Lower optim.learning_rate "
                        "or check the data; train.max_consecutive_nonfinite sets the limit."
                    )
                if step % int(t_cfg.checkpoint_every) == 0:
                    save(step)
                if guard.should_stop(step):
                    preempted = True
                    bar.write(
                        f"{guard.signal_name}: saving a checkpoint at step {step} and stopping"
                    )
                    save(step, force=True)
                    break
            if not preempted:
                save(step, force=True)
            checkpointer.wait()
    except BaseException:
        writer.close()
        checkpointer.close()  # lets pending asynchronous saves finish
        raise
    finally:
        profiler.close()
        bar.close()

    eval_metrics = {}
    if not preempted and int(t_cfg.eval_batches) > 0 and step == num_steps:
        eval_metrics = evaluate(config, parts, state, shardings, mesh, loss, dataset_factory)
        writer.write(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
    writer.close()
    checkpointer.close()
    result = {
        "step": step,
        "start_step": start_step,
        "losses": losses,
        "eval": eval_metrics,
        "preempted": preempted,
        "compile_s": compile_s,
        "mean_step_time_s": float(np.mean(all_step_times)) if all_step_times else 0.0,
        "params": n_params,
    }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "result.json"), "w") as f:
            json.dump({k: v for k, v in result.items() if k != "losses"}, f, indent=2)
    return result


def evaluate(config, parts, state, shardings, mesh, loss, dataset_factory) -> dict[str, float]:
    """Mean loss of params and EMA over fixed held-out batches and fixed noise/timesteps."""
    t_cfg = config.train
    dataset = dataset_factory(
        config.data,
        seed=int(config.seed) + 1,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        batch_size=distributed.local_batch_size(int(t_cfg.batch_size)),
    )

    def eval_loss(params, batch, i):
        rng = jax.random.fold_in(jax.random.key(int(config.seed) + 1), i)
        value, _ = loss(parts.bind(params), batch, rng)
        return value

    eval_fn = None
    totals = {"loss": 0.0, "loss_ema": 0.0}
    n = int(t_cfg.eval_batches)
    with jax.set_mesh(mesh):
        for i in range(n):
            host = _device_batch(next(dataset))
            b_sh = batch_shardings(mesh, host)
            if eval_fn is None:
                eval_fn = jax.jit(eval_loss, in_shardings=(shardings["params"], b_sh, None))
            batch = distributed.to_global(host, b_sh)
            totals["loss"] += float(eval_fn(state["params"], batch, jnp.int32(i)))
            totals["loss_ema"] += float(eval_fn(state["ema"], batch, jnp.int32(i)))
    return {k: v / n for k, v in totals.items()}
