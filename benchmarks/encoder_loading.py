"""Host memory of loading a T5 ``text_encoder/`` folder: streamed (ours) vs read-all-first.

    python -m benchmarks.encoder_loading [--d_model 1024 --layers 12 --d_ff 2816] [--repeats 2]

Writes a random T5-v1.1 encoder (f32 safetensors, T5-large-like by default: ~1.3 GB) to a
temporary folder, then loads it in fresh processes, alternating: ``load_t5_encoder`` (tensors
read one at a time from the memory-mapped file, ``SafetensorsFolder``) and the same
assignment fed a dict holding every tensor first (what loading did before). Prints each
child's peak RSS above its own post-import baseline, as a multiple of the checkpoint size:
the module's own parameters are 1.0x on a CPU backend, so ~1x means no second copy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, resource, sys
import numpy as np
from m2dit_jax.encoders import t5
from m2dit_jax.encoders.weights_io import SafetensorsFolder, assign_torch_state, read_config
import jax
jax.numpy.zeros(1).block_until_ready()
def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
base = rss_kib()
path, mode = sys.argv[1], sys.argv[2]
if mode == "streamed":
    model = t5.load_t5_encoder(path)
else:
    config = t5.T5Config.from_transformers(read_config(path))
    model = t5.T5Encoder(config, seed=None)
    tensors = dict(SafetensorsFolder(path).items())  # every tensor in memory first
    assign_torch_state(model, tensors, what="T5 encoder", rename=t5._t5_rename(tensors),
                       is_embedding=t5._is_t5_table)
    del tensors
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
print(json.dumps({"mode": mode, "base_kib": base, "peak_kib": peak}))
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d_model", type=int, default=1024)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d_ff", type=int, default=2816)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)

    from m2dit_jax.encoders import t5

    config = t5.T5Config(
        d_model=args.d_model,
        d_kv=args.d_model // args.heads,
        d_ff=args.d_ff,
        num_layers=args.layers,
        num_heads=args.heads,
    )
    with tempfile.TemporaryDirectory() as folder:
        t5.save_t5_encoder(t5.T5Encoder(config, seed=0), folder)
        size = sum(
            os.path.getsize(os.path.join(folder, n))
            for n in os.listdir(folder)
            if n.endswith(".safetensors")
        )
        print(f"checkpoint: {size / 2**30:.2f} GiB (f32), {json.dumps(vars(args))}")
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        results: dict[str, list[float]] = {"streamed": [], "read_all": []}
        for _ in range(args.repeats):
            for mode in results:
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, folder, mode],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[mode].append((r["peak_kib"] - r["base_kib"]) * 1024 / size)
    for mode, ratios in results.items():
        shown = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"{mode:9s} peak RSS above baseline / checkpoint: {shown}")
    ratio = min(results["read_all"]) / max(results["streamed"])
    print(f"read-all / streamed (worst streamed): {ratio:.2f}x")


if __name__ == "__main__":
    main()
