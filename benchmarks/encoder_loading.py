"""Host memory of loading a T5 ``text_encoder/`` folder: streamed (ours) vs read-all-first.

    python -m benchmarks.encoder_loading [--d_model 4096 --d_ff 10240 --layers 2 --heads 64]
        [--checkpoint_dtype bfloat16] [--repeats 2]

Writes a random T5-v1.1 encoder to a temporary folder (default: T5-v1.1-XXL's tensor shapes
with 2 of its 24 layers, ~1.3 GB as f32, stored as ``--checkpoint_dtype``), then loads it
(f32 parameters) in fresh processes, alternating: ``load_t5_encoder`` (each tensor read from
its file on its own, converted and placed, ``SafetensorsFolder``) and the loader before this
change (commit 6100974: every tensor read into a dict first, then each converted with a
copy). Prints each child's peak RSS above its post-import baseline, as a multiple of the
loaded parameters' bytes: the module itself is 1.0x on a CPU backend, so the excess over 1 is
what loading costs on top (for streaming: about one tensor, here the 32128 x 4096 table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, sys
import numpy as np
import jax
from m2dit_jax.encoders import t5
from m2dit_jax.encoders.weights_io import read_config
jax.numpy.zeros(1).block_until_ready()
def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))
base = status_kib("VmRSS")
path, mode = sys.argv[1], sys.argv[2]
if mode == "streamed":
    model = t5.load_t5_encoder(path)
else:  # the previous loader: all tensors first, then each converted with a copy
    from safetensors import safe_open
    from m2dit_jax.encoders.weights_io import param_names, torch_to_jax_layout
    config = t5.T5Config.from_transformers(read_config(path))
    model = t5.T5Encoder(config, seed=None)
    tensors = {}
    with safe_open(os.path.join(path, "model.safetensors"), framework="numpy") as f:
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    params = param_names(model)
    rename = t5._t5_rename(tensors)
    converted = {}
    for key, value in tensors.items():
        name = rename(key)
        if name in params:
            converted[name] = torch_to_jax_layout(value, is_embedding=t5._is_t5_table(name))
    for name, value in converted.items():
        params[name].set_value(jax.numpy.asarray(value.astype(np.float32)))
    del tensors, converted
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec from the parent process
peak = status_kib("VmHWM")
print(json.dumps({"mode": mode, "base_kib": base, "peak_kib": peak}))
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d_model", type=int, default=4096)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d_ff", type=int, default=10240)
    p.add_argument("--heads", type=int, default=64)
    p.add_argument("--checkpoint_dtype", default="bfloat16", choices=("float32", "bfloat16"))
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
        model = t5.T5Encoder(config, seed=0)
        t5.save_t5_encoder(model, folder)
        del model
        weights = os.path.join(folder, "model.safetensors")
        if args.checkpoint_dtype == "bfloat16":
            import ml_dtypes
            from safetensors.numpy import load_file, save_file

            tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in load_file(weights).items()}
            save_file(tensors, weights, metadata={"format": "pt"})
            del tensors
        size = os.path.getsize(weights)
        loaded = size * (2 if args.checkpoint_dtype == "bfloat16" else 1)  # f32 parameters
        print(
            f"checkpoint: {size / 2**30:.2f} GiB ({args.checkpoint_dtype}), "
            f"parameters {loaded / 2**30:.2f} GiB f32, {json.dumps(vars(args))}"
        )
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        results: dict[str, list[float]] = {"streamed": [], "read_all": []}  # x parameters
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
                results[mode].append((r["peak_kib"] - r["base_kib"]) * 1024 / loaded)
    for mode, ratios in results.items():
        shown = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"{mode:9s} peak RSS above baseline / parameter bytes: {shown}")
    ratio = min(results["read_all"]) / max(results["streamed"])
    print(f"read-all / streamed (worst streamed): {ratio:.2f}x")


if __name__ == "__main__":
    main()
