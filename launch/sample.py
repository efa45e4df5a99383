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
scene and its pixel frames, ``scene_frames``, which ``--extend`` and ``launch.eval`` read back;
``frames_per_scene`` is their common count, null when a script gives scenes their own
``frames:`` / ``seconds:``), and optionally ``--gif``/``--sheet``
extra files. ``--extend VIDEO`` reads the video (resized to the model's frame size), encodes it
scene by scene and appends the script's scenes with mask-2 scene extension; the captions of
VIDEO's scenes come from its ``.scenes.json`` or from ``--previous-script``, their lengths from
the sidecar's ``scene_frames`` (else equal scenes). ``--steps``,
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
from collections.abc import Sequence
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


def read_previous_frames(
    video_path: str, num_scenes: int, total_frames: int
) -> tuple[int, ...] | None:
    """Pixel frames of each scene of the ``--extend`` video from its sidecar's ``scene_frames``
    (checked against the video); None for equal scenes, or a sidecar without them: the equal
    path, which splits the video into scenes of the model's frames."""
    path = sidecar_path(video_path)
    counts = None
    if os.path.isfile(path):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not readable JSON ({err})") from err
        counts = data.get("scene_frames") if isinstance(data, dict) else None
    if counts is not None:
        if not isinstance(counts, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts
        ):
            raise ValueError(f"{path}: 'scene_frames' must be a list of positive integers")
        if len(counts) != num_scenes:
            raise ValueError(
                f"{path}: 'scene_frames' has {len(counts)} entries for the {num_scenes} scenes "
                f"of {video_path}"
            )
        if sum(counts) != total_frames:
            raise ValueError(
                f"{path}: 'scene_frames' {counts} add up to {sum(counts)} frames, but "
                f"{video_path} has {total_frames}"
            )
        if len(set(counts)) > 1:
            return tuple(counts)
    return None


def describe_scenes(scene_frames: Sequence[int]) -> str:
    """The summary's scene part: "3 scenes x 9 frames" (equal), "3 scenes of 5, 9, 13 frames"."""
    counts = list(scene_frames)
    if len(set(counts)) == 1:
        return f"{len(counts)} scenes x {counts[0]} frames"
    return f"{len(counts)} scenes of {', '.join(str(c) for c in counts)} frames"


def output_scene_frames(video, expected: Sequence[int]) -> list[int]:
    """The per-scene pixel frames of a sampled ``video``: ``expected`` (the pipeline accepts
    only lengths that round-trip through the autoencoder); a ValueError when they do not add
    up to the video's frames."""
    counts = [int(c) for c in expected]
    if sum(counts) == len(video):
        return counts
    raise ValueError(
        f"the sampled video has {len(video)} frames, not the {sum(counts)} of its scenes {counts}"
    )


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


def _write_gif(path: str, video, fps: int, scale: int, scene_frames: Sequence[int]) -> str:
    """``media.write_gif`` with its playback bar; for scenes of different lengths the bar's
    scene cuts are drawn at the scenes' real starts."""
    import numpy as np

    if len(set(scene_frames)) == 1:
        return media.write_gif(path, video, fps=fps, scale=scale, num_scenes=len(scene_frames))
    frames = media.enlarge(media.check_video(video), scale)
    bar = media.timeline_strip(len(frames), frames.shape[2], 1, max(3, scale))
    for start in np.cumsum(scene_frames)[:-1]:
        x = int(round(frames.shape[2] * start / len(frames)))
        bar[:, :, max(0, x - 1) : x + 1] = (230, 40, 40)
    return media.write_gif(path, np.concatenate([frames, bar], axis=1), fps=fps, scale=1)


def _pad_scenes(video, scene_frames: Sequence[int]):
    """Scenes of different lengths padded with white frames to the longest one (for the
    contact sheet, whose columns are equal scenes)."""
    import numpy as np

    longest = max(scene_frames)
    scenes = np.split(np.asarray(video), np.cumsum(scene_frames)[:-1])
    return np.concatenate(
        [
            np.concatenate([s, np.full((longest - len(s), *s.shape[1:]), 255, s.dtype)])
            for s in scenes
        ]
    )


def write_outputs(
    out: str,
    video,
    captions: list[str],
    *,
    fps: int,
    scale: int,
    gif: bool,
    sheet: bool,
    frames_per_scene: int | None = None,
    scene_frames: Sequence[int] | None = None,
    extra: dict[str, Any] | None = None,
) -> list[str]:
    """Writes the video (+ sidecar, optional GIF and contact sheet); returns the paths.

    ``scene_frames``: pixel frames of every scene (default: ``frames_per_scene`` each, else
    the video split into equal scenes); the sidecar records them, and ``frames_per_scene``
    (null when they differ)."""
    num_scenes = len(captions)
    if scene_frames is None:
        if frames_per_scene is None:
            if len(video) % num_scenes:
                raise ValueError(
                    f"{len(video)} frames do not split into {num_scenes} equal scenes: "
                    "give scene_frames"
                )
            frames_per_scene = len(video) // num_scenes
        scene_frames = [frames_per_scene] * num_scenes
    scene_frames = [int(f) for f in scene_frames]
    if len(scene_frames) != num_scenes or min(scene_frames) < 1:
        raise ValueError(f"scene_frames {scene_frames}: need one positive count per caption")
    if sum(scene_frames) != len(video):
        raise ValueError(
            f"scene_frames {scene_frames} add up to {sum(scene_frames)}, the video has "
            f"{len(video)} frames"
        )
    equal = scene_frames[0] if len(set(scene_frames)) == 1 else None
    paths = []
    if out.endswith(".gif"):
        paths.append(_write_gif(out, video, fps, scale, scene_frames))
    else:
        paths.append(media.write_mp4(out, video, fps=fps, scale=scale))
    stem = os.path.splitext(out)[0]
    if gif and not out.endswith(".gif"):
        paths.append(_write_gif(stem + ".gif", video, fps, scale, scene_frames))
    if sheet:
        sheet_video = video if equal is not None else _pad_scenes(video, scene_frames)
        paths.append(
            media.write_contact_sheet(stem + "_sheet.png", [sheet_video], [captions], scale=scale)
        )
    with open(sidecar_path(out), "w") as f:
        json.dump(
            {
                "captions": captions,
                "frames_per_scene": equal,
                "scene_frames": scene_frames,
                **(extra or {}),
            },
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
    existing = previous_frames = None
    if args.extend:
        existing = media.read_video(args.extend, size=(spec.height, spec.width))
        previous_frames = read_previous_frames(args.extend, len(previous), len(existing))
        # frame counts checked before any model work
        pipeline.split_video(existing, previous_frames)
    new_frames = pipeline.scene_pixel_frames(script)
    # Every caption first (T5 loaded once), then T5 released before the transformer loads.
    pipeline.prepare_captions([*(previous or []), *script.captions, *script.negatives])
    if not args.keep_text_encoder:
        pipeline.release_text_encoder()
    if args.extend:
        video = pipeline.extend(
            existing,
            previous,
            script,
            cache_conditions=args.cache_conditions,
            previous_frames=previous_frames,
        )
        captions = previous + script.captions
        prior = previous_frames or [len(s) for s in pipeline.split_video(existing)]
        expected = [*prior, *new_frames]
    else:
        video = pipeline.generate(script, cache_conditions=args.cache_conditions)
        captions = script.captions
        expected = list(new_frames)
    scene_frames = output_scene_frames(video, expected)
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
        scene_frames=scene_frames,
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
        f"{describe_scenes(scene_frames)} at {spec.height}x{spec.width} "
        f"({script.sampler.name}, {script.sampler.steps} steps, {seconds:.1f}s incl. compile) "
        f"-> {', '.join(paths)}"
    )
    return paths


def run() -> None:
    main()


if __name__ == "__main__":
    main()
