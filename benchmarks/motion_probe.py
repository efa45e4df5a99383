"""Does a demo model use the motion word? Its conditional mean vs the data's.

    .venv/bin/python -m launch.demo --workdir runs/demo          # makes runs/demo/bundle
    .venv/bin/python benchmarks/motion_probe.py --bundle runs/demo/bundle

At the last training timestep (zero terminal SNR: the input is pure noise) a v-prediction
model's x0 estimate is its learned mean E[x0 | captions]. One DDIM step from t = T-1 returns
exactly that estimate. For a red object in every scene and each motion word, the probe
averages the estimate over ``--num`` noise draws, measures the red mass's centroid per frame
of scene 1 and reports its slope (px/frame) along the motion's axis, next to the same
quantity of the ground-truth renders (the mean the model should learn). A model that has
learned the motion word shows slopes of the reference's sign (about +-2 px/frame at 16x16x4);
a model that ignores it shows ~0 for every word whatever its samples look like.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

AXIS = {"left": 1, "right": 1, "up": 0, "down": 0}  # 0 = rows (y), 1 = columns (x)


def red_centroids(videos: np.ndarray) -> np.ndarray:
    """(N, F, H, W, 3) uint8 -> (F, 2) (y, x) centroid of the mean red mass per frame."""
    x = np.asarray(videos, np.float64)
    red = np.clip(x[..., 0] - 0.5 * (x[..., 1] + x[..., 2]), 0, None).mean(0)  # (F, H, W)
    ys, xs = np.mgrid[: red.shape[1], : red.shape[2]]
    mass = red.sum((1, 2)) + 1e-9
    return np.stack([(red * ys).sum((1, 2)) / mass, (red * xs).sum((1, 2)) / mass], axis=1)


def slope(centroids: np.ndarray, axis: int) -> float:
    t = np.arange(len(centroids), dtype=np.float64)
    return float(np.polyfit(t, centroids[:, axis], 1)[0])


def main(argv=None) -> dict:
    from m2dit_jax.data.synthetic_shapes import (
        BACKGROUNDS,
        COLOURS,
        MOTIONS,
        SHAPES,
        Script,
        ShapesGeometry,
        render_script,
    )
    from m2dit_jax.inference.bundle import load_bundle
    from m2dit_jax.inference.pipeline import SamplingPipeline
    from m2dit_jax.inference.script import SamplerOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--num", type=int, default=32, help="noise draws / reference renders")
    parser.add_argument("--out", default="", help="also write the result as JSON here")
    args = parser.parse_args(argv)

    pipeline = SamplingPipeline.from_bundle(load_bundle(args.bundle))
    spec = pipeline.video
    geometry = ShapesGeometry(frames=spec.frames, height=spec.height, width=spec.width)
    rng = np.random.default_rng(0)
    result = {"bundle": args.bundle, "num": args.num, "motions": {}}
    red = COLOURS.index("red")
    for m, motion in enumerate(MOTIONS):
        script = Script(0, 0, (red,) * spec.num_scenes, (m,) * spec.num_scenes)
        caps = [script.captions()] * args.num
        lat = pipeline.sample_latents(caps, SamplerOptions(name="ddim", steps=1, seed=1))
        model_mean = red_centroids(np.asarray(pipeline.decode_latents(lat))[:, : spec.frames])
        refs = []
        for i in range(args.num):
            shape, background = int(rng.integers(len(SHAPES))), int(rng.integers(len(BACKGROUNDS)))
            shaped = Script(shape, background, script.colours, script.motions)
            refs.append(render_script(shaped, geometry, seed=[7, m, i])[1][: spec.frames])
        ref_mean = red_centroids(np.stack(refs))
        axis = AXIS[motion]
        result["motions"][motion] = {
            "model_slope_px_per_frame": slope(model_mean, axis),
            "reference_slope_px_per_frame": slope(ref_mean, axis),
        }
        row = result["motions"][motion]
        print(
            f"{motion:6s} model mean moves {row['model_slope_px_per_frame']:+.2f} px/frame, "
            f"reference {row['reference_slope_px_per_frame']:+.2f}",
            flush=True,
        )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
