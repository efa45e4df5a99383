"""Import a CogVideoX-2B-size checkpoint into an 8-device fsdp mesh: peak host RSS and time.

    python benchmarks/import_2b.py [--dir /tmp/m2dit_import_2b] [--devices 8] [--keep]
        [--param-dtype bfloat16|float32] [--no-scan]

1. Writes a random checkpoint with CogVideoX-2B's exact config (30 layers, 30 x 64 heads,
   sin-cos; 1.694 B parameters) as bf16 safetensors in 2 GB shards with an index (~3.4 GB), one
   tensor at a time (the writer never holds the model).
2. In a fresh process (so the peak is the import's own) with ``--devices`` simulated CPU
   devices, ``load_diffusers_transformer(path, mesh=fsdp mesh)`` streams it onto the mesh and
   reports wall time, peak RSS (``ru_maxrss``), RSS before/after and the checkpoint size.

On CPU the "devices" live in host memory too, so RSS after the import includes the placed
parameters themselves (3.4 GB in bf16); the import's own overhead is peak minus that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_checkpoint(folder: str) -> dict:
    import ml_dtypes

    from m2dit_jax.convert.mapping import config_to_diffusers, rules
    from m2dit_jax.convert.safetensors_io import write_folder
    from m2dit_jax.model import get_model_config

    config = get_model_config("cogvideox_2b", scan_layers=False)
    shapes = {}

    def tensors():
        rng = np.random.default_rng(0)
        from flax import nnx

        from m2dit_jax.model.transformer import Mask2DiT

        abstract = nnx.eval_shape(lambda: Mask2DiT(config, rngs=nnx.Rngs(0)))
        flat = {
            p: v.get_value().shape for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))
        }
        for rule in rules(config):
            for layer in range(config.num_layers) if rule.per_block else [None]:
                path = rule.ours if layer is None else ("blocks", layer) + rule.ours
                ours = rng.standard_normal(flat[path], dtype=np.float32) * 0.02
                theirs = rule.to_theirs(ours)
                name = rule.theirs.format(i=layer) if layer is not None else rule.theirs
                shapes[name] = theirs.shape
                yield name, np.ascontiguousarray(theirs.astype(ml_dtypes.bfloat16))

    t0 = time.perf_counter()
    files = write_folder(folder, tensors(), 2 * 10**9)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config_to_diffusers(config), f, indent=2)
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in files)
    params = int(sum(np.prod(s) for s in shapes.values()))
    return {
        "files": files,
        "bytes": size,
        "params": params,
        "tensors": len(shapes),
        "write_s": time.perf_counter() - t0,
    }


def load(folder: str, devices: int, param_dtype: str, scan: bool) -> dict:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    import resource

    import jax
    from flax import nnx

    from m2dit_jax.convert import load_diffusers_transformer
    from m2dit_jax.sharding import make_mesh

    mesh = make_mesh({"fsdp": devices})
    jax.block_until_ready(jax.device_put(np.zeros(8), jax.devices()[0]))
    before = _rss_mb()
    t0 = time.perf_counter()
    model = load_diffusers_transformer(
        folder, mesh=mesh, dtype="bfloat16", param_dtype=param_dtype, scan_layers=scan
    )
    state = nnx.state(model, nnx.Param)
    jax.block_until_ready(jax.tree.leaves(state))
    seconds = time.perf_counter() - t0
    leaves = jax.tree.leaves(state)
    placed = sum(x.nbytes for x in leaves)
    per_device = {}
    for x in leaves:
        for shard in x.addressable_shards:
            per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.nbytes
    sharded = sum(1 for x in leaves if any(s is not None for s in x.sharding.spec))
    return {
        "load_s": seconds,
        "rss_before_mb": before,
        "rss_after_mb": _rss_mb(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "placed_bytes": placed,
        "per_device_max_bytes": max(per_device.values()),
        "per_device_min_bytes": min(per_device.values()),
        "sharded_params": sharded,
        "params": len(leaves),
        "param_dtype": param_dtype,
        "scan_layers": scan,
        "devices": devices,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/m2dit_import_2b")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--param-dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--no-scan", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint afterwards")
    parser.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_only:
        print(json.dumps(load(args.dir, args.devices, args.param_dtype, not args.no_scan)))
        return
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(args.dir)) or "/").free
    if free < 8 * 10**9:
        raise SystemExit(f"need ~4 GB free for the checkpoint, {free / 1e9:.1f} GB free")
    written = None
    if not os.path.isfile(os.path.join(args.dir, "config.json")):
        os.makedirs(args.dir, exist_ok=True)
        written = write_checkpoint(args.dir)
        print(
            f"wrote {written['params'] / 1e9:.3f} B params in {written['tensors']} tensors, "
            f"{written['bytes'] / 1e9:.2f} GB in {len(written['files'])} bf16 shards, "
            f"{written['write_s']:.0f} s"
        )
    size = sum(
        os.path.getsize(os.path.join(args.dir, n))
        for n in os.listdir(args.dir)
        if n.endswith(".safetensors")
    )
    cmd = [sys.executable, __file__, "--load-only", "--dir", args.dir]
    cmd += ["--devices", str(args.devices), "--param-dtype", args.param_dtype]
    cmd += ["--no-scan"] if args.no_scan else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["checkpoint_bytes"] = size
    overhead = result["peak_rss_mb"] - result["rss_before_mb"] - result["placed_bytes"] / 2**20
    print(json.dumps(result, indent=2))
    print(
        f"checkpoint {size / 2**30:.2f} GiB -> {args.devices}-device fsdp mesh "
        f"({result['param_dtype']} params, scan={result['scan_layers']}): "
        f"{result['load_s']:.1f} s; peak RSS {result['peak_rss_mb'] / 1024:.2f} GiB "
        f"(before {result['rss_before_mb'] / 1024:.2f}, "
        f"after {result['rss_after_mb'] / 1024:.2f}; placed params "
        f"{result['placed_bytes'] / 2**30:.2f} GiB, {result['per_device_max_bytes'] / 2**20:.0f} "
        f"MiB on the fullest device); transient overhead {overhead / 1024:.2f} GiB = "
        f"{overhead * 2**20 / size:.2f}x the checkpoint"
    )
    if not args.keep:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
