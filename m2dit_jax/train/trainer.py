"""``train_and_evaluate(config, workdir)``: the config-driven, sharded, resumable train loop.

Order of work: multi-host start-up -> config checks (before anything is compiled) -> mesh ->
the train program (abstract: ``program.build_train_program``) -> data -> restore the newest
checkpoint onto the program's abstract state, or, only when there is none, the model born
sharded (random or ``init_from``) with its optimizer/EMA state -> the lean loop (batches read
ahead onto the device, metrics fetched every ``log_every``, preemption agreed every
``preemption_check_every`` steps) with checkpoints, held-out evaluation and non-finite
handling -> final checkpoint and evaluation.

Step time in the logs is the loop's wall time per step between two log points with data
loading overlapped (so it is the compiled step time whenever the loader keeps up); data time
is the host time spent reading and placing batches, reported on its own. MFU uses the step
time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from m2dit_jax.sharding import axis_rules, make_mesh
from m2dit_jax.train import distributed
from m2dit_jax.train.checkpointing import Checkpointer
from m2dit_jax.train.config_checks import check_config, dcn_mesh_shape, model_layout
from m2dit_jax.train.evaluation import Evaluator
from m2dit_jax.train.init_from import load_init_params
from m2dit_jax.train.loop import BatchPrefetcher, InFlight, MetricsWindow
from m2dit_jax.train.metrics import MetricsWriter, ProgressBar, peak_tflops_per_device, throughput
from m2dit_jax.train.preemption import PreemptionGuard
from m2dit_jax.train.profiler import StepProfiler
from m2dit_jax.train.program import build_train_program
from m2dit_jax.train.state import count_params, split_model
from m2dit_jax.train.step import (
    DEVICE_KEYS,
    PACK_FILL_KEY,
    SAMPLES_KEY,
    SCENE_FRAMES_KEY,
    batch_samples,
    batch_scene_frames,
    batch_shardings,
)

log = logging.getLogger(__name__)

DatasetFactory = Callable[..., Any]


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the last good state was checkpointed."""


def _initial_state(config: ml_collections.ConfigDict, mesh, program) -> dict[str, Any]:
    """A fresh train state (step 0) on the program's shardings, for a run with no checkpoint
    to resume: weights from ``init_from`` (``init_from.py``) or a random init."""
    if config.init_from:
        params, source = load_init_params(config, mesh, program.weights_target())
        log.info("initialised the weights from %s", source)
    else:
        from m2dit_jax.model import create_model

        with jax.set_mesh(mesh):
            model = create_model(config.model, seed=int(config.seed), mesh=mesh)
        _, params = split_model(model)
        del model
    return program.init_state(params, int(config.seed))  # LoRA: params = the frozen base


def _default_dataset_factory(data_config, *, seed, process_index, process_count, batch_size):
    from m2dit_jax.data import make_dataset

    return make_dataset(
        data_config,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        batch_size=batch_size,
    )


def _device_batch(batch: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("latents", "text_embeds") if k not in batch]
    if missing:
        raise ValueError(
            f"data batches lack {missing} (have {sorted(batch)}): set data.video_encoder / "
            "data.text_encoder or use a latents source"
        )
    # A jax.Array (the conv codec's latents, still computing) is placed without a host sync.
    keep = lambda v: v if isinstance(v, jax.Array) else np.asarray(v)
    out: dict[str, Any] = {k: keep(batch[k]) for k in DEVICE_KEYS if k in batch}
    frames = batch_scene_frames(batch)
    if frames is not None:  # host-only: the static layout of this batch's step
        out[SCENE_FRAMES_KEY] = frames
    samples = batch_samples(batch)
    if samples is not None:  # host-only: the packing plan of this batch's step
        out[SAMPLES_KEY] = samples
        out[PACK_FILL_KEY] = float(np.mean(batch[PACK_FILL_KEY])) if PACK_FILL_KEY in batch else 0.0
    return out


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


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    dataset_factory: DatasetFactory | None = None,
) -> dict[str, Any]:
    """Trains ``config`` in ``workdir``, resuming from its newest checkpoint.

    Restores tell the truth (``checkpointing``): a checkpoint that does not match the config
    is an error naming the differing paths; unreadable ones are skipped (and moved aside once
    an older one restores); if none restores the run stops. ``init_from`` is applied only
    when there is no checkpoint to resume.

    Args:
      config: a full training config (see ``m2dit_jax.train.defaults``).
      workdir: checkpoints/, tb/, metrics.jsonl, config.json and profile/ go here.
      dataset_factory: replaces ``m2dit_jax.data.make_dataset`` (same keyword signature).

    Returns:
      {"step", "losses" (per step run in this call), "eval" (last held-out metrics),
       "preempted", "start_step", "compile_s", "mean_step_time_s", "params"}.
    """
    distributed.initialize(config.distributed)
    # Everything — param shardings, activation constraints, attention specs — under the
    # config's logical-axis rules (mesh.logical_rules overrides the table).
    with axis_rules(config.mesh.get("logical_rules", "")):
        return _train(config, workdir, dataset_factory or _default_dataset_factory)


def _train(config, workdir: str, dataset_factory: DatasetFactory) -> dict[str, Any]:
    if config.train.compilation_cache_dir:
        enable_compilation_cache(config.train.compilation_cache_dir)
    mesh_shape = check_config(
        config, num_devices=jax.device_count(), process_count=jax.process_count()
    )
    devices = jax.devices()[: int(config.mesh.num_devices) or None]
    mesh = make_mesh(mesh_shape, devices, dcn=dcn_mesh_shape(config.mesh))
    if "://" in str(workdir):
        raise ValueError(
            f"workdir={workdir!r}: URL workdirs are not supported (metrics, config.json and "
            "result.json are written with local file I/O); mount the bucket (e.g. gcsfuse) "
            "and pass the mount path"
        )
    workdir = os.path.abspath(workdir)
    _write_config(workdir, config)
    t_cfg = config.train
    num_steps = int(t_cfg.num_steps)
    stop_at = min(int(t_cfg.stop_at_step) or num_steps, num_steps)
    layout = model_layout(config)
    global_batch = int(t_cfg.batch_size)

    program = build_train_program(config, mesh)
    dataset = dataset_factory(
        config.data,
        seed=int(config.seed),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        batch_size=distributed.local_batch_size(global_batch),
    )
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=int(t_cfg.keep_checkpoints),
        async_save=bool(t_cfg.async_checkpointing),
    )
    restored_step, state = checkpointer.restore_latest(program.abstract_state, dataset)
    if state is None:
        state = _initial_state(config, mesh, program)
    else:
        log.info("resumed from checkpoint at step %d", restored_step)
    start_step = int(jax.device_get(state["step"]))
    n_params = count_params(program.model_params)
    if program.lora is not None:
        log.info(
            "LoRA rank %d (alpha %g) on %d kernels: %d trainable params over a frozen base",
            program.lora.rank, program.lora.alpha, len(program.lora.targets),
            count_params(program.abstract_state["params"]),
        )  # fmt: skip
    evaluator = None
    if int(config.eval.batches) > 0:
        eval_parts, eval_shardings = program.eval_parts()
        evaluator = Evaluator(
            config, mesh, eval_parts, eval_shardings, dataset_factory, _device_batch
        )

    writer = MetricsWriter(workdir, tensorboard=t_cfg.tensorboard, jsonl=t_cfg.jsonl)
    if start_step == 0:
        writer.write_text("config", "```\n" + str(config) + "\n```")
    peak, peak_source = peak_tflops_per_device(float(t_cfg.peak_tflops_per_device))
    flops_per_sample = _flops_per_sample(config, layout)
    bar = ProgressBar(start_step, num_steps, enabled=bool(t_cfg.progress_bar))
    bar.write(
        f"{config.name}: {n_params / 1e6:.2f}M params, mesh {mesh_shape}, "
        f"{jax.process_count()} process(es), global batch {global_batch}, "
        f"{layout.seq_len} tokens/sample; start step {start_step}/{num_steps}; "
        f"peak {peak:.3g} TFLOP/s/device ({peak_source})"
    )
    profiler = StepProfiler(workdir, t_cfg.profile_start_step, t_cfg.profile_num_steps)

    def to_device(host_batch):
        frames = host_batch.pop(SCENE_FRAMES_KEY, None)
        samples = host_batch.pop(SAMPLES_KEY, None)
        fill = host_batch.pop(PACK_FILL_KEY, None)
        if jax.process_count() > 1 and bool(config.data.get("ragged", False)):
            from jax.experimental import multihost_utils

            multihost_utils.assert_equal(
                np.asarray(
                    (frames if frames is not None else (-1,)) + (samples or (-1,)), np.int32
                ),
                "processes read batches of different scene layouts in one step; the data "
                "pipeline must draw each global batch's layout from the shared seed",
            )
        placed = distributed.to_global(host_batch, batch_shardings(mesh, host_batch))
        placed[SCENE_FRAMES_KEY] = (frames, samples)
        placed[PACK_FILL_KEY] = fill
        return placed

    prefetch = BatchPrefetcher(dataset, _device_batch, to_device)
    # One jitted step per scene layout (None = equal scenes), compiled on its first batch
    # (shardings depend on the batch's keys/ranks).
    step_fns: dict[Any, Any] = {}
    pack_fills: list[float] = []  # packed rows: real tokens / budget, per step
    losses: list[float] = []
    eval_metrics: dict[str, float] = {}
    window, in_flight = MetricsWindow(), InFlight(max_in_flight=2)
    step = start_step
    last_saved = restored_step
    consumed = None  # iterator-state snapshot after the batch of the last step run
    preempted, warned_input_bound = False, False
    compile_s, timed_wall, timed_steps = 0.0, 0.0, 0
    window_start, window_timed = None, 0
    log_every, eval_every = int(t_cfg.log_every), int(config.eval.every)

    def save(step_now: int, force: bool = False) -> None:
        nonlocal last_saved
        if last_saved == step_now:
            return
        checkpointer.save(
            step_now, state, consumed if consumed is not None else dataset, force=force
        )
        last_saved = step_now

    def flush() -> dict[str, Any]:
        """Fetches the window's metrics (the only regular host sync) and writes them."""
        nonlocal window, window_start, window_timed, timed_wall, timed_steps, warned_input_bound
        rows = window.fetch()
        now = time.perf_counter()
        summary = MetricsWindow.summarize(rows)
        summary["data_time_s"] = window.data_time / len(rows)
        if window_timed:
            summary["step_time_s"] = (now - window_start) / window_timed
            timed_wall += now - window_start
            timed_steps += window_timed
            summary.update(
                throughput(
                    summary["step_time_s"], global_batch, layout.video_total, flops_per_sample,
                    mesh.size, peak,
                )
            )  # fmt: skip
            if not warned_input_bound and summary["data_time_s"] > 0.5 * summary["step_time_s"]:
                warned_input_bound = True
                log.warning(
                    "input-bound: reading a batch takes %.3g s of a %.3g s step; raise "
                    "data.num_workers or precompute latents",
                    summary["data_time_s"],
                    summary["step_time_s"],
                )
        if compile_s and step - len(rows) == start_step:
            summary["compile_s"] = compile_s
        skips = getattr(dataset, "skip_counts", lambda: {})()
        summary.update({f"data_skipped/{k}": v for k, v in skips.items()})
        if bool(config.data.get("ragged", False)):  # each distinct layout compiled its step
            summary["scene_layouts_compiled"] = len(step_fns)
        if pack_fills:
            summary["data/pack_fill"] = float(np.mean(pack_fills))
            pack_fills.clear()
        writer.write(step, summary)
        losses.extend(float(r["loss"]) for r in rows)
        bar.update(0, loss=float(rows[-1]["loss"]))
        window, window_start, window_timed = MetricsWindow(), time.perf_counter(), 0
        return summary

    try:
        with (
            jax.set_mesh(mesh),
            PreemptionGuard(
                bool(t_cfg.checkpoint_on_preemption), check_every=int(t_cfg.preemption_check_every)
            ) as guard,
        ):
            if step < stop_at:
                batch, snapshot, data_time = prefetch.next()
            while step < stop_at:
                layout_key = batch.pop(SCENE_FRAMES_KEY, (None, None))
                fill = batch.pop(PACK_FILL_KEY, None)
                if fill is not None:
                    pack_fills.append(fill)
                step_fn = step_fns.get(layout_key)
                if step_fn is None:
                    frames, samples = layout_key
                    step_fn = step_fns[layout_key] = program.step_for(
                        {k: v.sharding for k, v in batch.items()},
                        scene_frames=frames,
                        samples=samples,
                    )
                    if layout_key != (None, None):
                        log.info("compiling the step for scene layout %s, packing %s "
                                 "(%d layouts so far)", frames, samples, len(step_fns))  # fmt: skip
                profiler.before_step(step)
                first = step == start_step
                t0 = time.perf_counter()
                state, metrics = step_fn(state, batch)
                if first:  # the one per-step sync of a run: timing the compile
                    jax.block_until_ready(metrics)
                    compile_s = time.perf_counter() - t0
                    window_start = time.perf_counter()
                else:
                    window_timed += 1
                in_flight.add(metrics["loss"])
                step += 1
                consumed = snapshot
                window.add(metrics, data_time)
                if step < stop_at:  # read + place the next batch while this step runs
                    batch, snapshot, data_time = prefetch.next()
                profiler.after_step(step, state["step"])
                bar.update(1)

                if step % log_every == 0 or step == stop_at:
                    summary = flush()
                    if int(summary["nonfinite_run"]) >= int(t_cfg.max_consecutive_nonfinite):
                        save(step, force=True)
                        checkpointer.wait()
                        raise TrainingDiverged(
                            f"{int(summary['nonfinite_run'])} non-finite steps in a row (loss "
                            f"or gradient NaN/Inf) at step {step}; the last good parameters "
                            f"are saved in {checkpointer.directory} (step {step}). Lower "
                            "optim.learning_rate or check the data; "
                            "train.max_consecutive_nonfinite sets the limit."
                        )
                if evaluator is not None and eval_every and step % eval_every == 0:
                    if step != num_steps:
                        eval_metrics = evaluator(program.eval_view(state))
                        writer.write(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
                if step % int(t_cfg.checkpoint_every) == 0:
                    save(step)
                if guard.should_stop(step):
                    preempted = True
                    if len(window):
                        flush()
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

    if not preempted and evaluator is not None and step == num_steps:
        eval_metrics = evaluator(program.eval_view(state))
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
        "mean_step_time_s": timed_wall / timed_steps if timed_steps else 0.0,
        "params": n_params,
    }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "result.json"), "w") as f:
            json.dump({k: v for k, v in result.items() if k != "losses"}, f, indent=2)
    return result
