"""Does the demo's stage 1 draw the captioned shape? A single-scene probe of stage 1 alone.

    .venv/bin/python benchmarks/shape_probe.py --workdir runs/probe            # ~15 min, 1 core
    .venv/bin/python benchmarks/shape_probe.py --workdir runs/probe_h8 \\
        --set model.num_heads=8 --set model.head_dim=16 --sampler dpm

Trains ``configs.demo.get_pretrain_config(overrides)`` — the demo's stage 1, single-scene clips,
on the demo's pixel codec (stage 0, ``WORKDIR/autoencoder.npz``; ``--fold plain``: on the plain
space-to-depth fold, as the probes before the codec) — in ``--workdir`` (a complete run is
reused), exports its EMA weights, samples ``--num``
held-out 1-scene scripts (never seen in training) and scores them with the analytic detectors:
colour / motion / shape = caption, clean object + background, the mean object area per
captioned shape (the data: 64 / 52 / 28 px for square / circle / plus at 16x16) and the
shape confusion matrix (rows: captioned, columns: detected square / circle / plus / none).
Writes ``probe.json`` and ``probe_sheet.png`` (the first 12 samples) to the workdir.

``--restart 600,400,200`` also asks *where* the outline is lost: the held-out scripts'
reference renders are noised to each of these timesteps (the first sampler step at or below
it) and denoised from there by the same sampler (``SamplingPipeline.sample_latents(...,
start_step=k)``, SDEdit-style), then scored like the samples. A model that keeps the shape
from t = 200 but not from t = 600 loses the outline in between.

The README's "Making motion and shape visible: what was tried" reports its figures; the probe
isolates what stage 1 learns in ~1/3 of a demo's time, before stage 2 adds mask 1 and mask 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch.demo import parse_override  # noqa: E402  (the demo's --set convention)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument(
        "--set",
        type=parse_override,
        action="append",
        default=[],
        dest="overrides",
        help="stage-1 config override, e.g. --set train.num_steps=3000",
    )
    parser.add_argument(
        "--fold",
        default="codec",
        choices=("codec", "plain"),
        help="codec: make demo's pixel codec (trained into WORKDIR/autoencoder.npz, or reused); "
        "plain: patch 2 on the lossless fold, as every probe before 2026-12-07's codec",
    )
    parser.add_argument("--num", type=int, default=96, help="held-out 1-scene scripts")
    parser.add_argument("--sampler", default="ddim", choices=("ddim", "dpm"))
    parser.add_argument("--sample_steps", type=int, default=50)
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=1.0,
        help="> 1 needs --set diffusion.caption_dropout=0.1 (or more)",
    )
    parser.add_argument("--seed", type=int, default=0, help="scripts and sampler noise")
    parser.add_argument(
        "--restart",
        default="",
        help="comma-separated timesteps, e.g. 600,400,200: also denoise the references "
        "noised to each (see the module doc)",
    )
    args = parser.parse_args(argv)
    restart_ts = [int(t) for t in args.restart.split(",") if t.strip()]
    if any(not 0 <= t < 1000 for t in restart_ts):
        raise SystemExit(f"--restart timesteps must be in [0, 1000), got {restart_ts}")

    from configs import demo
    from m2dit_jax import media
    from m2dit_jax.data.synthetic_shapes import sample_held_out_scripts
    from m2dit_jax.eval import synthetic_metrics
    from m2dit_jax.eval.shapes_detectors import shape_report
    from m2dit_jax.export import export
    from m2dit_jax.inference.bundle import load_bundle
    from m2dit_jax.inference.pipeline import SamplingPipeline
    from m2dit_jax.inference.script import SamplerOptions
    from m2dit_jax.train import train_and_evaluate

    overrides = dict(args.overrides)
    if args.fold == "plain":
        overrides = {**demo.PLAIN_FOLD_OVERRIDES, **overrides}
    config = demo.get_pretrain_config(overrides)
    codec_s = 0.0
    if config.data.video_encoder == "conv" and not config.data.autoencoder:
        from launch.demo import train_stage_zero

        os.makedirs(args.workdir, exist_ok=True)
        config.data.autoencoder = os.path.join(args.workdir, "autoencoder.npz")
        t0 = time.perf_counter()
        train_stage_zero(config.data.autoencoder, config, demo.AUTOENCODER)
        codec_s = time.perf_counter() - t0
    if args.guidance_scale > 1 and float(config.diffusion.caption_dropout) <= 0:
        raise SystemExit(
            f"--guidance_scale {args.guidance_scale} needs a model trained with caption "
            "dropout: add --set diffusion.caption_dropout=0.1, or use --guidance_scale 1"
        )
    t0 = time.perf_counter()
    result = train_and_evaluate(config, args.workdir)
    train_s = time.perf_counter() - t0
    bundle = os.path.join(args.workdir, "bundle")
    export(args.workdir, bundle)
    pipe = SamplingPipeline.from_bundle(load_bundle(bundle))
    scripts = sample_held_out_scripts(
        args.num, 1, holdout_fraction=float(config.data.holdout_fraction), seed=args.seed
    )
    captions = [s.captions() for s in scripts]
    sampler = SamplerOptions(
        name=args.sampler,
        steps=args.sample_steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
    )
    videos = list(pipe.decode_latents(pipe.sample_latents(captions, sampler)))
    summary, _ = synthetic_metrics.score_videos(videos, scripts)
    restarts = {}
    if restart_ts:
        restarts = _restarts(pipe, config, scripts, captions, sampler, restart_ts, args.seed)
    report = {
        "overrides": overrides,
        "args": {k: v for k, v in vars(args).items() if k != "overrides"},
        "steps": int(result["step"]),
        "train_s": train_s,
        "codec_s": codec_s,
        "mean_step_time_s": result.get("mean_step_time_s"),
        "eval_loss_ema": result.get("eval", {}).get("loss_ema"),
        "scores": {k: v for k, v in summary.items() if v == v},  # drop NaN (1-scene: none)
        **shape_report(videos, [s.shape for s in scripts]),
    }
    if restarts:
        report["restart"] = restarts
    with open(os.path.join(args.workdir, "probe.json"), "w") as f:
        json.dump(report, f, indent=1)
    media.write_contact_sheet(
        os.path.join(args.workdir, "probe_sheet.png"), videos[:12], captions[:12], scale=4
    )
    print(json.dumps(report, indent=1))
    return report


def _restarts(pipe, config, scripts, captions, sampler, timesteps, seed) -> dict:
    """{t: scores + confusion} of the references noised to ~t and denoised from there."""
    import jax
    import numpy as np

    from m2dit_jax.data.synthetic_shapes import ShapesGeometry, render_script
    from m2dit_jax.eval import synthetic_metrics
    from m2dit_jax.eval.shapes_detectors import shape_report

    d = config.data
    geometry = ShapesGeometry(frames=int(d.frames), height=int(d.height), width=int(d.width))
    refs = [render_script(s, geometry, seed=[seed, 1, i])[1] for i, s in enumerate(scripts)]
    x0 = np.concatenate([np.asarray(pipe.encode_video(r)) for r in refs])
    table = [int(t) for t in pipe.schedule.timesteps(sampler.steps)]
    eps = jax.random.normal(jax.random.key(seed + 1), x0.shape)  # the same noise at every t
    out = {}
    for t in timesteps:
        k = next(i for i, step_t in enumerate(table) if step_t <= t)
        xt = pipe.schedule.add_noise(x0, eps, np.full((len(refs),), table[k]))
        lat = pipe.sample_latents(captions, sampler, noise=xt, start_step=k)
        videos = list(pipe.decode_latents(lat))
        summary, _ = synthetic_metrics.score_videos(videos, scripts)
        out[str(t)] = {
            "timestep": table[k],
            "start_step": k,
            "scores": {key: v for key, v in summary.items() if v == v},
            "confusion": shape_report(videos, [s.shape for s in scripts])["confusion"],
        }
    return out


if __name__ == "__main__":
    main()
