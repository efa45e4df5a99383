"""VAE encode+decode throughput: our Flax CogVideoX VAE vs diffusers, same weights, same CPU.

    python -m benchmarks.encoders [--configs tiny,medium] [--frames 17] [--threads 2]

For each config one random diffusers ``AutoencoderKLCogVideoX`` is built, saved and loaded
into ours; a (1, frames, H, W, 3) video is encoded then decoded (diffusers' chunking in
both). Ours is jitted: the compile runs first and is reported apart; then each side runs
once, timed. torch gets ``--threads`` intra-op threads; XLA's CPU client uses the same cores
(the process is pinned to ``--threads`` CPUs when the OS allows). Prints frames/s of each
and the time ratio ours / diffusers (<= 1.0: ours is not slower), plus the max abs
difference of the decoded videos.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

CONFIGS = {
    # name: (block_out_channels, layers_per_block, latent_channels, groups, height, width)
    "tiny": ((32, 32, 64, 64), 1, 4, 8, 64, 64),
    "medium": ((64, 128, 128, 256), 2, 16, 32, 96, 128),
}


def _pin(threads: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        os.sched_setaffinity(0, cpus)


def bench(name: str, frames: int, threads: int) -> dict:
    import jax
    import numpy as np
    import torch
    from diffusers import AutoencoderKLCogVideoX

    from m2dit_jax.encoders.vae import load_diffusers_vae

    blocks, layers, latent, groups, height, width = CONFIGS[name]
    torch.manual_seed(0)
    ref = AutoencoderKLCogVideoX(
        block_out_channels=blocks,
        layers_per_block=layers,
        latent_channels=latent,
        norm_num_groups=groups,
    ).eval()
    with tempfile.TemporaryDirectory() as folder:
        ref.save_pretrained(folder)
        ours = load_diffusers_vae(folder)
    video = np.random.default_rng(0).uniform(-1, 1, (1, frames, height, width, 3)).astype("f4")

    @jax.jit
    def roundtrip(v):
        mean, _ = ours.encode_moments(v)
        return ours.decode_raw(mean)

    t = time.perf_counter()
    jax.block_until_ready(roundtrip(video))
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    out = jax.block_until_ready(roundtrip(video))
    ours_s = time.perf_counter() - t

    x = torch.from_numpy(video.transpose(0, 4, 1, 2, 3).copy())
    with torch.no_grad():
        t = time.perf_counter()
        ref_out = ref.decode(ref.encode(x).latent_dist.mode()).sample
        ref_s = time.perf_counter() - t
    diff = float(np.abs(np.asarray(out).transpose(0, 4, 1, 2, 3) - ref_out.numpy()).max())
    return dict(
        config=name,
        shape=f"{frames}x{height}x{width}",
        threads=threads,
        compile_s=compile_s,
        ours_fps=frames / ours_s,
        diffusers_fps=frames / ref_s,
        ratio=ours_s / ref_s,
        max_abs_diff=diff,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny,medium")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise ValueError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    _pin(args.threads)
    import jax
    import torch

    torch.set_num_threads(args.threads)
    jax.config.update("jax_default_matmul_precision", "highest")
    print(f"device: {jax.devices()[0].device_kind}, {args.threads} threads")
    print(
        f"{'config':8} {'video':>12} {'compile s':>10} {'ours f/s':>9} {'diffusers f/s':>14} "
        f"{'ours/diffusers time':>20} {'max |diff|':>11}"
    )
    for name in args.configs.split(","):
        r = bench(name, args.frames, args.threads)
        print(
            f"{r['config']:8} {r['shape']:>12} {r['compile_s']:10.1f} {r['ours_fps']:9.2f} "
            f"{r['diffusers_fps']:14.2f} {r['ratio']:20.2f} {r['max_abs_diff']:11.2e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
