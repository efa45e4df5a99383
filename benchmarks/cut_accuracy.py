"""Shot-cut accuracy of a demo model's samples: joint (mask 1) vs independently sampled scenes.

    .venv/bin/python -m launch.demo --workdir runs/demo          # makes runs/demo/bundle
    .venv/bin/python benchmarks/cut_accuracy.py --bundle runs/demo/bundle --num 48

Samples ``--num`` held-out synthetic scripts (never seen in training) with the bundle's model
two ways with the same seed and DDIM steps: **joint** (the S scenes in one sample, mask 1:
what Mask²DiT does) and **independent** (every scene its own one-scene sample, so nothing is
shared across the cut), plus the ground-truth renders of the same scripts. For each set it
reports the fraction of scene boundaries detected as cuts within ±1 frame
(``m2dit_jax.eval.cuts``: PySceneDetect's content detector on the uint8 frames) and the
spurious cuts per video (cuts inside a scene). Mask²DiT keeps the background across scenes,
so its cuts are marked only by the object's colour / position: a lower recall than
independent scenes (which also change background) is expected, not a defect.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _score(videos, num_scenes: int) -> dict[str, float]:
    from m2dit_jax.eval import cuts

    rows = [cuts.video_cut_accuracy(np.asarray(v), num_scenes) for v in videos]
    return {
        "boundary_recall": float(np.mean([r["boundary_recall"] for r in rows])),
        "spurious_per_video": float(np.mean([len(r["spurious"]) for r in rows])),
        "videos": len(rows),
    }


def run(bundle: str, num: int, steps: int, seed: int) -> dict[str, dict[str, float]]:
    from m2dit_jax.data.synthetic_shapes import (
        ShapesGeometry,
        render_script,
        sample_held_out_scripts,
    )
    from m2dit_jax.diffusion import generate
    from m2dit_jax.inference.bundle import load_bundle
    from m2dit_jax.inference.pipeline import SamplingPipeline
    from m2dit_jax.inference.script import SamplerOptions

    pipe = SamplingPipeline.from_bundle(load_bundle(bundle))
    spec = pipe.video
    s = spec.num_scenes
    scripts = sample_held_out_scripts(num, s, seed=seed)
    captions = [script.captions() for script in scripts]
    sampler = SamplerOptions(name="ddim", steps=steps, guidance_scale=1.0, seed=seed)
    joint = pipe.decode_latents(pipe.sample_latents(captions, sampler))
    scenes = []
    for i in range(s):
        text = pipe.encode_captions([[c[i]] for c in captions])
        latents = generate(
            pipe.model, text, num_scenes=1, latent_shape=pipe.latent_shape, num_steps=steps,
            guidance_scale=1.0, seed=seed + 1 + i, schedule=pipe.schedule,
        )  # fmt: skip
        scenes.append(pipe.decode_latents(latents))
    independent = np.concatenate(scenes, axis=1)
    geometry = ShapesGeometry(frames=spec.frames, height=spec.height, width=spec.width)
    reference = [render_script(sc, geometry, seed=[seed, i])[1] for i, sc in enumerate(scripts)]
    return {
        "joint (mask 1)": _score(joint, s),
        "independent scenes": _score(independent, s),
        "reference renders": _score(reference, s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="runs/demo/bundle")
    parser.add_argument("--num", type=int, default=48)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="optional JSON file for the results")
    args = parser.parse_args()
    results = run(args.bundle, args.num, args.steps, args.seed)
    print(f"{'samples':>20} | boundary recall (±1 frame) | spurious cuts / video")
    for name, r in results.items():
        print(f"{name:>20} | {r['boundary_recall']:26.1%} | {r['spurious_per_video']:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
