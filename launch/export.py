"""Exports a training run's checkpoint as an inference bundle (and optionally diffusers).

    python -m launch.export --workdir runs/demo --out runs/demo/bundle [--step N] \
        [--weights ema|params] [--bf16] [--diffusers runs/demo/diffusers_transformer]

Reads ``WORKDIR/config.json`` (written by the trainer) and the newest — or the given — orbax
checkpoint in ``WORKDIR/checkpoints``; restores only the chosen weights (EMA by default, not
the optimizer state) and writes the bundle described in ``m2dit_jax.inference.bundle``:
``config.json`` + ``model.safetensors`` + ``README.md``, loadable by ``launch.sample --model``.
``--diffusers DIR`` also writes the transformer in diffusers' ``CogVideoXTransformer3DModel``
layout (config.json + safetensors) for PyTorch tooling; note that diffusers' pipeline knows
nothing of multi-scene masks — it gets the weights, not the Mask²DiT sampling.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np

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

    if which not in ("ema", "params"):
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


def encoders_from_data(data: dict[str, Any]) -> tuple[dict, dict]:
    """(encoders, video) sections of a bundle from the training data config."""
    if data.get("text_encoder") != "hashed" or data.get("video_encoder") != "space_to_depth":
        raise ValueError(
            "launch.export bundles pixel-space runs (data.text_encoder='hashed', "
            "data.video_encoder='space_to_depth'); this run has text_encoder="
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
        },
    }
    video = {k: int(data[k]) for k in ("num_scenes", "frames", "height", "width")}
    return encoders, video


def export(
    workdir: str,
    out: str,
    *,
    step: int | None = None,
    weights: str = "ema",
    bf16: bool = False,
    diffusers: str | None = None,
) -> dict[str, Any]:
    """Writes the bundle (and the diffusers folder); returns a summary dict."""
    config = read_workdir_config(workdir)
    step, state_path = find_checkpoint(workdir, step)
    params = restore_weights(state_path, weights)
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
        source={"workdir": os.path.abspath(workdir), "step": step, "weights": weights},
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a launch.train workdir")
    parser.add_argument("--out", required=True, help="bundle folder to write")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (newest)")
    parser.add_argument("--weights", choices=("ema", "params"), default="ema")
    parser.add_argument("--bf16", action="store_true", help="store the weights in bfloat16")
    parser.add_argument("--diffusers", default=None, help="also write a diffusers folder here")
    args = parser.parse_args(argv)
    try:
        summary = export(
            args.workdir,
            args.out,
            step=args.step,
            weights=args.weights,
            bf16=args.bf16,
            diffusers=args.diffusers,
        )
    except ValueError as err:
        parser.exit(2, f"launch.export: error: {err}\n")
    print(
        f"exported step {summary['step']} ({summary['weights']} weights, "
        f"{summary['num_params']:,} params, {summary['bytes'] / 1e6:.1f} MB) -> {summary['bundle']}"
    )
    if "diffusers" in summary:
        print(f"diffusers transformer -> {summary['diffusers']}")
    return summary


def run() -> None:
    main()


if __name__ == "__main__":
    main()
