"""Exports a training run's checkpoint: a pipeline folder (latent-space runs) or an inference
bundle (pixel-space runs), optionally also the bare diffusers transformer.

    python -m launch.export --workdir runs/2b_sft --out exported/2b_sft [--base CogVideoX-2b]
    python -m launch.export --workdir runs/demo --out runs/demo/bundle [--diffusers DIR]
        [--step N] [--weights ema|params] [--bf16]
    python -m launch.export --workdir runs/5b_lora --out exported/5b_lora --merge-lora [--scale S]
    python -m launch.export --workdir runs/5b_lora --out lora/ --lora-only     # adapters only

Reads ``WORKDIR/config.json`` (written by the trainer) and the newest — or the given — orbax
checkpoint in ``WORKDIR/checkpoints``; restores only the chosen weights (EMA by default, not
the optimizer state).

- Latent-space runs (``data.source="latents"``: CogVideoX VAE latents + T5 embeddings) become
  a complete diffusers **pipeline folder**: ``transformer/`` (the trained weights in
  ``CogVideoXTransformer3DModel`` layout, ``--bf16`` halves it), ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/`` and ``model_index.json`` of the base pipeline hard-linked
  (copied across filesystems; never re-saved; the scheduler is rewritten only when the run
  trained with another SNR shift), plus ``m2dit.json`` (scenes, frames, size, fps, schedule,
  position convention, provenance) and ``README.md``. The base pipeline is ``--base``, or the
  run's ``init_from`` when that is a pipeline folder (or its ``transformer/``). diffusers loads
  ``OUT/transformer``; ``launch.sample --model OUT`` samples the folder.
- Pixel-space runs (hashed text encoder + space-to-depth) become the bundle described in
  ``m2dit_jax.inference.bundle``: ``config.json`` + ``model.safetensors`` + ``README.md``.
  ``--diffusers DIR`` also writes the bare transformer in diffusers' layout.
- LoRA runs (``config.lora.rank > 0``): ``--merge-lora [--scale S]`` exports either of the
  above with the adapters merged into the frozen base; ``--lora-only`` writes the adapters alone
  as a diffusers-layout LoRA safetensors file (``m2dit_jax.convert.lora``), which
  ``CogVideoXPipeline.load_lora_weights`` and ``launch.sample --lora`` read.
"""

from __future__ import annotations

import argparse
from typing import Any

from m2dit_jax.export import export


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a launch.train workdir")
    parser.add_argument("--out", required=True, help="pipeline folder / bundle to write")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (newest)")
    parser.add_argument("--weights", choices=("ema", "params"), default="ema")
    parser.add_argument("--bf16", action="store_true", help="store the weights in bfloat16")
    parser.add_argument("--diffusers", default=None, help="bundles: also a diffusers folder")
    parser.add_argument(
        "--base", default=None, help="latent-space runs: the base CogVideoX pipeline folder"
    )
    parser.add_argument("--fps", type=int, default=None, help="pipeline folders (default 8)")
    parser.add_argument(
        "--merge-lora", action="store_true", help="LoRA runs: export base + merged adapters"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="with --merge-lora: the adapters' scale"
    )
    parser.add_argument(
        "--lora-only",
        action="store_true",
        help="LoRA runs: write only the adapters, a diffusers LoRA file (OUT = a .safetensors "
        "path or a folder for pytorch_lora_weights.safetensors)",
    )
    args = parser.parse_args(argv)
    try:
        summary = export(
            args.workdir,
            args.out,
            step=args.step,
            weights=args.weights,
            bf16=args.bf16,
            diffusers=args.diffusers,
            base=args.base,
            fps=args.fps,
            merge_lora=args.merge_lora,
            lora_only=args.lora_only,
            lora_scale=args.scale,
        )
    except ValueError as err:
        parser.exit(2, f"launch.export: error: {err}\n")
    if "lora" in summary:
        print(
            f"exported step {summary['step']} ({summary['weights']} adapters, "
            f"{summary['num_params']:,} values, {summary['bytes'] / 1e6:.1f} MB) -> LoRA file "
            f"{summary['lora']}"
        )
        return summary
    if "pipeline" in summary:
        print(
            f"exported step {summary['step']} ({summary['weights']} weights, transformer "
            f"{summary['bytes'] / 1e6:.1f} MB; {summary['linked_files']} base files linked, "
            f"{summary['copied_files']} copied) -> pipeline folder {summary['pipeline']}"
        )
        return summary
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
