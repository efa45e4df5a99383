"""`make demo`: train a real Mask²DiT on one CPU, sample held-out scripts, extend, evaluate.

    python -m launch.demo --workdir runs/demo            # what `make demo` runs

1. Trains ``configs/shapes_tiny.py`` in three stages (``configs/demo.py``) on the
   ``synthetic_shapes`` source: stage 0 trains the pixel codec in ``WORKDIR/autoencoder.npz``
   (16x16 px frames folded 2x2x2 by space-to-depth, then a small conv autoencoder to a 4x4x16
   latent per 2 frames; ``configs.demo.AUTOENCODER``), captions are hashed-word embeddings.
   Stage 1 pretrains on single-scene clips in ``WORKDIR/pretrain`` (the stand-in for the
   CogVideoX checkpoint the paper starts from); stage 2 fine-tunes those EMA weights on 3-scene
   clips with mask 1 and mask 2 in the workdir. Checkpoints, TensorBoard logs (``tb/``) and
   ``metrics.jsonl`` go to each stage's folder; a re-run resumes (or skips a complete stage).
2. Exports the EMA weights to ``WORKDIR/bundle`` (what ``launch.sample --model`` loads).
3. Samples ``--num_eval`` held-out 3-scene scripts (never seen in training) jointly with mask 1,
   then extends ``--num_extend`` of them by two scenes each with mask-2 scene extension (DDIM,
   classifier-free guidance ``--guidance_scale``, default ``configs.demo.DEMO_GUIDANCE_SCALE``,
   against the empty caption stage 2 learns through caption dropout).
4. Scores every scene with the analytic detectors (``m2dit_jax.eval.synthetic_metrics``):
   alignment (colour / motion of scene i match caption i) and consistency (shape / background of
   every later scene match scene 1 — later captions never state the shape, no caption states the
   background). Writes ``samples/*.gif``, ``samples/*.mp4``, ``contact_sheet.png``,
   ``eval.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from configs.demo import (
    AUTOENCODER,
    DEMO_GUIDANCE_SCALE,
    DEMO_OVERRIDES,
    PRETRAIN_OVERRIDES,
    get_config,
    get_pretrain_config,
)


def extension_scripts(scripts: list, num_new: int, seed: int) -> list:
    """Each script continued by ``num_new`` scenes of random colour and motion."""
    from m2dit_jax.data.synthetic_shapes import COLOURS, MOTIONS, Script

    rng = np.random.default_rng([seed, 0xE7])
    out = []
    for s in scripts:
        colours = tuple(int(c) for c in rng.integers(len(COLOURS), size=num_new))
        motions = tuple(int(m) for m in rng.integers(len(MOTIONS), size=num_new))
        out.append(Script(s.shape, s.background, s.colours + colours, s.motions + motions))
    return out


def stage_one_overrides(
    overrides: dict[str, Any], pretrain_overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """Stage 1's overrides: ``pretrain_overrides`` plus every ``model.*`` key of the stage-2
    ``overrides`` that it does not set itself (stage 2 starts from stage 1's weights, so a
    model change asked of the demo is a change to both stages)."""
    out = dict(pretrain_overrides or {})
    for key, value in overrides.items():
        if key.startswith("model.") and key not in out:
            out[key] = value
    return out


def check_stages_share_model(pretrain_config, config) -> None:
    """ValueError naming the differing ``model.*`` keys when stage 2 could not load stage 1."""
    a, b = pretrain_config.model.to_dict(), config.model.to_dict()
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if differ:
        detail = ", ".join(
            f"model.{k}: {a.get(k)!r} (stage 1) vs {b.get(k)!r} (stage 2)" for k in differ
        )
        raise ValueError(
            f"stage 2 starts from stage 1's weights, but their models differ ({detail}); set "
            "these keys to one value in both --set and --set_pretrain"
        )


def write_samples(
    out_dir: str, names: list[str], videos, captions: list[list[str]], fps: int, scale: int
) -> list[str]:
    from m2dit_jax import media

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, video, caps in zip(names, videos, captions):
        stem = os.path.join(out_dir, name)
        paths.append(
            media.write_gif(stem + ".gif", video, fps=fps, scale=scale, num_scenes=len(caps))
        )
        paths.append(media.write_mp4(stem + ".mp4", video, fps=fps, scale=scale))
        with open(stem + ".mp4.scenes.json", "w") as f:
            per_scene = video.shape[0] // len(caps)
            json.dump(
                {
                    "captions": caps,
                    "frames_per_scene": per_scene,
                    "scene_frames": [per_scene] * len(caps),
                },
                f,
            )
    return paths


# Contact-sheet titles of the ablation comparison rows (m2dit_jax.ablation, mask modes); plain
# ASCII: PIL's built-in font has no superscript 2 (it drew a box).
ABLATION_TITLES = {
    "mask2dit": "Mask2DiT (mask 1)",
    "full": "no mask (full attention)",
    "independent": "independent scenes",
}


def ablation_command(
    ablation_dir: str,
    pretrain_dir: str | None,
    autoencoder: str | None = None,
    num_steps: int | None = None,
) -> str:
    """The command that trains the contact sheet's ablation models: like the demo's stage 2
    (``num_steps`` of them), from stage 1's weights (``pretrain_dir``) when stage 1 ran, else
    from random weights, on the demo's pixel codec (``autoencoder``) when it has one."""
    command = f"python benchmarks/ablation.py --out {ablation_dir} --seeds 0"
    command += f" --steps {num_steps}" if num_steps else ""
    command += " --variants full independent"
    command += f" --init_from {pretrain_dir}" if pretrain_dir else ""
    return command + (f" --autoencoder {autoencoder}" if autoencoder else "")


def ablation_sheet_rows(
    bundles: dict[str, str],
    *,
    spec,
    scripts: list,
    videos,
    sampler,
    batch_size: int,
    num_scripts: int = 2,
    main_bundle: str | None = None,
) -> tuple[list, list[list[str]], list[str], dict[str, Any]]:
    """Contact-sheet rows comparing Mask²DiT with the ablation models on the same scripts.

    ``bundles``: {mode: bundle_dir} (``m2dit_jax.ablation.find_ablation_bundles``). For each of
    the first ``num_scripts`` ``scripts``: the Mask²DiT row (``videos[i]``, the demo's own
    sample), then one row per ablation bundle, sampled with the same captions, the same
    ``sampler`` and the same initial noise (the first rows of what the demo drew for its
    ``batch_size`` videos). Raises ValueError when a bundle's video spec (frames / height /
    width / num_scenes) differs from ``spec``. Returns (videos, captions, titles, record) with
    ``record`` = the bundles used and every row's per-scene detected attributes.
    """
    from m2dit_jax.diffusion.generation import initial_noise
    from m2dit_jax.eval import synthetic_metrics
    from m2dit_jax.inference.bundle import load_bundle
    from m2dit_jax.inference.pipeline import SamplingPipeline

    n = min(num_scripts, len(scripts))
    if n > batch_size or n > len(videos):
        raise ValueError(f"need {n} demo samples of a batch of >= {n}, got batch_size={batch_size}")
    keys = ("frames", "height", "width", "num_scenes")
    want = {k: getattr(spec, k) for k in keys}
    pipelines = {}
    for mode, path in bundles.items():
        pipe = SamplingPipeline.from_bundle(load_bundle(path))
        got = {k: getattr(pipe.video, k) for k in keys}
        if got != want:
            raise ValueError(
                f"ablation bundle {path} ({mode}) has video spec {got}, the demo bundle "
                f"{main_bundle or '(main)'} has {want}: retrain it with the demo's config"
            )
        pipelines[mode] = pipe
    captions = [s.captions() for s in scripts[:n]]
    samples = {"mask2dit": list(videos[:n])}
    for mode, pipe in pipelines.items():
        lat = pipe.latent_shape
        shape = (batch_size, spec.num_scenes * lat[0], *lat[1:])
        noise = initial_noise(sampler.seed, shape)[:n]
        samples[mode] = list(
            pipe.decode_latents(pipe.sample_latents(captions, sampler, noise=noise))
        )
    paths = {"mask2dit": main_bundle, **bundles}
    rows_videos, rows_captions, rows_titles, rows_scripts, rows_meta = [], [], [], [], []
    for i in range(n):
        for mode in samples:
            name = f"script_{i:02d}"
            rows_videos.append(samples[mode][i])
            rows_captions.append(captions[i])
            rows_titles.append(f"{name}: {ABLATION_TITLES[mode]}")
            rows_scripts.append(scripts[i])
            rows_meta.append({"script": name, "model": mode, "bundle": paths[mode]})
    _, scored = synthetic_metrics.score_videos(rows_videos, rows_scripts)
    record = {
        "bundles": dict(bundles),
        "rows": [
            {**meta, "title": title, "captions": caps, "scenes": [r["detected"] for r in rows]}
            for meta, title, caps, rows in zip(rows_meta, rows_titles, rows_captions, scored)
        ],
    }
    return rows_videos, rows_captions, rows_titles, record


def codec_path(workdir: str, config, pretrain_config) -> str | None:
    """Where stage 0 writes the conv pixel codec both stages read: ``WORKDIR/autoencoder.npz``;
    None when the stages use no learned codec or both name their own ``data.autoencoder``."""
    stages = (pretrain_config.data, config.data)
    if all(d.video_encoder != "conv" or d.autoencoder for d in stages):
        return None
    if (
        any(d.video_encoder != "conv" for d in stages)
        or len({(d.patch_t, d.patch_s, d.autoencoder) for d in stages}) != 1
    ):
        raise ValueError(
            "stage 1 and stage 2 must read one pixel codec: the same data.video_encoder, "
            "patch_t, patch_s and data.autoencoder in --set and --set_pretrain"
        )
    return os.path.join(workdir, "autoencoder.npz")


def train_stage_zero(path: str, config, settings: dict[str, Any]) -> None:
    """Stage 0: trains the conv pixel codec on ``config``'s training scripts into ``path`` (its
    settings and report beside it, ``.json``) — unless ``path`` exists (a re-run), in which
    case other settings than the file was trained with are an error."""
    from m2dit_jax.encoders.conv_autoencoder import train_shapes_codec

    record_path = os.path.splitext(path)[0] + ".json"
    if os.path.exists(path):
        if os.path.exists(record_path):
            with open(record_path) as f:
                trained = json.load(f)["settings"]
            if trained != settings:
                changed = sorted(
                    k for k in {**trained, **settings} if trained.get(k) != settings.get(k)
                )
                raise ValueError(
                    f"{path} was trained with other stage-0 settings ({', '.join(changed)}: "
                    f"{ {k: trained.get(k) for k in changed} } vs "
                    f"{ {k: settings.get(k) for k in changed} }); delete it (and the stages "
                    "trained on it) to retrain, or use another --workdir"
                )
        print(f"[0/4] stage 0: reusing the pixel codec {path}")
        return
    print(f"[0/4] stage 0: training the pixel codec ({settings['steps']} steps) -> {path}")
    report = train_shapes_codec(path, config.data, settings, seed=int(config.seed), log=print)
    with open(record_path, "w") as f:
        json.dump({"settings": settings, "report": report}, f, indent=1)
    print(f"      reconstruction MSE {report['loss']:.4f} in {report['train_s']:.0f}s")


def run_demo(
    workdir: str,
    *,
    num_eval: int = 48,
    num_extend: int = 16,
    num_saved: int = 6,
    sample_steps: int = 50,
    guidance_scale: float = DEMO_GUIDANCE_SCALE,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    pretrain_overrides: dict[str, Any] | None = None,
    scale: int = 4,
    ablation_dir: str | None = None,
    autoencoder: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole demo; returns what it writes to ``eval.json``.

    ``overrides`` / ``pretrain_overrides``: {dotted key: value} for stage 2 (the 3-scene
    Mask²DiT fine-tune) / stage 1 (single-scene pretraining); ``model.*`` keys of
    ``overrides`` apply to stage 1 too unless ``pretrain_overrides`` sets them, and models that
    still differ are a ValueError before any training. ``train.num_steps=0`` in
    ``pretrain_overrides`` skips stage 1: stage 2 then starts from random weights (or from its
    own ``init_from``).

    ``guidance_scale``: classifier-free guidance of every sampled and extended scene against
    the empty (zero) caption; > 1 needs a stage-2 model trained with
    ``diffusion.caption_dropout > 0`` (else it is an error: the model never saw the empty
    caption); 1 turns CFG off.

    ``autoencoder``: ``train_conv_autoencoder`` settings over ``configs.demo.AUTOENCODER``
    (stage 0, the pixel codec, skipped when ``WORKDIR/autoencoder.npz`` exists or both stages
    name their own ``data.autoencoder``).

    ``ablation_dir`` (default ``WORKDIR/ablation``): where ``benchmarks/ablation.py`` put its
    runs; when "full" / "independent" bundles exist there, the contact sheet adds rows comparing
    them with Mask²DiT on the first two held-out scripts."""
    from m2dit_jax import media
    from m2dit_jax.ablation import find_ablation_bundles, last_logged_loss
    from m2dit_jax.data.synthetic_shapes import (
        ShapesGeometry,
        render_script,
        sample_held_out_scripts,
    )
    from m2dit_jax.eval import synthetic_metrics
    from m2dit_jax.export import export
    from m2dit_jax.inference.bundle import load_bundle
    from m2dit_jax.inference.pipeline import SamplingPipeline
    from m2dit_jax.inference.script import SamplerOptions
    from m2dit_jax.train import train_and_evaluate

    if num_saved > num_eval or num_extend > num_eval:
        raise ValueError("num_saved and num_extend must be <= num_eval")
    timings = {}
    t_start = time.perf_counter()
    overrides = dict(overrides or {})
    pretrain_overrides = stage_one_overrides(overrides, pretrain_overrides)
    codec = codec_path(workdir, get_config(overrides), get_pretrain_config(pretrain_overrides))
    if codec:
        overrides["data.autoencoder"] = pretrain_overrides["data.autoencoder"] = codec
    pretrain_config = get_pretrain_config(pretrain_overrides)
    pretrain_dir = os.path.join(workdir, "pretrain")
    pretrain_steps = int(pretrain_config.train.num_steps)
    if pretrain_steps > 0:
        if overrides.get("init_from"):
            raise ValueError(
                "init_from is set for stage 2 while stage 1 (pretraining) runs; pass "
                "pretrain_overrides train.num_steps=0 to start stage 2 from init_from instead"
            )
        overrides["init_from"] = pretrain_dir
    config = get_config(overrides)
    if pretrain_steps > 0:
        check_stages_share_model(pretrain_config, config)
    if guidance_scale > 1.0 and float(config.diffusion.caption_dropout) <= 0.0:
        raise ValueError(
            f"guidance_scale={guidance_scale} needs a model trained with caption dropout, but "
            "stage 2 has diffusion.caption_dropout=0 (the empty caption CFG guides against was "
            "never seen); set diffusion.caption_dropout > 0 or guidance_scale=1 (no CFG)"
        )
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    if codec:
        train_stage_zero(codec, pretrain_config, {**AUTOENCODER, **(autoencoder or {})})
    timings["autoencoder_s"] = time.perf_counter() - t0

    pretrain_result = None
    t0 = time.perf_counter()
    if pretrain_steps > 0:
        print(
            f"[1/4] stage 1: pretraining {pretrain_config.name} on "
            f"{pretrain_config.data.num_scenes}-scene clips for {pretrain_steps} steps in "
            f"{pretrain_dir}"
        )
        pretrain_result = train_and_evaluate(pretrain_config, pretrain_dir)
    timings["pretrain_s"] = time.perf_counter() - t0
    print(
        f"[1/4] stage 2: training {config.name} on {config.data.num_scenes}-scene clips for "
        f"{config.train.num_steps} steps in {workdir}"
        + (f" from {pretrain_dir}" if pretrain_steps > 0 else "")
    )
    t0 = time.perf_counter()
    train_result = train_and_evaluate(config, workdir)
    timings["train_s"] = time.perf_counter() - t0

    print("[2/4] exporting the EMA weights")
    bundle_dir = os.path.join(workdir, "bundle")
    export(workdir, bundle_dir)
    pipeline = SamplingPipeline.from_bundle(load_bundle(bundle_dir))
    spec = pipeline.video

    print(
        f"[3/4] sampling {num_eval} held-out 3-scene scripts ({sample_steps} DDIM steps, "
        f"CFG {guidance_scale:g}), extending {num_extend} of them by 2 scenes"
    )
    scripts = sample_held_out_scripts(
        num_eval,
        spec.num_scenes,
        holdout_fraction=float(config.data.holdout_fraction),
        seed=seed,
    )
    captions = [s.captions() for s in scripts]
    sampler = SamplerOptions(
        name="ddim", steps=sample_steps, guidance_scale=guidance_scale, seed=seed
    )
    t0 = time.perf_counter()
    latents = pipeline.sample_latents(captions, sampler)
    videos = pipeline.decode_latents(latents)
    timings["sample_s"] = time.perf_counter() - t0

    long_scripts = extension_scripts(scripts[:num_extend], 2, seed)
    new_captions = [s.captions()[spec.num_scenes :] for s in long_scripts]
    t0 = time.perf_counter()
    ext_latents = pipeline.extend_latents(
        latents[:num_extend], captions[:num_extend], new_captions, sampler, window=spec.num_scenes
    )
    ext_videos = pipeline.decode_latents(ext_latents)
    timings["extend_s"] = time.perf_counter() - t0

    print("[4/4] scoring with the analytic detectors")
    geometry = ShapesGeometry(frames=spec.frames, height=spec.height, width=spec.width)
    references = [render_script(s, geometry, seed=[seed, i])[1] for i, s in enumerate(scripts)]
    generated, generated_rows = synthetic_metrics.score_videos(list(videos), scripts)
    extended, extended_rows = synthetic_metrics.score_videos(
        list(ext_videos), long_scripts, first_scene=spec.num_scenes
    )
    reference, _ = synthetic_metrics.score_videos(references, scripts)

    samples_dir = os.path.join(workdir, "samples")
    names = [f"script_{i:02d}" for i in range(num_saved)]
    write_samples(samples_dir, names, videos[:num_saved], captions[:num_saved], spec.fps, scale)
    ext_saved = min(2, num_extend)
    ext_names = [f"extended_{i:02d}" for i in range(ext_saved)]
    write_samples(
        samples_dir,
        ext_names,
        ext_videos[:ext_saved],
        [s.captions() for s in long_scripts[:ext_saved]],
        spec.fps,
        scale,
    )
    sheet_videos = list(videos[:num_saved]) + list(ext_videos[:ext_saved])
    sheet_captions = captions[:num_saved] + [s.captions() for s in long_scripts[:ext_saved]]
    sheet_titles = [f"{n} (held-out script, 3 scenes sampled jointly)" for n in names] + [
        f"{n} (= script_{i:02d}'s first 3 scenes + 2 extended scenes)"
        for i, n in enumerate(ext_names)
    ]
    ablation_dir = os.path.join(workdir, "ablation") if ablation_dir is None else ablation_dir
    ablation_bundles = find_ablation_bundles(ablation_dir)
    ablation_record: dict[str, Any] = {"ablation_dir": ablation_dir, "bundles": {}, "rows": []}
    if ablation_bundles:
        print(f"      sampling 2 scripts with the ablation bundles {sorted(ablation_bundles)}")
        t0 = time.perf_counter()
        abl_videos, abl_captions, abl_titles, found = ablation_sheet_rows(
            ablation_bundles,
            spec=spec,
            scripts=scripts,
            videos=videos,
            sampler=sampler,
            batch_size=len(captions),
            main_bundle=bundle_dir,
        )
        timings["ablation_s"] = time.perf_counter() - t0
        ablation_record.update(found)
        sheet_videos += abl_videos
        sheet_captions += abl_captions
        sheet_titles += abl_titles
    else:
        command = ablation_command(
            ablation_dir,
            pretrain_dir if pretrain_steps > 0 else None,
            codec,
            num_steps=int(config.train.num_steps),
        )
        print(
            f"contact sheet: no ablation rows (no full/independent bundles in {ablation_dir}); "
            f"to add them run `{command}` and re-run the demo"
        )
    media.write_contact_sheet(
        os.path.join(workdir, "contact_sheet.png"),
        sheet_videos,
        sheet_captions,
        titles=sheet_titles,
        scale=scale,
    )
    timings["total_s"] = time.perf_counter() - t_start

    losses = train_result.get("losses") or []
    report = {
        "config": {
            "name": config.name,
            "overrides": {**DEMO_OVERRIDES, **overrides},
            "pretrain_overrides": {**PRETRAIN_OVERRIDES, **(pretrain_overrides or {})},
        },
        "pretrain": None
        if pretrain_result is None
        else {
            "steps": int(pretrain_result["step"]),
            "mean_step_time_s": pretrain_result.get("mean_step_time_s"),
            "workdir": pretrain_dir,
        },
        "train": {
            "steps": int(train_result["step"]),
            "params": int(train_result.get("params", 0)),
            "mean_step_time_s": train_result.get("mean_step_time_s"),
            "steps_run_this_call": int(train_result["step"]) - int(train_result["start_step"]),
            "final_loss": float(np.mean(losses[-50:])) if losses else last_logged_loss(workdir),
            "eval": train_result.get("eval", {}),
        },
        "sampling": {
            "sampler": "ddim",
            "steps": sample_steps,
            "guidance_scale": guidance_scale,
            "num_eval": num_eval,
            "num_extend": num_extend,
        },
        "metrics": {"generated": generated, "extended": extended, "reference": reference},
        "timings_s": timings,
        "per_video": [
            {"captions": c, "scenes": [r["detected"] for r in rows]}
            for c, rows in zip(captions[:num_saved], generated_rows[:num_saved])
        ],
        "per_extended_video": [
            {"captions": s.captions(), "new_scenes": [r["detected"] for r in rows]}
            for s, rows in zip(long_scripts[:ext_saved], extended_rows[:ext_saved])
        ],
        "ablation_rows": ablation_record,
    }
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(report, f, indent=2)
    print()
    print(
        synthetic_metrics.format_table(
            {
                "generated": generated,
                "extended": extended,
                "reference": reference,
            }
        )
    )
    print(
        f"\ngenerated = {num_eval} held-out 3-scene videos; extended = the 2 new scenes of "
        f"{num_extend} extended videos (consistency vs scene 1); reference = the detectors on "
        "ground-truth renders of the same scripts."
    )
    print(
        f"time: autoencoder {timings['autoencoder_s']:.0f}s, "
        f"pretrain {timings['pretrain_s']:.0f}s, train {timings['train_s']:.0f}s, "
        f"sample {timings['sample_s']:.0f}s, "
        f"extend {timings['extend_s']:.0f}s, total {timings['total_s']:.0f}s"
    )
    print(f"wrote {samples_dir}/*.gif|mp4, {workdir}/contact_sheet.png, {workdir}/eval.json")
    return report


def parse_override(text: str) -> tuple[str, Any]:
    """``--set key=value`` -> (key, value): JSON when it parses (numbers, bools, lists), else
    the string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--num_eval", type=int, default=48, help="held-out scripts sampled")
    parser.add_argument("--num_extend", type=int, default=16, help="of those, extended by 2")
    parser.add_argument("--num_saved", type=int, default=6, help="videos written as files")
    parser.add_argument("--sample_steps", type=int, default=50)
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=DEMO_GUIDANCE_SCALE,
        help="classifier-free guidance scale of sampling and extension (1 = off)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ablation_dir",
        default=None,
        help="benchmarks/ablation.py --out folder whose full/independent bundles add "
        "comparison rows to the contact sheet (default: WORKDIR/ablation)",
    )
    parser.add_argument(
        "--set",
        type=parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="stage-2 (3-scene) config override, e.g. --set train.num_steps=500; model.* keys "
        "apply to stage 1 too (stage 2 starts from its weights)",
    )
    parser.add_argument(
        "--set_pretrain",
        type=parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="stage-1 (single-scene pretraining) override; train.num_steps=0 skips stage 1",
    )
    parser.add_argument(
        "--set_autoencoder",
        type=parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="stage-0 (pixel codec) setting over configs.demo.AUTOENCODER, e.g. steps=1000",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(dict(args.set_autoencoder)) - set(AUTOENCODER))
    if unknown:
        parser.error(f"unknown --set_autoencoder keys {unknown}; known: {sorted(AUTOENCODER)}")
    return run_demo(
        args.workdir,
        num_eval=args.num_eval,
        num_extend=args.num_extend,
        num_saved=args.num_saved,
        sample_steps=args.sample_steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        overrides=dict(args.set),
        pretrain_overrides=dict(args.set_pretrain),
        ablation_dir=args.ablation_dir,
        autoencoder=dict(args.set_autoencoder),
    )


if __name__ == "__main__":
    main()
