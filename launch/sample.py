"""Samples a multi-scene video from an exported bundle and a YAML script.

    python -m launch.sample --model BUNDLE --script examples/three_scenes.yaml --out out.mp4
    python -m launch.sample --model BUNDLE --extend out.mp4 \
        --script examples/two_more_scenes.yaml --out longer.mp4

``--out`` ends in .mp4 or .gif; next to it goes ``<out>.scenes.json`` (the captions of every
scene, which ``--extend`` reads back to condition on), and optionally ``--gif``/``--sheet``
extra files. ``--extend VIDEO`` reads the video (resized to the model's frame size), encodes it
scene by scene and appends the script's scenes with mask-2 scene extension; the captions of
VIDEO's scenes come from its ``.scenes.json`` or from ``--previous-script``. ``--steps``,
``--seed``, ``--guidance`` and ``--sampler`` override the script's sampler options.
Installed as the ``m2dit-sample`` console script.
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
        )
        if v is not None
    }
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if not changes:
        return script
    return dataclasses.replace(script, sampler=dataclasses.replace(script.sampler, **changes))


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
    parser.add_argument("--model", required=True, help="bundle folder from launch.export")
    parser.add_argument("--script", required=True, help="YAML script (see examples/)")
    parser.add_argument("--out", required=True, help="output video, .mp4 or .gif")
    parser.add_argument("--extend", default=None, help="continue this video (mp4/gif)")
    parser.add_argument("--previous-script", default=None, help="captions of --extend's scenes")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--sampler", choices=SAMPLERS, default=None)
    parser.add_argument("--scale", type=int, default=4, help="pixel enlargement in the files")
    parser.add_argument("--fps", type=int, default=None, help="default: the bundle's fps")
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
    # Heavy imports after the cheap argument checks: errors in a script show up instantly.
    from m2dit_jax.inference.bundle import load_bundle
    from m2dit_jax.inference.pipeline import SamplingPipeline

    bundle = load_bundle(args.model)
    pipeline = SamplingPipeline.from_bundle(bundle)
    spec = pipeline.video
    start = time.perf_counter()
    if args.extend:
        existing = media.read_video(args.extend, size=(spec.height, spec.width))
        video = pipeline.extend(existing, previous, script)
        captions = previous + script.captions
    else:
        video = pipeline.generate(script)
        captions = script.captions
    seconds = time.perf_counter() - start
    paths = write_outputs(
        args.out,
        video,
        captions,
        fps=args.fps or spec.fps,
        scale=args.scale,
        gif=args.gif,
        sheet=args.sheet,
        frames_per_scene=spec.frames,
        extra={"model": os.path.abspath(args.model), "sampler": dataclasses.asdict(script.sampler)},
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
