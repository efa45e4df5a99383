"""How much of the synthetic task survives the demo's pixel codec alone (no diffusion)?

    .venv/bin/python benchmarks/codec_fidelity.py runs/demo/autoencoder.npz [MORE.npz ...]

Renders ``--num`` single scenes of training-split scripts and of held-out scripts (new start
positions, ``holdout_fraction`` 0.1 as the demo), encodes and decodes them with each
``ConvAutoencoder`` file, and reports per split the fraction of scenes whose detected shape /
colour / motion / background (``m2dit_jax.eval.shapes_detectors``) is still the rendered one,
with the reconstruction MSE in [-1, 1] pixels; ``--latent_noise s`` also decodes latents with
Gaussian noise of std s added (what the decoder makes of a sample that lands near the code).
This bounds what a diffusion model on the codec can show: its samples are decoded by it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from m2dit_jax.data.synthetic_shapes import (  # noqa: E402
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    ShapesGeometry,
    single_scenes,
)
from m2dit_jax.encoders.conv_autoencoder import ConvAutoencoder  # noqa: E402
from m2dit_jax.eval.shapes_detectors import detect  # noqa: E402


def split_scenes(num: int, held_out: bool, seed: int = 0):
    """(scripts, (num, F, H, W, 3) uint8 single scenes) of one split, shapes_tiny geometry."""
    rng = np.random.default_rng([seed, int(held_out)])
    geometry = ShapesGeometry(frames=4, height=16, width=16)
    return single_scenes(rng, num, geometry, 0.1, held_out)


def agreement(videos: np.ndarray, scripts) -> dict[str, float]:
    """Fraction of scenes whose detected attributes are the script's."""
    found = [detect(v) for v in videos]
    truth = {
        "shape": [SHAPES[s.shape] for s in scripts],
        "colour": [COLOURS[s.colours[0]] for s in scripts],
        "motion": [MOTIONS[s.motions[0]] for s in scripts],
        "background": [BACKGROUNDS[s.background] for s in scripts],
    }
    return {k: float(np.mean([f[k] == t for f, t in zip(found, truth[k])])) for k in truth}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="ConvAutoencoder .npz files")
    parser.add_argument("--num", type=int, default=192, help="scenes per split")
    parser.add_argument("--latent_noise", type=float, default=0.3)
    parser.add_argument("--out", default="", help="also write the report here (JSON)")
    args = parser.parse_args(argv)
    splits = {name: split_scenes(args.num, name == "held_out") for name in ("train", "held_out")}
    report = {}
    for path in args.files:
        ae = ConvAutoencoder.load(path)
        report[path] = {}
        for name, (scripts, scenes) in splits.items():
            latents = ae.encode(scenes)
            decoded = ae.decode(latents)
            noise = np.random.default_rng(1).standard_normal(latents.shape).astype(np.float32)
            row = {
                "mse": float(np.mean((decoded / 127.5 - scenes / 127.5) ** 2)),
                "decoded": agreement(decoded, scripts),
                "decoded_noisy": agreement(ae.decode(latents + args.latent_noise * noise), scripts),
            }
            report[path][name] = row
            d, n = row["decoded"], row["decoded_noisy"]
            print(
                f"{path} {name:8s}: shape {d['shape']:.3f} (noisy {n['shape']:.3f}) "
                f"colour {d['colour']:.3f} motion {d['motion']:.3f} "
                f"background {d['background']:.3f} mse {row['mse']:.4f}",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
