"""Data loader throughput: decoding 3-scene samples from H.264 files, and synthetic_shapes.

  python -m benchmarks.data                      # 480x720, 49 frames per scene (release size)
  python -m benchmarks.data --height 240 --width 360 --samples 6

Makes its own H.264 files (PyAV/libx264), then measures clips/s and decoded MB/s of
(a) a plain single-process PyAV loop (seek + decode the same frames), and (b) the
``manifest`` grain pipeline with 0, 1 and 2 worker processes; then the samples/s the
``synthetic_shapes`` source sustains at the demo size (with and without the encode stage).
Start-up (worker spawn, first batch) is excluded from every rate.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from absl import flags

from m2dit_jax.data import default_data_config, make_dataset
from m2dit_jax.data.frame_sampling import stage1_offsets
from m2dit_jax.data.video_io import decode_frames, probe, write_mp4


def make_videos(root: str, count: int, frames: int, height: int, width: int, fps: int):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    paths = []
    for i in range(count):
        # Moving gradients + noise: compresses like real footage (not a flat frame).
        base = rng.integers(0, 255, 3)
        video = np.empty((frames, height, width, 3), np.uint8)
        for f in range(frames):
            for c in range(3):
                video[f, ..., c] = (base[c] + xx * (c + 1) // 3 + yy // 2 + 4 * f) % 256
            video[f] ^= rng.integers(0, 24, (height, width, 3), np.uint8)
        path = os.path.join(root, f"video{i}.mp4")
        write_mp4(path, video, fps=fps)
        paths.append(path)
    return paths


def plain_loop(paths, samples, scenes, frames, height, width):
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(samples):
        for _ in range(scenes):
            path = paths[int(rng.integers(len(paths)))]
            total, _ = probe(path)
            offsets = stage1_offsets(total, frames, 3, 0.9, rng)
            decode_frames(path, offsets, height=height, width=width)
    return time.perf_counter() - start


def pipeline(manifest, workers, samples, scenes, frames, height, width):
    c = default_data_config()
    c.update(source="manifest", path=manifest, num_scenes=scenes, frames=frames)
    c.update(height=height, width=width, num_workers=workers, prefetch_buffer_size=2)
    it = make_dataset(c, seed=0, batch_size=1)
    try:
        next(it)  # start-up excluded
        start = time.perf_counter()
        for _ in range(samples):
            next(it)
        return time.perf_counter() - start
    finally:
        it.close()


def synthetic_rate(batch_size, batches, workers, encode):
    c = default_data_config()
    c.num_workers = workers
    if encode:
        c.update(text_encoder="hashed", video_encoder="space_to_depth", patch_t=2, patch_s=4)
    it = make_dataset(c, seed=0, batch_size=batch_size)
    try:
        next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch_size / (time.perf_counter() - start)
    finally:
        it.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=720)
    p.add_argument("--frames", type=int, default=49, help="frames per scene")
    p.add_argument("--scenes", type=int, default=3)
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--video_frames", type=int, default=170, help="frames per source video")
    p.add_argument("--samples", type=int, default=4, help="timed samples per configuration")
    p.add_argument("--out", default="", help="optional JSON file for the numbers")
    args = p.parse_args()
    flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags

    results = {"cpu_cores": os.cpu_count(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        paths = make_videos(root, args.videos, args.video_frames, args.height, args.width, 24)
        results["make_videos_s"] = round(time.perf_counter() - t, 1)
        manifest = os.path.join(root, "manifest.jsonl")
        with open(manifest, "w") as f:
            for i, path in enumerate(paths):
                f.write(
                    json.dumps({"video": os.path.basename(path), "caption": f"clip {i}"}) + "\n"
                )
        mb = args.scenes * args.frames * args.height * args.width * 3 / 1e6  # decoded per sample
        shape = (args.scenes, args.frames, args.height, args.width)
        dims = (args.samples, args.scenes, args.frames, args.height, args.width)
        rows = {"plain PyAV loop": plain_loop(paths, *dims)}
        for workers in (0, 1, 2):
            rows[f"grain manifest, {workers} workers"] = pipeline(manifest, workers, *dims)
        base = rows["plain PyAV loop"]
        print(f"decoding {args.scenes}-scene samples of {shape[1:]} frames x HxW (stride 3):")
        print(f"{'loader':32s} {'clips/s':>8s} {'samples/s':>10s} {'MB/s':>8s} {'vs plain':>9s}")
        for name, seconds in rows.items():
            sps = args.samples / seconds
            results[name] = {
                "clips_per_s": round(sps * args.scenes, 2),
                "samples_per_s": round(sps, 3),
                "decoded_MB_per_s": round(sps * mb, 1),
                "ratio_vs_plain": round(base / seconds, 2),
            }
            r = results[name]
            print(
                f"{name:32s} {r['clips_per_s']:8.2f} {r['samples_per_s']:10.3f} "
                f"{r['decoded_MB_per_s']:8.1f} {r['ratio_vs_plain']:9.2f}"
            )
    print("synthetic_shapes (3 scenes x 4 frames x 16x16), batch 32:")
    for workers, encode in ((0, False), (0, True), (2, True)):
        rate = synthetic_rate(32, 30, workers, encode)
        name = f"synthetic, {workers} workers, {'with' if encode else 'no'} encode stage"
        results[name] = {"samples_per_s": round(rate, 1)}
        print(f"  {name:44s} {rate:9.1f} samples/s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
