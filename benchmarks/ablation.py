"""Reproduces the mask ablation: Mask²DiT mask 1 vs no mask vs independent scenes.

    python benchmarks/ablation.py --out runs/ablation --autoencoder runs/demo/autoencoder.npz \
        --steps 1500 --seeds 0 1 --num_eval 96
    python benchmarks/ablation.py --out runs/ablation_plain --fold plain --steps 1500 --seeds 0 1
        # on the plain space-to-depth fold, as the README's tables measured before the codec
    python benchmarks/ablation.py --out runs/demo/ablation --init_from runs/demo/pretrain \
        --autoencoder runs/demo/autoencoder.npz --steps 1500 --seeds 0
        # every variant fine-tuned from make demo's stage 1 on its codec, as its stage 2

Trains every (variant, seed) in ``OUT/<variant>_s<seed>`` (skipped when its result exists, so
the script can be re-run to add seeds), samples the same held-out scripts with each model, and
prints the table (mean ± std over seeds) that ``OUT/ablation.json`` / ``OUT/ablation.md`` hold.
See ``m2dit_jax.ablation`` for what each variant is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.demo import PLAIN_FOLD_OVERRIDES  # noqa: E402
from m2dit_jax import ablation  # noqa: E402
from m2dit_jax.layout import MASK_MODES  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(MASK_MODES), choices=MASK_MODES)
    parser.add_argument(
        "--init_from",
        default="",
        help="a stage-1 workdir (e.g. runs/demo/pretrain): every variant fine-tunes from its "
        "EMA weights, as make demo's stage 2 does (default: random weights)",
    )
    parser.add_argument(
        "--autoencoder",
        default="",
        help="the pixel codec's weights (make demo writes runs/demo/autoencoder.npz); default: "
        "the one the --init_from workdir was trained on",
    )
    parser.add_argument(
        "--fold",
        choices=["codec", "plain"],
        default="codec",
        help="codec: the demo's learned pixel codec; plain: patch 2 on the lossless "
        "space-to-depth fold (configs.demo.PLAIN_FOLD_OVERRIDES), as before 2026-12-07",
    )
    parser.add_argument("--num_eval", type=int, default=48)
    parser.add_argument("--sample_steps", type=int, default=30)
    parser.add_argument(
        "--rescore", action="store_true", help="re-sample and re-score finished runs"
    )
    args = parser.parse_args(argv)
    if args.fold == "plain" and args.autoencoder:
        parser.error("--autoencoder is for --fold codec; --fold plain reads no codec")
    if args.fold == "plain":
        overrides = dict(PLAIN_FOLD_OVERRIDES)
    else:
        overrides = {"data.autoencoder": args.autoencoder} if args.autoencoder else {}
    results = []
    for seed in args.seeds:
        for mode in args.variants:
            t0 = time.perf_counter()
            result = ablation.run_variant(
                mode,
                seed,
                os.path.join(args.out, f"{mode}_s{seed}"),
                num_steps=args.steps,
                num_eval=args.num_eval,
                sample_steps=args.sample_steps,
                init_from=args.init_from,
                rescore=args.rescore,
                overrides=overrides,
            )
            m = result["metrics"]
            print(
                f"{mode:12s} seed {seed}: colour {m['colour_ok']:.2f} motion {m['motion_ok']:.2f} "
                f"shape-cons {m['shape_consistent']:.2f} bg-cons "
                f"{m['background_consistent']:.2f} ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
            results.append(result)
    table = ablation.aggregate(results)
    text = ablation.format_ablation(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump({"args": vars(args), "table": table, "runs": results}, f, indent=2)
    with open(os.path.join(args.out, "ablation.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
