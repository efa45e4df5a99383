"""Scores a folder of sampled videos and writes report.json, report.md and report.png.

    python -m launch.eval --videos DIR [--scripts DIR] [--reference DIR] --out report.json

``DIR`` holds ``*.mp4`` / ``*.gif`` videos, each with the ``<video>.scenes.json`` sidecar that
``launch.sample`` writes (per-scene captions and per-scene pixel frames ``scene_frames``:
scenes may have their own lengths, and the true cut boundaries are then the scenes' cumulative
starts). Always: shot-cut accuracy of the scene boundaries. With ``--reference``: I3D FVD
against that folder's videos. With ``--embedder module:function`` (``function()`` returns
``(image_embed, text_embed)``, e.g. a local CLIP): visual / semantic / sequence consistency.
Videos whose captions follow the ``synthetic_shapes`` grammar also get the analytic detectors.
``--scripts`` holds each video's YAML script as ``<stem>.yaml`` (its scenes are the generated
ones; earlier sidecar scenes are the conditions of an extended video). Installed as the
``m2dit-eval`` console script.
"""

from __future__ import annotations

import argparse

from m2dit_jax.eval import cuts


def _frame_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW or N (e.g. 16x16), got {text!r}")
    return size


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", required=True, help="folder of sampled videos + sidecars")
    parser.add_argument("--out", required=True, help="report .json (.md and .png go next to it)")
    parser.add_argument("--scripts", default=None, help="folder of <stem>.yaml scripts")
    parser.add_argument("--reference", default=None, help="folder of reference videos (FVD)")
    parser.add_argument("--embedder", default=None, help="module:function -> (image, text) fns")
    parser.add_argument(
        "--frame-size", type=_frame_size, default=None, help="resize frames on reading, HxW"
    )
    parser.add_argument("--cut-threshold", type=float, default=cuts.DEFAULT_THRESHOLD)
    parser.add_argument("--tolerance", type=int, default=cuts.TOLERANCE, help="frames")
    parser.add_argument("--devices", type=int, default=None, help="local devices for I3D (all)")
    parser.add_argument("--frame-sampling", choices=("uniform", "first"), default="uniform")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, ImportError) as err:
        parser.exit(2, f"launch.eval: error: {err}\n")


def _run(args: argparse.Namespace) -> list[str]:
    from m2dit_jax.eval import report, report_output

    if not args.out.endswith(".json"):
        raise ValueError(f"--out must end in .json, got {args.out}")
    if args.tolerance < 0 or (args.devices is not None and args.devices < 1):
        raise ValueError("--tolerance must be >= 0 and --devices >= 1")
    image_embed = text_embed = None
    if args.embedder:
        image_embed, text_embed = report.load_embedder(args.embedder)
    result = report.evaluate(
        args.videos,
        scripts_dir=args.scripts,
        reference_dir=args.reference,
        image_embed=image_embed,
        text_embed=text_embed,
        frame_size=args.frame_size,
        cut_threshold=args.cut_threshold,
        tolerance=args.tolerance,
        fvd_devices=args.devices,
        frame_sampling=args.frame_sampling,
        progress=not args.no_progress,
    )
    paths = report_output.write_report(result, args.out)
    for metric, value in report_output.summary_rows(result):
        print(f"{metric}: {value}")
    print(f"-> {', '.join(paths)}")
    return paths


def run() -> None:
    main()


if __name__ == "__main__":
    main()
