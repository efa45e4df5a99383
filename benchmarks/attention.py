"""Mask-1 attention: peak temporary memory and wall time vs sequence length.

For each L (3 scenes, 226-token captions, 30 x 45 latent grid, growing frame count) prints the
compiled temporary memory (``memory_analysis().temp_size_in_bytes``) and the median forward
wall time of: ``xla`` (dense mask, while L <= 16,384), ``split``, and plain unmasked attention
of the same size (the speed of light for this mask: cuDNN ``jax.nn.dot_product_attention`` on
GPU, elsewhere the same chunked online softmax ``split`` uses, without a mask). Then the memory
ratio at 2x L and splash's block statistics at the 5B layout.

    .venv/bin/python benchmarks/attention.py                 # CPU default (~few minutes)
    .venv/bin/python benchmarks/attention.py --frames 1 2 4 8 13 --heads 2 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from m2dit_jax.attention import masked_attention
from m2dit_jax.attention.online_softmax import chunked_attention
from m2dit_jax.attention.splash import block_statistics
from m2dit_jax.layout import DENSE_MASK_LIMIT, SceneLayout


def _unmasked(q, k, v, scale):
    if jax.devices()[0].platform == "gpu":
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    return chunked_attention(q, k, v, scale=scale)[0]


def _measure(fn, args, repeats):
    compiled = jax.jit(fn).lower(*args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return temp, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-splash-stats", action="store_true")
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), "
        f"heads={args.heads}, head_dim={args.head_dim}, dtype={dtype.name}"
    )
    header = f"{'L':>7} | {'backend':>9} | {'temp MiB':>9} | {'fwd s':>8} | {'x unmasked':>10}"
    print(header)
    print("-" * len(header))
    split_temp = {}
    for frames in args.frames:
        layout = SceneLayout(3, 226, frames, 30, 45)
        shape = (1, layout.seq_len, args.heads, args.head_dim)
        rng = np.random.default_rng(0)
        q, k, v = (jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(3))
        scale = args.head_dim**-0.5
        rows = {"unmasked": lambda q, k, v, s=scale: _unmasked(q, k, v, s)}
        rows["split"] = lambda q, k, v, lay=layout: masked_attention(q, k, v, lay, backend="split")
        if layout.seq_len <= DENSE_MASK_LIMIT:
            rows["xla"] = lambda q, k, v, lay=layout: masked_attention(q, k, v, lay)
        base = None
        for name, fn in rows.items():
            temp, seconds = _measure(fn, (q, k, v), args.repeats)
            base = base or seconds
            if name == "split":
                split_temp[layout.seq_len] = temp
            print(
                f"{layout.seq_len:>7} | {name:>9} | {temp / 2**20:>9.1f} | {seconds:>8.3f} | "
                f"{seconds / base:>10.2f}",
                flush=True,
            )
    lengths = sorted(split_temp)
    for a, b in zip(lengths, lengths[1:]):
        print(
            f"split temp memory ratio L {a} -> {b} ({b / a:.2f}x L): "
            f"{split_temp[b] / split_temp[a]:.2f}x"
        )
    if not args.no_splash_stats:
        layout = SceneLayout(3, 226, 13, 30, 45)
        start = time.perf_counter()
        stats = block_statistics(layout, 512, 512)
        print(
            f"splash blocks at the 5B layout (L={layout.seq_len}, 512 x 512, "
            f"{stats['blocks']} blocks): empty/skipped {stats['empty']:.2%}, partial "
            f"{stats['partial']:.2%}, full {stats['full']:.2%} "
            f"(mask preprocessing {time.perf_counter() - start:.1f} s)"
        )


if __name__ == "__main__":
    main()
