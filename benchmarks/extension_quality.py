"""Extended-scene quality: a causal-condition fine-tune + cached extension vs mask-1 extension.

On the synthetic shapes task (``configs/shapes_tiny.py`` + ``configs/demo.py``):

1. **base**: one mask-1 model trained with the demo recipe (``--base_steps``).
2. Two fine-tunes of the base's EMA weights (``config.init_from``), same seed, same data stream,
   same optimizer settings and steps (``--ft_steps``), differing only in
   ``diffusion.cond_mask_mode``: **ft_mask1** (``"mask2dit"``, the control) and **ft_causal**
   (``"causal_conditions"``).
3. Every model extends the same held-out 3-scene scripts (``sample_held_out_scripts``; the
   conditions are the ground-truth renders of those 3 scenes, space-to-depth encoded, so every
   arm starts from identical clean conditions) by ``--num_new`` scenes, one ``extend`` per scene
   (``extend_chain``, window 3 = 2 clean conditions + the new scene), for every sampling seed:

   * ``base`` / ``ft_mask1``: mask-1 extension, uncached (``mask_mode="mask2dit"``, the release);
   * ``ft_causal``: ``mask_mode="causal_conditions", cache_conditions=True``;
   * with ``--untuned_causal``, an extra row ``base_causal_cached``: the base model run in the
     causal mode without the fine-tune (what the mask change costs untrained).

4. The new scenes are scored with ``m2dit_jax.eval.synthetic_metrics`` (colour alignment to their
   own caption; background / shape consistency with scene 1, stated in no later caption).
   Per arm: mean, std, min, max over the sampling seeds.

Also checks on the first seed that ``ft_causal`` cached == uncached in the causal mode (max abs
difference of the extended latents).

    nice -n 5 .venv/bin/python benchmarks/extension_quality.py --untuned_causal   # the README run
    # = --base_steps 1000 --base_stop_at 600 --ft_steps 150 --num_scripts 48 --sample_steps 30
    # --seeds 0 1 2 (--base_stop_at 0 --base_steps 1500 = the full demo schedule)

Re-runs re-use finished training workdirs (training resumes / is skipped when complete).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

KEYS = (
    "colour_ok",
    "background_consistent",
    "background_agree_raw",
    "shape_consistent",
    "motion_ok",
    "object_clean",
)
# (row name, model, extend mask_mode, cache_conditions)
ARMS = (
    ("base", "base", "mask2dit", False),
    ("ft_mask1", "ft_mask1", "mask2dit", False),
    ("ft_causal_cached", "ft_causal", "causal_conditions", True),
    ("base_causal_cached", "base", "causal_conditions", True),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/extension_quality")
    p.add_argument("--base_steps", type=int, default=1000)
    p.add_argument(
        "--base_stop_at",
        type=int,
        default=600,
        help="stop the base at this step of its --base_steps schedule (train.stop_at_step)",
    )
    p.add_argument("--ft_steps", type=int, default=150)
    p.add_argument("--ft_lr", type=float, default=3e-4)
    p.add_argument("--ft_warmup", type=int, default=20)
    p.add_argument("--ft_p_cond", type=float, default=0.5, help="both fine-tunes")
    p.add_argument("--ft_seed", type=int, default=1, help="data/RNG seed of both fine-tunes")
    p.add_argument("--num_scripts", type=int, default=48, help="held-out scripts extended")
    p.add_argument("--num_new", type=int, default=2, help="scenes appended per script")
    p.add_argument("--sample_steps", type=int, default=30)
    p.add_argument("--untuned_causal", action="store_true", help="also the base, causal cached")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds")
    return p.parse_args(argv)


def _uptime() -> str:
    return os.popen("uptime").read().strip()


def train(workdir: str, overrides: dict) -> dict:
    """Trains (or resumes / skips) the demo config + ``overrides`` in ``workdir``, exports the
    EMA bundle; returns timing and loss facts."""
    from configs.demo import PLAIN_FOLD_OVERRIDES
    from configs.demo import get_config as demo_config
    from m2dit_jax.ablation import last_logged_loss
    from m2dit_jax.export import export
    from m2dit_jax.train import train_and_evaluate

    # measured on the plain fold (README); the codec demo's extension is in make demo's table
    config = demo_config({**PLAIN_FOLD_OVERRIDES, **overrides})
    t0 = time.perf_counter()
    result = train_and_evaluate(config, workdir)
    wall = time.perf_counter() - t0
    export(workdir, os.path.join(workdir, "bundle"))
    return {
        "overrides": overrides,
        "steps": int(result["step"]),
        "steps_run_this_call": int(result["step"]) - int(result["start_step"]),
        "train_call_s": wall,
        "mean_step_time_s": result.get("mean_step_time_s"),
        "final_loss": last_logged_loss(workdir),
    }


def load_model(workdir: str):
    """The exported EMA bundle of ``workdir``: (bundle, schedule)."""
    from m2dit_jax.diffusion.schedule import CogVideoXSchedule
    from m2dit_jax.inference.bundle import load_bundle

    bundle = load_bundle(os.path.join(workdir, "bundle"))
    return bundle, CogVideoXSchedule.create(**bundle.meta.get("schedule", {}))


def spread(values) -> dict:
    v = np.asarray(values, np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "per_seed": [float(x) for x in v],
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp

    from configs.demo import get_config as demo_config
    from launch.demo import extension_scripts
    from m2dit_jax.data.synthetic_shapes import (
        ShapesGeometry,
        render_script,
        sample_held_out_scripts,
    )
    from m2dit_jax.diffusion import extend_chain
    from m2dit_jax.eval import synthetic_metrics

    os.makedirs(args.out, exist_ok=True)
    report: dict = {"args": vars(args), "uptime_start": _uptime(), "cores": os.cpu_count()}
    print(f"uptime: {report['uptime_start']}  |  cores: {os.cpu_count()}", flush=True)
    t_all = time.perf_counter()

    # 1-2. base, then two fine-tunes from its EMA weights, identical except cond_mask_mode.
    common = {"eval.batches": 0}
    base_dir = os.path.abspath(os.path.join(args.out, "base"))
    runs = {}
    stop = args.base_stop_at or args.base_steps
    print(f"[train] base: {stop} of a {args.base_steps}-step schedule (mask 1)", flush=True)
    runs["base"] = train(
        base_dir,
        {
            **common,
            "seed": 0,
            "train.num_steps": args.base_steps,
            "train.checkpoint_every": args.base_steps,
            "train.stop_at_step": args.base_stop_at,
        },
    )
    print(f"[train] base done: {runs['base']}", flush=True)
    for name, mode in (("ft_mask1", "mask2dit"), ("ft_causal", "causal_conditions")):
        print(f"[train] {name}: {args.ft_steps} steps, cond_mask_mode={mode}", flush=True)
        runs[name] = train(
            os.path.join(args.out, name),
            {
                **common,
                "seed": args.ft_seed,
                "init_from": base_dir,
                "init_from_weights": "ema",
                "train.num_steps": args.ft_steps,
                "train.checkpoint_every": args.ft_steps,
                "optim.learning_rate": args.ft_lr,
                "optim.warmup_steps": args.ft_warmup,
                "diffusion.p_cond": args.ft_p_cond,
                "diffusion.cond_mask_mode": mode,
            },
        )
        print(f"[train] {name} done: {runs[name]}", flush=True)
    report["training"] = runs
    report["uptime_after_training"] = _uptime()

    # 3. Held-out scripts, ground-truth conditions, appended captions.
    models = {name: load_model(os.path.join(args.out, name)) for name in runs}
    ref, _ = models["base"]
    video = ref.video
    if video["num_scenes"] != 3:
        raise ValueError(f"expected the 3-scene demo config, got {video['num_scenes']} scenes")
    num_scenes, frames = video["num_scenes"], video["frames"]
    config = demo_config()
    scripts = sample_held_out_scripts(
        args.num_scripts, num_scenes, holdout_fraction=float(config.data.holdout_fraction)
    )
    long_scripts = extension_scripts(scripts, args.num_new, 0)
    geometry = ShapesGeometry(frames=frames, height=video["height"], width=video["width"])
    renders = np.stack([render_script(s, geometry, seed=[0, i])[1] for i, s in enumerate(scripts)])

    def encode_captions(rows):  # B lists of captions -> (B, S*T, D)
        return jnp.asarray(
            np.stack([np.concatenate(list(ref.text_encoder.encode(r)[0])) for r in rows])
        )

    b = len(scripts)
    # Each scene encoded on its own (the autoencoder folds frames in groups of patch_t).
    scenes = renders.reshape(b * num_scenes, frames, *renders.shape[2:])
    cond = ref.autoencoder.encode(scenes)
    cond = jnp.asarray(cond.reshape(b, num_scenes * cond.shape[1], *cond.shape[2:]))
    text = encode_captions([s.captions() for s in scripts])
    new_texts = [
        encode_captions([[s.captions()[num_scenes + k]] for s in long_scripts])
        for k in range(args.num_new)
    ]
    long_renders = [render_script(s, geometry, seed=[0, i])[1] for i, s in enumerate(long_scripts)]
    reference, _ = synthetic_metrics.score_videos(
        long_renders, long_scripts, first_scene=num_scenes
    )
    report["reference_renders"] = reference

    def run_arm(model_name: str, mode: str, cached: bool, seed: int):
        bundle, schedule = models[model_name]
        return extend_chain(
            bundle.model,
            cond,
            text,
            new_texts,
            seed=seed,
            window=num_scenes,
            num_steps=args.sample_steps,
            guidance_scale=1.0,  # trained without caption dropout, as the demo
            schedule=schedule,
            mask_mode=mode,
            cache_conditions=cached,
        )

    def decode(lat):  # (B, S*F', h, w, C) -> (B, S*F, H, W, 3) uint8, scene by scene
        lat = np.asarray(jax.device_get(lat), np.float32)
        f = cond.shape[1] // num_scenes
        out = ref.autoencoder.decode(lat.reshape(-1, f, *lat.shape[2:]))
        return out.reshape(lat.shape[0], -1, *out.shape[2:])

    # 4. Extend and score.
    arms = [a for a in ARMS if args.untuned_causal or a[0] != "base_causal_cached"]
    per_seed: dict[str, list[dict]] = {a[0]: [] for a in arms}
    timings: dict[str, list[float]] = {a[0]: [] for a in arms}
    paired: dict[str, list[dict]] = {a[0]: [] for a in arms if a[0] != "ft_mask1"}
    for seed in args.seeds:
        seed_out: dict[str, tuple] = {}
        for arm, model_name, mode, cached in arms:
            t0 = time.perf_counter()
            lat = jax.block_until_ready(run_arm(model_name, mode, cached, seed))
            timings[arm].append(time.perf_counter() - t0)
            summary, rows = synthetic_metrics.score_videos(
                list(decode(lat)), long_scripts, first_scene=num_scenes
            )
            per_seed[arm].append(summary)
            seed_out[arm] = (np.asarray(lat[:, num_scenes * (lat.shape[1] // (num_scenes
                             + args.num_new)):]), [r for v in rows for r in v])  # fmt: skip
            print(
                f"[extend] seed {seed} {arm:20s} colour {summary['colour_ok']:.3f} "
                f"bg-cons {summary['background_consistent']:.3f} "
                f"bg-raw {summary['background_agree_raw']:.3f} "
                f"shape-cons {summary['shape_consistent']:.3f} "
                f"clean {summary['object_clean']:.3f} ({timings[arm][-1]:.1f}s)",
                flush=True,
            )
            if seed == args.seeds[0] and arm == "ft_causal_cached":
                uncached = run_arm(model_name, mode, False, seed)
                diff = float(jnp.abs(uncached - lat).max())
                report["ft_causal_cached_vs_uncached_max_abs"] = diff
                print(f"[check] ft_causal cached vs uncached: max |diff| {diff:.2e}", flush=True)
                if not diff < 1e-3:
                    raise AssertionError(f"cached != uncached extension: max |diff| {diff}")
        # Paired with the control (same scripts, conditions and noise): how often each new
        # scene's detected colour / background is the control's, and the new scenes' latents'
        # mean |difference| (latents are in [-1, 1]).
        ref_lat, ref_rows = seed_out["ft_mask1"]
        for arm in paired:
            a_lat, a_rows = seed_out[arm]
            paired[arm].append(
                {
                    "same_colour": float(np.mean([a["detected"]["colour"] == r["detected"]["colour"]
                                                  for a, r in zip(a_rows, ref_rows)])),
                    "same_background": float(np.mean(
                        [a["detected"]["background"] == r["detected"]["background"]
                         for a, r in zip(a_rows, ref_rows)])),
                    "same_colour_ok": float(np.mean([a["colour_ok"] == r["colour_ok"]
                                                     for a, r in zip(a_rows, ref_rows)])),
                    "mean_abs_latent_diff": float(np.mean(np.abs(a_lat - ref_lat))),
                }
            )  # fmt: skip

    report["arms"] = {
        arm: {
            "model": model_name,
            "extend_mask_mode": mode,
            "cache_conditions": cached,
            "metrics": {k: spread([s[k] for s in per_seed[arm]]) for k in KEYS},
            "scenes_scored_per_seed": per_seed[arm][0]["num_scenes_scored"],
            "extend_s_per_seed": timings[arm],
            "per_seed": per_seed[arm],
        }
        for arm, model_name, mode, cached in arms
    }
    report["paired_with_ft_mask1"] = {
        arm: {k: spread([p[k] for p in rows]) for k in rows[0]} for arm, rows in paired.items()
    }
    report["total_s"] = time.perf_counter() - t_all
    report["uptime_end"] = _uptime()
    with open(os.path.join(args.out, "extension_quality.json"), "w") as f:
        json.dump(report, f, indent=2)
    text_table = format_table(report)
    with open(os.path.join(args.out, "extension_quality.md"), "w") as f:
        f.write(text_table + "\n")
    print(text_table)
    print(f"total {report['total_s']:.0f}s; uptime: {report['uptime_end']}")
    return report


def format_table(report: dict) -> str:
    from m2dit_jax.eval.synthetic_metrics import SUMMARY_NAMES

    header = "| arm | extension | " + " | ".join(SUMMARY_NAMES[k] for k in KEYS) + " |"
    lines = [header, "|" + "---|" * (len(KEYS) + 2)]
    for arm, row in report["arms"].items():
        how = f"{row['extend_mask_mode']}, {'cached' if row['cache_conditions'] else 'uncached'}"
        cells = []
        for k in KEYS:
            m = row["metrics"][k]
            cells.append(
                f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f} "
                f"({100 * m['min']:.1f}-{100 * m['max']:.1f})"
            )
        lines.append(f"| {arm} | {how} | " + " | ".join(cells) + " |")
    lines += ["", "| arm, paired with ft_mask1 | same colour | same background | "
              "same colour_ok | mean abs latent diff |", "|---|---|---|---|---|"]  # fmt: skip
    for arm, row in report["paired_with_ft_mask1"].items():
        cells = [f"{100 * row[k]['mean']:.1f} ± {100 * row[k]['std']:.1f}"
                 for k in ("same_colour", "same_background", "same_colour_ok")]  # fmt: skip
        d = row["mean_abs_latent_diff"]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {d['mean']:.4f} ± {d['std']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
