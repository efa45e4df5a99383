"""Convert transformer weights between diffusers CogVideoX folders and our params format.

    # diffusers transformer/ folder (or pipeline root) -> our params folder (orbax + config)
    python -m launch.convert to-jax --diffusers CogVideoX-5b/transformer --out ckpt/5b
    # our params folder -> diffusers transformer/ folder (loadable by
    # CogVideoXTransformer3DModel.from_pretrained), optionally bfloat16 and sharded
    python -m launch.convert to-diffusers --params ckpt/5b --out out/transformer --bf16

``to-jax`` with ``--mesh fsdp=8`` (any axes of data/fsdp/context/tensor) places every tensor
directly onto that mesh while loading; ``--positions-convention release`` stores the
Mask²DiT release's position tables in the model config (default ``diffusers``). Both commands
print a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _parse_mesh(text: str | None):
    if not text:
        return None
    from m2dit_jax.sharding import make_mesh

    shape = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        if not size.strip().lstrip("-").isdigit():
            raise ValueError(f"--mesh entries look like fsdp=8, got {part!r}")
        shape[name.strip()] = int(size)
    return make_mesh(shape)


def _count(model) -> int:
    import jax
    from flax import nnx

    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def to_jax(
    diffusers: str, out: str, mesh: str | None = None, positions_convention: str = "diffusers"
) -> dict[str, Any]:
    from m2dit_jax.convert import load_diffusers_transformer, save_params

    model = load_diffusers_transformer(
        diffusers, mesh=_parse_mesh(mesh), positions_convention=positions_convention
    )
    save_params(model, out)
    return {"params": out, "num_params": _count(model), "config": model.config.to_dict()}


def to_diffusers(
    params: str, out: str, bf16: bool = False, max_shard_size: str = "10GB"
) -> dict[str, Any]:
    from m2dit_jax.convert import load_params, save_diffusers_transformer

    model = load_params(params)
    files = save_diffusers_transformer(
        model, out, max_shard_size=max_shard_size, dtype="bfloat16" if bf16 else None
    )
    return {"diffusers": out, "files": files, "num_params": _count(model)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("to-jax", help="diffusers folder -> our params folder")
    a.add_argument("--diffusers", required=True, help="transformer/ folder or pipeline root")
    a.add_argument("--out", required=True, help="params folder to create")
    a.add_argument("--mesh", default=None, help="e.g. fsdp=8 or data=2,fsdp=4")
    a.add_argument(
        "--positions-convention",
        choices=("diffusers", "release"),
        default="diffusers",
        help="position tables off the sample grid: diffusers >= 0.32 (default) or the "
        "Mask²DiT release's (stored in the params' model config)",
    )
    b = sub.add_parser("to-diffusers", help="our params folder -> diffusers folder")
    b.add_argument("--params", required=True, help="a folder written by to-jax / save_params")
    b.add_argument("--out", required=True, help="diffusers transformer/ folder to write")
    b.add_argument("--bf16", action="store_true", help="store tensors in bfloat16")
    b.add_argument("--max-shard-size", default="10GB", help="shard size, e.g. 5GB")
    args = parser.parse_args(argv)
    try:
        if args.command == "to-jax":
            summary = to_jax(args.diffusers, args.out, args.mesh, args.positions_convention)
        else:
            summary = to_diffusers(args.params, args.out, args.bf16, args.max_shard_size)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    print(json.dumps(summary, indent=2, default=str))
    return summary


def run() -> None:
    main(sys.argv[1:])


if __name__ == "__main__":
    run()
