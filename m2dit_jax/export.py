"""Exports a training run's checkpoint: the library behind ``m2dit-export`` / ``launch.export``.

``export(workdir, out, ...)`` reads ``WORKDIR/config.json`` (written by the trainer) and the
newest — or the given — orbax checkpoint in ``WORKDIR/checkpoints``, restores only the chosen
weights (EMA by default, not the optimizer state) and writes:

- a diffusers **pipeline folder** for latent-space runs (``data.source="latents"``): the trained
  ``transformer/`` in ``CogVideoXTransformer3DModel`` layout, the base pipeline's ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/`` and ``model_index.json`` hard-linked (the
  scheduler rewritten only when the run trained with another SNR shift), ``m2dit.json`` and
  ``README.md`` (``export_pipeline``);
- an **inference bundle** for pixel-space runs (``m2dit_jax.inference.bundle``), optionally with
  the bare diffusers transformer;
- for LoRA runs, either of the above with the adapters merged, or the adapters alone as a
  diffusers-layout LoRA file (``export_lora_only``).

The command line (``launch/export.py``) documents the options.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

from m2dit_jax.data.config import FOLD_ENCODERS
from m2dit_jax.inference import bundle as bundle_lib


def read_workdir_config(workdir: str) -> dict[str, Any]:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{workdir} has no config.json: is it a launch.train workdir?")
    with open(path) as f:
        config = json.load(f)
    for key in ("model", "data"):
        if key not in config:
            raise ValueError(f"{path} has no {key!r} section")
    return config


def find_checkpoint(workdir: str, step: int | None = None) -> tuple[int, str]:
    """(step, absolute path to its ``state`` item) of the newest checkpoint, or of ``step``."""
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(root):
        raise ValueError(f"{workdir} has no checkpoints/ folder")
    steps = sorted(
        int(d)
        for d in os.listdir(root)
        if d.isdigit() and os.path.isdir(os.path.join(root, d, "state"))
    )
    if not steps:
        raise ValueError(f"no checkpoints in {root}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ValueError(f"no checkpoint for step {step} in {root}; have {steps}")
    return step, os.path.join(root, str(step), "state")


def restore_weights(state_path: str, which: str = "ema") -> dict[str, np.ndarray]:
    """Restores only ``state[which]`` (a pure param dict) from an orbax checkpoint as numpy."""
    import jax
    import orbax.checkpoint as ocp

    if which not in ("ema", "params", "base"):  # "base": a LoRA run's frozen weights
        raise ValueError(f"weights must be 'ema' or 'params', got {which!r}")
    state_path = os.path.abspath(state_path)  # orbax resolves metadata from absolute paths only
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(state_path).item_metadata
    if tree is None:
        raise ValueError(f"cannot read the checkpoint metadata in {state_path}")
    if which not in tree:
        raise ValueError(f"checkpoint {state_path} holds no {which!r} (has {sorted(tree)})")
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree[which])
    restored = checkpointer.restore(
        state_path,
        args=ocp.args.PyTreeRestore(
            item={which: tree[which]}, restore_args={which: restore_args}, partial_restore=True
        ),
    )
    return bundle_lib.flat_params(restored[which])


def lora_section(config: dict[str, Any]) -> dict[str, Any] | None:
    """The run's ``lora`` section when it trained LoRA adapters (rank > 0), else None."""
    lora = config.get("lora") or {}
    return lora if int(lora.get("rank", 0) or 0) > 0 else None


def restore_run_weights(
    state_path: str,
    config: dict[str, Any],
    which: str = "ema",
    *,
    merge_lora: bool = False,
    scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """The flat model weights of a checkpoint: ``state[which]`` of a full fine-tuning run;
    for a LoRA run (``--merge-lora``) the frozen ``state["base"]`` with ``state[which]``'s
    adapters merged at ``scale`` (``W + scale * alpha/r * A @ B``, f32 sum)."""
    lora = lora_section(config)
    if lora is None:
        if merge_lora:
            raise ValueError("--merge-lora: this run trained no LoRA (its config has lora.rank 0)")
        return restore_weights(state_path, which)
    if not merge_lora:
        raise ValueError(
            f"this run trained LoRA adapters (rank {lora['rank']}): pass --merge-lora "
            "[--scale S] to export the model with the adapters merged, or --lora-only to "
            "write the adapters as a diffusers LoRA file"
        )
    import ml_collections

    from m2dit_jax.convert import lora as lora_io

    model = ml_collections.ConfigDict(config["model"])
    rank = int(lora["rank"])
    alpha = float(lora.get("alpha") or rank)
    adapters = restore_weights(state_path, which)
    tensors = lora_io.lora_state_dict(adapters, model, rank=rank, alpha=alpha)
    del adapters
    base = restore_weights(state_path, "base")
    return lora_io.merge_lora_flat(base, model, tensors, scale)


def export_lora_only(
    workdir: str, out: str, *, step: int | None = None, weights: str = "ema", bf16: bool = False
) -> dict[str, Any]:
    """A LoRA run's adapters -> one diffusers-layout LoRA safetensors file."""
    import ml_collections

    from m2dit_jax.convert import lora as lora_io

    config = read_workdir_config(workdir)
    lora = lora_section(config)
    if lora is None:
        raise ValueError("--lora-only: this run trained no LoRA (its config has lora.rank 0)")
    step, state_path = find_checkpoint(workdir, step)
    adapters = restore_weights(state_path, weights)
    rank = int(lora["rank"])
    path = lora_io.export_lora(
        adapters,
        ml_collections.ConfigDict(config["model"]),
        out,
        rank=rank,
        alpha=float(lora.get("alpha") or rank),
        dtype="bfloat16" if bf16 else "float32",
        dropout=float(lora.get("dropout", 0.0)),
    )
    return {
        "lora": path,
        "step": step,
        "weights": weights,
        "num_params": int(sum(v.size for v in adapters.values())),
        "bytes": os.path.getsize(path),
    }


def encoders_from_data(data: dict[str, Any]) -> tuple[dict, dict]:
    """(encoders, video) sections of a bundle from the training data config."""
    if data.get("text_encoder") != "hashed" or data.get("video_encoder") not in FOLD_ENCODERS:
        raise ValueError(
            "launch.export bundles pixel-space runs (data.text_encoder='hashed', "
            "data.video_encoder='space_to_depth' or 'conv'); this run has text_encoder="
            f"{data.get('text_encoder')!r}, video_encoder={data.get('video_encoder')!r}"
        )
    encoders = {
        "text": {
            "kind": "hashed",
            "text_len": int(data["text_len"]),
            "dim": int(data["text_dim"]),
            "seed": int(data.get("text_seed", 0)),
        },
        "video": {
            "kind": "space_to_depth",
            "patch_t": int(data["patch_t"]),
            "patch_s": int(data["patch_s"]),
            "detail_scale": float(data.get("detail_scale", 1.0)),
        },
    }
    if data["video_encoder"] == "conv":  # write_bundle copies the weights into the bundle
        from m2dit_jax.encoders.conv_autoencoder import read_channels

        path = os.path.abspath(str(data["autoencoder"]))
        encoders["video"] = {
            "kind": "conv",
            "patch_t": int(data["patch_t"]),
            "patch_s": int(data["patch_s"]),
            "channels": read_channels(path),
            "file": path,
        }
    video = {k: int(data[k]) for k in ("num_scenes", "frames", "height", "width")}
    return encoders, video


def is_latent_run(data: dict[str, Any]) -> bool:
    return data.get("source") == "latents" or (
        data.get("text_encoder", "none") == "none" and data.get("video_encoder", "none") == "none"
    )


def resolve_base(config: dict[str, Any], base: str | None, _depth: int = 0) -> str:
    """The base pipeline folder of a latent-space run: ``--base``, else the run's
    ``init_from`` when that is a pipeline folder, the ``transformer/`` inside one, or a
    training workdir (``[@STEP]``) whose own config resolves to one (stage 2 from stage 1)."""
    import re

    from m2dit_jax.inference import pipeline_folder as pf

    if base:
        if not pf.is_pipeline_folder(base):
            raise ValueError(
                f"--base {base}: not a diffusers pipeline folder (no model_index.json)"
            )
        return base
    for key in ("base_pipeline", "init_from"):
        value = re.sub(r"@\d+$", "", str(config.get(key) or "")).rstrip("/")
        for candidate in (value, os.path.dirname(value)):
            if candidate and pf.is_pipeline_folder(candidate):
                return candidate
        parent = os.path.join(value, "config.json")
        if value and _depth < 4 and os.path.isfile(parent):
            try:
                return resolve_base(read_workdir_config(value), None, _depth + 1)
            except ValueError:
                pass
    raise ValueError(
        "this is a latent-space run (CogVideoX latents + T5 embeddings): its VAE, T5, "
        "tokenizer and scheduler come from the base pipeline, which the run's config does not "
        "name; pass --base PIPELINE_DIR (e.g. the CogVideoX-2b / 5b folder the latents were "
        "precomputed with)"
    )


def _scene_geometry(data: dict[str, Any], model: dict[str, Any], ratio: int) -> dict[str, int]:
    """Pixel frames/height/width of one scene: from the first latents record's meta (what the
    precompute job encoded), else from the model's latent sample grid."""
    geometry = {
        "frames": (int(model["sample_frames"]) - 1)
        * int(model.get("temporal_compression_ratio", 4))
        + 1,
        "height": int(model["sample_height"]) * ratio,
        "width": int(model["sample_width"]) * ratio,
    }
    from m2dit_jax.data.latents_format import expand_shard_paths, read_latent_shard

    try:
        record = next(read_latent_shard(expand_shard_paths(data["path"])[0]))
    except (OSError, ValueError, KeyError, IndexError, StopIteration) as e:
        # Said, not silent: m2dit.json then states the model's sample grid.
        warnings.warn(
            f"cannot read the run's latents shards ({data.get('path')!r}: "
            f"{type(e).__name__}: {e}); m2dit.json gets the model's sample grid "
            f"{geometry} — pass --frames/--height/--width to launch.sample if that is wrong",
            RuntimeWarning,
            stacklevel=2,
        )
        return geometry
    for key in geometry:
        if isinstance(record.meta.get(key), int) and record.meta[key] > 0:
            geometry[key] = int(record.meta[key])
    return geometry


_PIPELINE_README = """# Mask²DiT pipeline folder

Exported by `launch.export` from `{workdir}` (step {step}, {which} weights, {dtype}) on the
base pipeline `{base}`: {scenes} scenes of {frames} frames at {height}x{width} px sampled
jointly, {fps} fps. `transformer/` is the trained Mask²DiT transformer in diffusers'
`CogVideoXTransformer3DModel` layout; `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/` are
the base pipeline's (hard links); `m2dit.json` says how to sample it.

    python -m launch.sample --model {path} --script examples/three_scenes.yaml --out out.mp4
    python -m launch.sample --model {path} --extend out.mp4 \\
        --script examples/two_more_scenes.yaml --out longer.mp4
"""


def export_pipeline(
    workdir: str,
    out: str,
    *,
    base: str | None = None,
    step: int | None = None,
    weights: str = "ema",
    bf16: bool = False,
    fps: int | None = None,
    config: dict[str, Any] | None = None,
    merge_lora: bool = False,
    lora_scale: float = 1.0,
) -> dict[str, Any]:
    """A latent-space run -> a complete diffusers pipeline folder at ``out``."""
    import ml_collections

    from m2dit_jax.convert.pipeline import save_transformer_from_flat
    from m2dit_jax.inference import pipeline_folder as pf

    config = config or read_workdir_config(workdir)
    base = os.path.abspath(resolve_base(config, base))
    folder = pf.read_pipeline_folder(base)  # every part checked before any work
    out = os.path.abspath(out)
    if out == base:
        raise ValueError("--out must not be the base pipeline folder")
    if os.path.exists(out) and os.listdir(out) and not pf.is_pipeline_folder(out):
        raise ValueError(f"--out {out} exists and is not an (earlier exported) pipeline folder")
    model = ml_collections.ConfigDict(config["model"])
    data = config["data"]
    d_model = int(folder.text_encoder_config.get("d_model", -1))
    latent = int(folder.vae_config.get("latent_channels", -1))
    problems = []
    if d_model != model.text_dim:
        problems.append(f"text_encoder d_model {d_model} != model.text_dim {model.text_dim}")
    if latent != model.in_channels:
        problems.append(f"vae latent_channels {latent} != model.in_channels {model.in_channels}")
    if problems:
        raise ValueError(f"base pipeline {base} does not fit the run: {'; '.join(problems)}")
    step, state_path = find_checkpoint(workdir, step)
    params = restore_run_weights(
        state_path, config, weights, merge_lora=merge_lora, scale=lora_scale
    )
    os.makedirs(out, exist_ok=True)
    dtype = "bfloat16" if bf16 else "float32"
    files = save_transformer_from_flat(
        params, model, os.path.join(out, "transformer"), dtype=dtype, max_shard_size="5GB"
    )
    num_params = int(sum(v.size for v in params.values()))
    del params
    linked = {"linked": 0, "copied": 0}
    for part in ("vae", "text_encoder", "tokenizer"):
        counts = pf.link_or_copy_tree(folder.part(part), os.path.join(out, part))
        linked = {k: linked[k] + counts[k] for k in linked}
    counts = pf.link_or_copy_tree(folder.part("scheduler"), os.path.join(out, "scheduler"))
    linked = {k: linked[k] + counts[k] for k in linked}
    diffusion = config.get("diffusion", {})
    trained = {
        k: diffusion[k] for k in ("snr_shift_scale", "num_train_timesteps") if k in diffusion
    }
    scheduler_config = dict(folder.scheduler_config)
    rewrite = {k: v for k, v in trained.items() if scheduler_config.get(k) != v}
    if rewrite:  # the run trained with another schedule: sample with that one
        path = os.path.join(out, "scheduler", "scheduler_config.json")
        os.remove(path)  # a hard link to the base's file: never write through it
        with open(path, "w") as f:
            json.dump({**scheduler_config, **rewrite}, f, indent=2)
    pf.link_or_copy_file(os.path.join(base, pf.MODEL_INDEX), os.path.join(out, pf.MODEL_INDEX))
    ratio = 2 ** (len(folder.vae_config.get("block_out_channels", [0] * 4)) - 1)
    geometry = _scene_geometry(data, model, ratio)
    schedule, _ = pf.schedule_from_scheduler_config({**scheduler_config, **rewrite})
    positions = str(model.get("positions_convention", "")) or (
        "release" if model.get("sincos_temporal") == "stretch" else "diffusers"
    )
    source = {
        "workdir": os.path.abspath(workdir),
        "step": step,
        "weights": weights,
        "weights_dtype": dtype,
        "base": base,
        "name": config.get("name"),
        "cond_mask_mode": diffusion.get("cond_mask_mode", "mask2dit"),
        "p_cond": diffusion.get("p_cond"),
    }
    if merge_lora:
        lora = lora_section(config)
        source["lora"] = {"rank": lora["rank"], "alpha": lora.get("alpha"), "scale": lora_scale}
    pf.write_m2dit_json(
        out,
        num_scenes=int(data["num_scenes"]),
        fps=int(fps or pf.DEFAULT_FPS),
        text_len=int(model.text_len),
        positions=positions,
        schedule=pf.schedule_kwargs(schedule),
        source=source,
        **geometry,
    )
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(
            _PIPELINE_README.format(
                workdir=source["workdir"], step=step, which=weights, dtype=dtype, base=base,
                scenes=data["num_scenes"], fps=fps or pf.DEFAULT_FPS, path=out, **geometry,
            )
        )  # fmt: skip
    return {
        "pipeline": out,
        "step": step,
        "weights": weights,
        "num_params": num_params,
        "bytes": sum(os.path.getsize(os.path.join(out, "transformer", name)) for name in files),
        "transformer_files": files,
        "base": base,
        "linked_files": linked["linked"],
        "copied_files": linked["copied"],
        "scheduler_rewritten": sorted(rewrite),
    }


def export(
    workdir: str,
    out: str,
    *,
    step: int | None = None,
    weights: str = "ema",
    bf16: bool = False,
    diffusers: str | None = None,
    base: str | None = None,
    fps: int | None = None,
    merge_lora: bool = False,
    lora_only: bool = False,
    lora_scale: float = 1.0,
) -> dict[str, Any]:
    """Writes the pipeline folder (latent-space run) or the bundle (pixel-space run, and the
    diffusers folder) — for a LoRA run with the adapters merged (``merge_lora``) — or, with
    ``lora_only``, only the adapters as a diffusers LoRA file; returns a summary dict."""
    if lora_only:
        if merge_lora or diffusers or base:
            raise ValueError("--lora-only writes the adapters alone (no --merge-lora/--base/...)")
        return export_lora_only(workdir, out, step=step, weights=weights, bf16=bf16)
    config = read_workdir_config(workdir)
    if is_latent_run(config["data"]):
        if diffusers:
            raise ValueError("--diffusers is for bundles; a pipeline folder holds transformer/")
        return export_pipeline(
            workdir, out, base=base, step=step, weights=weights, bf16=bf16, fps=fps,
            config=config, merge_lora=merge_lora, lora_scale=lora_scale,
        )  # fmt: skip
    if base:
        raise ValueError("--base is for latent-space runs; this run is pixel-space (a bundle)")
    step, state_path = find_checkpoint(workdir, step)
    params = restore_run_weights(
        state_path, config, weights, merge_lora=merge_lora, scale=lora_scale
    )
    encoders, video = encoders_from_data(config["data"])
    diffusion = config.get("diffusion", {})
    schedule = {
        k: diffusion[k] for k in ("snr_shift_scale", "num_train_timesteps") if k in diffusion
    }
    bundle_lib.write_bundle(
        out,
        params,
        model_config=config["model"],
        encoders=encoders,
        video=video,
        weights_dtype="bfloat16" if bf16 else "float32",
        source={
            "workdir": os.path.abspath(workdir),
            "step": step,
            "weights": weights,
            "cond_mask_mode": diffusion.get("cond_mask_mode", "mask2dit"),
        },
        schedule=schedule,
    )
    summary = {
        "bundle": out,
        "step": step,
        "weights": weights,
        "num_params": int(sum(v.size for v in params.values())),
        "bytes": os.path.getsize(os.path.join(out, "model.safetensors")),
    }
    if diffusers:
        from m2dit_jax.convert import save_diffusers_transformer

        loaded = bundle_lib.load_bundle(out)
        summary["diffusers_files"] = save_diffusers_transformer(
            loaded.model, diffusers, dtype="bfloat16" if bf16 else "float32"
        )
        summary["diffusers"] = diffusers
    return summary
