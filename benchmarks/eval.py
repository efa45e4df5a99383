"""Evaluation throughput: Kinetics-400 I3D features (FVD) and shot-cut detection, on this host.

    python -m benchmarks.eval [--videos 16] [--batch 8] [--devices N] [--size 64] [--repeats 2]

I3D: ``--videos`` random uint8 videos of 16 frames at ``--size`` x ``--size`` go through
``I3DFeatures`` (resize to 224x224 inside the jitted function, batches of ``--batch`` split over
``--devices`` local devices; default all). The first call compiles and is reported apart; then
``--repeats`` timed calls, the best one reported as videos/s. Cuts: ``detect_cuts`` over the
same videos' frames (PySceneDetect ContentDetector), frames/s. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time


def bench(videos: int, batch: int, devices: int | None, size: int, repeats: int) -> dict:
    import jax
    import numpy as np

    from m2dit_jax.eval import cuts, i3d

    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (videos, i3d.FRAMES, size, size, 3), dtype=np.uint8)
    devs = jax.local_devices()[:devices] if devices else jax.local_devices()
    start = time.perf_counter()
    extractor = i3d.I3DFeatures(batch_size=batch, devices=devs)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    extractor(clips[: extractor.batch_size])
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        extractor(clips)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for clip in clips:
        cuts.detect_cuts(clip)
    cut_s = time.perf_counter() - start
    return {
        "backend": jax.default_backend(),
        "devices": len(devs),
        "videos": videos,
        "batch": extractor.batch_size,
        "input": f"{i3d.FRAMES}x{size}x{size} -> {i3d.FRAMES}x{i3d.SIZE}x{i3d.SIZE}",
        "weights_load_s": round(load_s, 2),
        "first_call_incl_compile_s": round(compile_s, 2),
        "i3d_videos_per_s": round(videos / min(times), 3),
        "cut_detection_frames_per_s": round(videos * i3d.FRAMES / cut_s, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--devices", type=int, default=None, help="local devices (default all)")
    parser.add_argument("--size", type=int, default=64, help="input frame size before resize")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if min(args.videos, args.batch, args.size, args.repeats) < 1:
        parser.error("--videos, --batch, --size and --repeats must be >= 1")
    result = bench(args.videos, args.batch, args.devices, args.size, args.repeats)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
