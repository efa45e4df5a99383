"""Samples a multi-scene video from a model and a YAML script.

    python -m launch.sample --model MODEL --script examples/three_scenes.yaml --out out.mp4
    python -m launch.sample --model MODEL --extend out.mp4 \
        --script examples/two_more_scenes.yaml --out longer.mp4

``--model`` is a diffusers CogVideoX pipeline folder (``model_index.json``, ``transformer/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, optional ``m2dit.json``; e.g. what
``launch.export`` writes for a latent-space run, or a stock CogVideoX-2b/5b folder) or an
inference bundle (``launch.export`` of a pixel-space run). Both run the same pipeline
(``m2dit_jax.inference.pipeline.SamplingPipeline``).

``--out`` ends in .mp4 or .gif; next to it goes ``<out>.scenes.json`` (the captions of every
scene, which ``--extend`` reads back to condition on), and optionally ``--gif``/``--sheet``
extra files. ``--extend VIDEO`` reads the video (resized to the model's frame size), encodes it
scene by scene and appends the script's scenes with mask-2 scene extension; the captions of
VIDEO's scenes come from its ``.scenes.json`` or from ``--previous-script``. ``--steps``,
``--seed``, ``--guidance``, ``--sampler`` and ``--dynamic-cfg`` override the script's sampler
options; ``--frames/--height/--width/--scenes`` the model's scene geometry. Every caption is
encoded before the transformer is loaded, and T5 is released first (``--keep-text-encoder``
keeps it). ``--cache-conditions`` computes the condition scenes' keys/values once per
extension; it is exact only under the causal-condition mask, so it needs a model whose
``m2dit.json`` / bundle records ``cond_mask_mode="causal_conditions"`` (or
``--extension-mask causal_conditions``) and is refused otherwise. ``--mesh fsdp=2,tensor=2``
shards the transformer over that many devices. ``--lora FILE [--lora-scale S]`` merges a
diffusers-layout CogVideoX LoRA into the transformer's weights as it loads. Installed as the
``m2dit-sample`` console script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any

from m2dit_jax import media
from m2dit_jax.inference.script import SAMPLERS, SampleScript, load_script

VIDEO_EXTENSIONS = (".mp4", ".gif")


def sidecar_path(video_path: str) -> str:
    """Where the per-scene captions of a sampled video are stored."""
    return video_path + ".scenes.json"


def read_previous_captions(video_path: str, previous_script: str | None) -> list[str]:
    if previous_script:
        return load_script(previous_script).captions
    path = sidecar_path(video_path)
    if not os.path.isfile(path):
        raise ValueError(
            f"--extend {video_path}: its scene captions are unknown; pass --previous-script "
            f"(the script it was made from) or keep the {os.path.basename(path)} written "
            "next to it by launch.sample"
        )
    with open(path) as f:
        data = json.load(f)
    captions = data.get("captions")
    if not isinstance(captions, list) or not all(isinstance(c, str) and c for c in captions):
        raise ValueError(f"{path}: 'captions' must be a list of non-empty strings")
    return captions


def apply_overrides(script: SampleScript, args: argparse.Namespace) -> SampleScript:
    changes = {
        k: v
        for k, v in (
            ("steps", args.steps),
            ("seed", args.seed),
            ("guidance_scale", args.guidance),
            ("name", args.sampler),
            ("dynamic_cfg", True if getattr(args, "dynamic_cfg", False) else None),
        )
        if v is not None
    }
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.guidance is not None and not args.guidance >= 0:
        raise ValueError(f"--guidance must be >= 0, got {args.guidance}")
    if not changes:
        return script
    return dataclasses.replace(script, sampler=dataclasses.replace(script.sampler, **changes))


def parse_tiling(value: str | None):
    """``--tiling`` "auto" (diffusers' default tile: 240x360 px) or "HxW" -> SpatialTiling."""
    if not value:
        return None
    from m2dit_jax.encoders.vae import SpatialTiling

    if value == "auto":
        return SpatialTiling()
    try:
        h, w = (int(x) for x in value.lower().split("x"))
        return SpatialTiling(h, w)
    except ValueError as err:
        raise ValueError(
            f"--tiling must be 'auto' or HEIGHTxWIDTH (e.g. 240x360), got {value!r}"
        ) from err


def parse_mesh(value: str | None):
    """``--mesh fsdp=8,tensor=1`` -> a mesh over the first devices (None: one device)."""
    if not value:
        return None
    import math

    import jax

    from m2dit_jax.sharding import make_mesh

    try:
        shape = {k.strip(): int(v) for k, v in (p.split("=") for p in value.split(","))}
    except ValueError as err:
        raise ValueError(f"--mesh must look like fsdp=8,tensor=1, got {value!r}") from err
    if any(v < 1 for v in shape.values()):
        raise ValueError(f"--mesh axis sizes must be positive, got {value!r}")
    return make_mesh(shape, jax.devices()[: math.prod(shape.values())])


def write_outputs(
    out: str,
    video,
    captions: list[str],
    *,
    fps: int,
    scale: int,
    gif: bool,
    sheet: bool,
    frames_per_scene: int,
    extra: dict[str, Any] | None = None,
) -> list[str]:
    """Writes the video (+ sidecar, optional GIF and contact sheet); returns the paths."""
    num_scenes = len(captions)
    paths = []
    if out.endswith(".gif"):
        paths.append(media.write_gif(out, video, fps=fps, scale=scale, num_scenes=num_scenes))
    else:
        paths.append(media.write_mp4(out, video, fps=fps, scale=scale))
    stem = os.path.splitext(out)[0]
    if gif and not out.endswith(".gif"):
        paths.append(
            media.write_gif(stem + ".gif", video, fps=fps, scale=scale, num_scenes=num_scenes)
        )
    if sheet:
        paths.append(
            media.write_contact_sheet(stem + "_sheet.png", [video], [captions], scale=scale)
        )
    with open(sidecar_path(out), "w") as f:
        json.dump(
            {"captions": captions, "frames_per_scene": frames_per_scene, **(extra or {})},
            f,
            indent=2,
        )
    paths.append(sidecar_path(out))
    return paths


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="pipeline folder or bundle (launch.export)")
    parser.add_argument("--script", required=True, help="YAML script (see examples/)")
    parser.add_argument("--out", required=True, help="output video, .mp4 or .gif")
    parser.add_argument("--extend", default=None, help="continue this video (mp4/gif)")
    parser.add_argument("--previous-script", default=None, help="captions of --extend's scenes")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--sampler", choices=SAMPLERS, default=None)
    parser.add_argument(
        "--dynamic-cfg", action="store_true", help="CogVideoX's use_dynamic_cfg guidance schedule"
    )
    parser.add_argument("--frames", type=int, default=None, help="pixel frames per scene")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--scenes", type=int, default=None, help="scenes sampled jointly")
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="pipeline folders"
    )
    parser.add_argument("--tiling", default=None, help="VAE tiling: auto or HxW pixels")
    parser.add_argument(
        "--conditions",
        choices=("clean", "release"),
        default="clean",
        help="extension conditions: exactly clean (training) or the release's posterior "
        "sample + add_noise at t=0",
    )
    parser.add_argument(
        "--cache-conditions",
        action="store_true",
        help="extension: compute the condition scenes' keys/values once per extension (exact "
        "only for models trained with diffusion.cond_mask_mode=causal_conditions; refused "
        "otherwise)",
    )
    parser.add_argument(
        "--extension-mask",
        choices=("mask2dit", "causal_conditions"),
        default=None,
        help="extension attention (default: what the model records, else mask2dit)",
    )
    parser.add_argument(
        "--mesh",
        default=None,
        help="shard the transformer over a device mesh, e.g. fsdp=2,tensor=2 (default: one device)",
    )
    parser.add_argument("--keep-text-encoder", action="store_true")
    parser.add_argument(
        "--lora",
        default=None,
        help="a diffusers-layout CogVideoX LoRA safetensors file (ours or a third party's), "
        "merged into the transformer's weights when it loads",
    )
    parser.add_argument(
        "--lora-scale", type=float, default=1.0, help="scale of --lora (x the file's own)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    parser.add_argument(
        "--scale", type=int, default=None, help="pixel enlargement (bundles 4, else 1)"
    )
    parser.add_argument("--fps", type=int, default=None, help="default: the model's fps")
    parser.add_argument("--gif", action="store_true", help="also write a GIF next to --out")
    parser.add_argument("--sheet", action="store_true", help="also write a contact sheet PNG")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ValueError as err:
        parser.exit(2, f"launch.sample: error: {err}\n")


def _run(args: argparse.Namespace) -> list[str]:
    if not args.out.endswith(VIDEO_EXTENSIONS):
        raise ValueError(f"--out must end in one of {VIDEO_EXTENSIONS}, got {args.out}")
    script = apply_overrides(load_script(args.script), args)
    previous = None
    if args.extend:
        previous = read_previous_captions(args.extend, args.previous_script)
        if not os.path.isfile(args.extend):
            raise ValueError(f"cannot read video {args.extend}: file not found")
    tiling = parse_tiling(args.tiling)
    # Heavy imports after the cheap argument checks: errors in a script show up instantly.
    from m2dit_jax.inference.pipeline import SamplingPipeline

    pipeline = SamplingPipeline.from_pretrained(
        args.model,
        dtype=args.dtype,
        mesh=parse_mesh(args.mesh),
        tiling=tiling,
        condition_mode=args.conditions,
        progress=not args.no_progress,
        lora=args.lora,
        lora_scale=args.lora_scale,
        extension_mask=args.extension_mask,
    )
    if args.cache_conditions:
        pipeline.check_cache_conditions()  # before any model work
    geometry = {
        k: v
        for k, v in (
            ("frames", args.frames),
            ("height", args.height),
            ("width", args.width),
            ("num_scenes", args.scenes),
        )
        if v is not None
    }
    if geometry:
        pipeline.set_video(**geometry)
    spec = pipeline.video
    start = time.perf_counter()
    existing = None
    if args.extend:
        existing = media.read_video(args.extend, size=(spec.height, spec.width))
        pipeline.split_video(existing)  # frame count checked before any model work
    # Every caption first (T5 loaded once), then T5 released before the transformer loads.
    pipeline.prepare_captions([*(previous or []), *script.captions, *script.negatives])
    if not args.keep_text_encoder:
        pipeline.release_text_encoder()
    if args.extend:
        video = pipeline.extend(existing, previous, script, cache_conditions=args.cache_conditions)
        captions = previous + script.captions
    else:
        video = pipeline.generate(script, cache_conditions=args.cache_conditions)
        captions = script.captions
    seconds = time.perf_counter() - start
    is_bundle = pipeline.meta.get("format") == "m2dit_bundle"
    scale = args.scale if args.scale is not None else (4 if is_bundle else 1)
    paths = write_outputs(
        args.out,
        video,
        captions,
        fps=args.fps or spec.fps,
        scale=scale,
        gif=args.gif,
        sheet=args.sheet,
        frames_per_scene=spec.frames,
        extra={
            "model": os.path.abspath(args.model),
            "sampler": dataclasses.asdict(script.sampler),
            "conditions": args.conditions,
            "extension_mask": pipeline.extension_mask,
            "cache_conditions": bool(args.cache_conditions),
            "mesh": args.mesh,
        },
    )
    print(
        f"{len(captions)} scenes x {spec.frames} frames at {spec.height}x{spec.width} "
        f"({script.sampler.name}, {script.sampler.steps} steps, {seconds:.1f}s incl. compile) "
        f"-> {', '.join(paths)}"
    )
    return paths


def run() -> None:
    main()


if __name__ == "__main__":
    main()
