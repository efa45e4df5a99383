"""The mask ablation: the same tiny training run with three attention patterns.

- ``mask2dit``: mask 1 (a caption steers only its own scene; all video tokens see each other);
- ``full``: no mask — every token attends to every caption and every scene (the release's
  "version 5"); captions carry no position, so a scene cannot tell its caption from the others';
- ``independent``: each scene attends only to its own caption and its own video.

Each variant trains ``configs/shapes_tiny.py`` with the demo settings (``launch.demo``) and
``model.mask_mode`` set, always on the ``xla`` attention backend (the fast kernels implement
mask 1 only), then samples held-out 3-scene scripts and scores them with
``m2dit_jax.eval.synthetic_metrics``. Expected from the paper's argument: mask2dit >> full on
alignment, mask2dit >> independent on consistency.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from m2dit_jax.layout import MASK_MODES

HEADLINE = (
    "colour_ok",
    "motion_ok",
    "shape_consistent",
    "background_consistent",
    "shape_agree_raw",
    "background_agree_raw",
    "shape_ok",
)


def variant_config(mask_mode: str, seed: int, num_steps: int, overrides: dict | None = None):
    """The demo config with ``model.mask_mode``, the seed and the step budget set."""
    from configs.demo import get_config

    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
    config = get_config(
        {
            "model.mask_mode": mask_mode,
            "model.attention_backend": "xla",
            "seed": seed,
            "train.num_steps": num_steps,
            "train.checkpoint_every": num_steps,
            "eval.batches": 0,
            **(overrides or {}),
        }
    )
    return config


def stage_one_autoencoder(init_from: str) -> str:
    """The pixel codec (``data.autoencoder``) a stage-1 workdir was trained on: a variant that
    starts from its weights must read the same latents."""
    from m2dit_jax.export import read_workdir_config

    if not init_from:
        raise ValueError(
            "the demo's models read a learned pixel codec (data.video_encoder='conv'): give its "
            "weights (--autoencoder WORKDIR/autoencoder.npz, as written by make demo) or "
            "--init_from a stage-1 workdir trained on it"
        )
    path = read_workdir_config(init_from)["data"].get("autoencoder", "")
    if not path:
        raise ValueError(f"{init_from} was not trained on a conv pixel codec (no data.autoencoder)")
    return path


def run_variant(
    mask_mode: str,
    seed: int,
    workdir: str,
    *,
    num_steps: int,
    num_eval: int = 48,
    sample_steps: int = 30,
    overrides: dict | None = None,
    init_from: str = "",
    rescore: bool = False,
) -> dict[str, Any]:
    """Trains (or resumes) one variant in ``workdir``, samples and scores it; writes and
    returns ``workdir/ablation_result.json`` (re-used when present for the same steps, eval
    size, ``init_from`` and video encoder, unless ``rescore``).

    ``init_from``: "" trains from random weights; a stage-1 workdir (``runs/demo/pretrain``)
    fine-tunes every variant from the same single-scene EMA weights, as the demo's stage 2
    (and the paper, from CogVideoX) does."""
    from m2dit_jax.data.synthetic_shapes import sample_held_out_scripts
    from m2dit_jax.eval import synthetic_metrics
    from m2dit_jax.export import export
    from m2dit_jax.inference.bundle import load_bundle
    from m2dit_jax.inference.pipeline import SamplingPipeline
    from m2dit_jax.inference.script import SamplerOptions
    from m2dit_jax.train import train_and_evaluate

    config = variant_config(
        mask_mode, seed, num_steps, {"init_from": init_from, **(overrides or {})}
    )
    if config.data.video_encoder == "conv" and not config.data.autoencoder:
        config.data.autoencoder = stage_one_autoencoder(init_from)
    video_encoder = str(config.data.video_encoder)
    result_path = os.path.join(workdir, "ablation_result.json")
    if os.path.isfile(result_path):
        with open(result_path) as f:
            done = json.load(f)
        key = ("num_steps", "num_eval", "init_from", "video_encoder")
        # results written before the codec existed were all on the plain fold
        was = {"init_from": "", "video_encoder": "space_to_depth", **done}
        if [was.get(k) for k in key] == [num_steps, num_eval, init_from, video_encoder]:
            if not rescore:
                return done
    t0 = time.perf_counter()
    train = train_and_evaluate(config, workdir)
    train_s = time.perf_counter() - t0
    bundle_dir = os.path.join(workdir, "bundle")
    export(workdir, bundle_dir)
    pipeline = SamplingPipeline.from_bundle(load_bundle(bundle_dir))
    # The same held-out scripts and sampler noise for every variant and seed.
    scripts = sample_held_out_scripts(
        num_eval, pipeline.video.num_scenes, holdout_fraction=float(config.data.holdout_fraction)
    )
    sampler = SamplerOptions(name="ddim", steps=sample_steps, guidance_scale=1.0, seed=0)
    latents = pipeline.sample_latents([s.captions() for s in scripts], sampler)
    summary, _ = synthetic_metrics.score_videos(list(pipeline.decode_latents(latents)), scripts)
    result = {
        "mask_mode": mask_mode,
        "seed": seed,
        "num_steps": num_steps,
        "num_eval": num_eval,
        "init_from": init_from,
        "video_encoder": video_encoder,
        "sample_steps": sample_steps,
        "train_call_s": train_s,  # wall time of this call (restore only when resumed)
        "steps_run": int(train["step"]) - int(train["start_step"]),
        "mean_step_time_s": train.get("mean_step_time_s"),
        "final_loss": last_logged_loss(workdir),
        "metrics": summary,
    }
    with open(result_path, "w") as f:
        json.dump(result, f, indent=2)
    return result


ABLATION_VARIANTS = ("full", "independent")


def find_ablation_bundles(ablation_dir: str) -> dict[str, str]:
    """The exported ablation bundles under ``ablation_dir`` -> {mode: bundle_dir}.

    Looks for what ``benchmarks/ablation.py --out ABLATION_DIR`` writes: one folder
    ``<mode>_s<seed>`` per run, holding ``bundle/`` once the run is exported. Returns the
    "full" and "independent" variants (in that order) that have one, each from the lowest seed
    with a ``bundle/``; {} when ``ablation_dir`` does not exist or holds none.
    """
    if not os.path.isdir(ablation_dir):
        return {}
    pattern = re.compile(r"^(?P<mode>.+)_s(?P<seed>\d+)$")
    best: dict[str, tuple[int, str]] = {}
    for name in os.listdir(ablation_dir):
        match = pattern.match(name)
        if not match or match["mode"] not in ABLATION_VARIANTS:
            continue
        bundle_dir = os.path.join(ablation_dir, name, "bundle")
        seed = int(match["seed"])
        if os.path.isdir(bundle_dir) and (
            match["mode"] not in best or seed < best[match["mode"]][0]
        ):
            best[match["mode"]] = (seed, bundle_dir)
    return {mode: best[mode][1] for mode in ABLATION_VARIANTS if mode in best}


def last_logged_loss(workdir: str) -> float | None:
    """The last training loss in ``workdir/metrics.jsonl`` (a window mean), if any."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    loss = None
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "loss" in record:
                loss = float(record["loss"])
    return loss


def aggregate(results: Sequence[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{mask_mode: {metric: {"mean", "std", "n"}}} over seeds (std = 0 for a single seed)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for mode in MASK_MODES:
        runs = [r for r in results if r["mask_mode"] == mode]
        if not runs:
            continue
        out[mode] = {}
        for key in (*HEADLINE, "object_clean"):
            values = np.array([r["metrics"][key] for r in runs], np.float64)
            out[mode][key] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "n": len(values),
            }
        losses = [r["final_loss"] for r in runs if r.get("final_loss") is not None]
        out[mode]["final_loss"] = {
            "mean": float(np.mean(losses)) if losses else float("nan"),
            "std": float(np.std(losses, ddof=1)) if len(losses) > 1 else 0.0,
            "n": len(losses),
        }
    return out


def format_ablation(table: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: one row per variant, mean ± std over seeds (percent)."""
    from m2dit_jax.eval.synthetic_metrics import SUMMARY_NAMES

    keys = (*HEADLINE, "object_clean")
    header = "| variant | seeds | " + " | ".join(SUMMARY_NAMES[k] for k in keys) + " | loss |"
    lines = [header, "|" + "---|" * (len(keys) + 3)]
    for mode, row in table.items():
        cells = [f"{100 * row[k]['mean']:.1f} ± {100 * row[k]['std']:.1f}" for k in keys]
        loss = row["final_loss"]
        lines.append(
            f"| {mode} | {row[keys[0]]['n']} | "
            + " | ".join(cells)
            + f" | {loss['mean']:.3f} ± {loss['std']:.3f} |"
        )
    return "\n".join(lines)
