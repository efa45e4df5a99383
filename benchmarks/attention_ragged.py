"""Mask-1 attention on a ragged layout vs the equal layout of the same total frames.

Builds a ragged layout (per-scene latent frames, default 6, 2, 4; 120-token captions, 8 x 8
grid) and the equal layout with the same number of scenes and total frames (4, 4, 4: the same
sequence length), and prints side by side, with ragged / equal ratios: the median forward wall
time (min / max over the repeats; the two layouts are timed interleaved, equal, ragged,
ragged, equal, ...) and the compiled temporary memory (``temp_size_in_bytes`` of
``memory_analysis()``) of ``split`` (impl "chunked") and of ``splash`` (Pallas interpret mode
off TPU: the interpreter's wall time only, no meaning for TPU speed); then splash's block
statistics (empty = skipped, partial = masked, full = mask-free tiles) for both layouts.

    .venv/bin/python benchmarks/attention_ragged.py                  # CPU default (~10 s)
    .venv/bin/python benchmarks/attention_ragged.py --frames 17 4 18 --grid 30 45 --text-len 226 \\
        --text-pad-to 8 --block 512 --repeats 3 --no-splash     # vs the 5B layout (13 x 3)
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from m2dit_jax.attention import masked_attention
from m2dit_jax.attention.splash import block_statistics
from m2dit_jax.layout import SceneLayout


def _measure(fns: dict, args, repeats: int) -> dict:
    """{name: (temp bytes, [seconds per call])} of the jitted ``fns``: all compiled and warmed
    up first, then timed interleaved in alternating order, so that drift in a shared
    machine's load hits every entry alike."""
    compiled = {name: jax.jit(fn).lower(*args).compile() for name, fn in fns.items()}
    for fn in compiled.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in compiled}
    order = list(compiled)
    for rep in range(repeats):
        for name in order if rep % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            jax.block_until_ready(compiled[name](*args))
            times[name].append(time.perf_counter() - start)
    return {
        name: (fn.memory_analysis().temp_size_in_bytes, times[name])
        for name, fn in compiled.items()
    }


def _layouts(args) -> tuple[SceneLayout, SceneLayout]:
    frames = tuple(args.frames)
    s = len(frames)
    if sum(frames) % s:
        raise SystemExit(f"--frames {frames}: total {sum(frames)} does not split into {s} scenes")
    common = dict(text_pad_to=args.text_pad_to)
    grid_h, grid_w = args.grid
    ragged = SceneLayout(s, args.text_len, frames, grid_h, grid_w, **common)
    equal = SceneLayout(s, args.text_len, sum(frames) // s, grid_h, grid_w, **common)
    if not ragged.is_ragged:
        raise SystemExit(f"--frames {frames} are all equal: give per-scene counts that differ")
    assert ragged.seq_len == equal.seq_len
    return ragged, equal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[6, 2, 4])
    parser.add_argument("--grid", type=int, nargs=2, default=[8, 8], metavar=("H", "W"))
    parser.add_argument("--text-len", type=int, default=120)
    parser.add_argument("--text-pad-to", type=int, default=8)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--block", type=int, default=128, help="split and splash block size")
    parser.add_argument("--no-splash", action="store_true", help="skip the splash timing")
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    ragged, equal = _layouts(args)
    device = jax.devices()[0]
    print(
        f"device: {device.device_kind} ({device.platform}), heads={args.heads}, "
        f"head_dim={args.head_dim}, dtype={dtype.name}, repeats={args.repeats}, "
        f"block={args.block}"
    )
    print(
        f"ragged: frames {ragged.frames}  equal: frames {equal.frames} x {equal.num_scenes}  "
        f"(text {args.text_len} -> block {ragged.text_block}, grid {args.grid[0]} x "
        f"{args.grid[1]}, L = {ragged.seq_len})"
    )
    shape = (1, ragged.seq_len, args.heads, args.head_dim)
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(3))
    backends = {"split": dict(impl="chunked", block_q=args.block, block_kv=args.block)}
    if not args.no_splash:
        options = dict(block_q=args.block, block_kv=args.block)
        if device.platform != "tpu":
            options["interpret"] = True
        backends["splash"] = options

    header = (
        f"{'backend':>7} | {'layout':>6} | {'temp MiB':>9} | {'fwd ms (median)':>15} | "
        f"{'min':>8} | {'max':>8} | {'time r/e':>8} | {'temp r/e':>8}"
    )
    print(header)
    print("-" * len(header))
    for backend, options in backends.items():
        fns = {
            name: functools.partial(masked_attention, layout=layout, backend=backend, **options)
            for name, layout in (("equal", equal), ("ragged", ragged))
        }
        results = _measure(fns, (q, k, v), args.repeats)
        base_temp, base_times = results["equal"]
        for name in ("equal", "ragged"):
            temp, times = results[name]
            median = statistics.median(times)
            ratios = (
                f"{median / statistics.median(base_times):>8.2f} | "
                f"{temp / base_temp if base_temp else float('nan'):>8.2f}"
                if name == "ragged"
                else f"{'':>8} | {'':>8}"
            )
            print(
                f"{backend:>7} | {name:>6} | {temp / 2**20:>9.2f} | {median * 1e3:>15.2f} | "
                f"{min(times) * 1e3:>8.2f} | {max(times) * 1e3:>8.2f} | {ratios}",
                flush=True,
            )
    for name, layout in (("equal", equal), ("ragged", ragged)):
        stats = block_statistics(layout, args.block, args.block)
        print(
            f"splash blocks {name:>6} ({args.block} x {args.block}, {stats['blocks']} blocks): "
            f"empty/skipped {stats['empty']:.2%}, partial {stats['partial']:.2%}, "
            f"full {stats['full']:.2%}; mask 1 blocks {layout.blocked_fraction():.2%} of "
            "(q, k) pairs"
        )


if __name__ == "__main__":
    main()
