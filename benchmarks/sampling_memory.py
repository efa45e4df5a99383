"""Per-device memory of one sampler step of a real model, from the compiled program.

    python benchmarks/sampling_memory.py --model cogvideox_5b                   # XLA:CPU, 8 devices
    python benchmarks/sampling_memory.py --model cogvideox_5b --topology v5p-8  # TPU compiler

One denoising step with classifier-free guidance (the conditional and unconditional branches in
one batch of 2 per video) at the release's layout: 3 scenes x 13 x 60 x 90 latents, 3 x 226
caption tokens (53,328 tokens per sample), bf16 weights and compute, parameters sharded over
``fsdp`` x ``tensor`` by the logical-axis rules. Nothing is allocated: weights and inputs are
ShapeDtypeStructs. The batch of 2 (CFG) is sharded over ``fsdp``, so the default mesh is
fsdp 2 x tensor 4 (48 heads over tensor). ``--topology`` compiles for a TPU slice with
libtpu (``make libtpu``), the script re-running itself in libtpu's environment
(``m2dit_jax.train.aot.libtpu_env``).

``--program`` picks what is compiled (same layout, model, mesh and CFG batch):

* ``joint`` (default): the joint mask-1 step above (also the shape of a mask-1 extension step);
* ``extend_uncached``: a scene-extension step with ``causal_conditions=2`` (window 3 = two
  clean conditions + the new scene, the whole window's 53,328 tokens through every layer);
* ``prefill``: the one-off condition forward (``Mask2DiT.condition_cache``) over the two
  conditions (2 x (226 + 17,550) tokens) that fills the per-layer K/V cache;
* ``extend_cached``: the cached extension step (``Mask2DiT.cached_call``): the new scene's
  17,776 tokens only, attending to the cached condition K/V (an argument of the step).

The cache, (layers, batch, 2 x 17,550, heads, head_dim) for K and V, is sharded like the
activations' K/V (batch over data x fsdp, heads over tensor); its total and per-device bytes
are reported with ``prefill`` / ``extend_cached``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def _devices_from_argv(argv: list[str]) -> int:
    for i, arg in enumerate(argv):
        if arg.startswith("--devices="):
            return int(arg.split("=", 1)[1])
        if arg == "--devices" and i + 1 < len(argv):
            return int(argv[i + 1])
    return 8


if __name__ == "__main__" and "--topology" not in " ".join(sys.argv):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={_devices_from_argv(sys.argv)}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

GIB = 1024**3


PROGRAMS = ("joint", "extend_uncached", "prefill", "extend_cached")
CACHE_AXES = ("layers", "batch", "seq", "heads", "head_dim")


def compile_denoise_step(
    model_name: str,
    devices,
    mesh_shape: dict[str, int],
    *,
    videos: int = 1,
    cfg: bool = True,
    program: str = "joint",
) -> dict:
    """Compiles one CFG denoising step of ``model_name`` (or, by ``program``, an extension
    step / the condition prefill / the cached extension step, see the module doc) on
    ``devices`` laid out as ``mesh_shape``; returns per-device bytes. The batch (videos x CFG
    branches) is sharded over (data, fsdp), heads over tensor, so batch and heads must divide
    those axes."""
    import jax
    import jax.numpy as jnp

    from m2dit_jax.model import get_model_config
    from m2dit_jax.sharding import make_mesh, named_sharding
    from m2dit_jax.train.program import abstract_params

    if program not in PROGRAMS:
        raise ValueError(f"program must be one of {PROGRAMS}, got {program!r}")
    config = get_model_config(
        model_name,
        dtype="bfloat16",
        param_dtype="bfloat16",
        scan_layers=True,
        attention_backend="auto",
    )
    s, f, h, w = 3, int(config.sample_frames), int(config.sample_height), int(config.sample_width)
    k = s - 1  # conditions in the extension window
    t_len, c_in, d_text = int(config.text_len), int(config.in_channels), int(config.text_dim)
    video_tokens = f * (h // 2) * (w // 2)  # per scene (patch 2)
    mesh = make_mesh(mesh_shape, devices)
    parts, params = abstract_params(config, mesh)
    b = videos * (2 if cfg else 1)
    batch_sharded = named_sharding(mesh, ("batch",))
    cache_sharded = named_sharding(mesh, CACHE_AXES)

    def spec(shape, dtype, sharding=batch_sharded):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    cache_shape = (int(config.num_layers), b, k * video_tokens, int(config.num_heads),
                   int(config.head_dim))  # fmt: skip
    cache = {"k": spec(cache_shape, jnp.bfloat16, cache_sharded),
             "v": spec(cache_shape, jnp.bfloat16, cache_sharded)}  # fmt: skip
    if program in ("joint", "extend_uncached"):
        args = (
            spec((b, s * f, h, w, c_in), jnp.bfloat16),
            spec((b, s * t_len, d_text), jnp.bfloat16),
            spec((b, s), jnp.int32),
        )
        causal = k if program == "extend_uncached" else 0

        def fn(p, x, c, t):
            return parts.bind(p)(x, c, t, num_scenes=s, causal_conditions=causal)

        out_shardings = batch_sharded
        tokens = s * t_len + s * video_tokens
    elif program == "prefill":
        args = (
            spec((b, k * f, h, w, c_in), jnp.bfloat16),
            spec((b, k * t_len, d_text), jnp.bfloat16),
        )

        def fn(p, x, c):
            return parts.bind(p).condition_cache(x, c, num_scenes=s)

        out_shardings = {"k": cache_sharded, "v": cache_sharded}
        tokens = k * (t_len + video_tokens)
    else:  # extend_cached
        args = (
            spec((b, f, h, w, c_in), jnp.bfloat16),
            spec((b, t_len, d_text), jnp.bfloat16),
            spec((b,), jnp.int32),
            cache,
        )

        def fn(p, x, c, t, kv):
            return parts.bind(p).cached_call(x, c, t, kv, num_scenes=s)

        out_shardings = batch_sharded
        tokens = t_len + video_tokens

    step = jax.jit(fn, out_shardings=out_shardings)
    t0 = time.perf_counter()
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        lowered = step.lower(params, *args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    out = {
        "model": model_name,
        "program": program,
        "platform": str(devices[0].platform),
        "device_kind": str(devices[0].device_kind),
        "devices": len(devices),
        "mesh": {a: v for a, v in mesh.shape.items() if v > 1},
        "videos": videos,
        "cfg": cfg,
        "tokens_per_sample": tokens,
        "lower_s": round(t1 - t0, 1),
        "compile_s": round(t2 - t1, 1),
        "uses_mosaic": "tpu_custom_call" in lowered.as_text(),
    }
    for key in ("argument", "output", "temp", "alias"):
        out[f"{key}_gib"] = round(getattr(mem, f"{key}_size_in_bytes") / GIB, 3)
    out["peak_gib"] = round(
        out["argument_gib"] + out["output_gib"] - out["alias_gib"] + out["temp_gib"], 3
    )
    if program in ("prefill", "extend_cached"):
        itemsize = jnp.dtype(jnp.bfloat16).itemsize
        total = 2 * itemsize * math.prod(cache_shape)
        per_device = 2 * itemsize * math.prod(cache_sharded.shard_shape(cache_shape))
        out["cache_shape"] = list(cache_shape)
        out["cache_gib_total"] = round(total / GIB, 3)  # K + V, every CFG branch
        out["cache_gib_per_device"] = round(per_device / GIB, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cogvideox_5b", choices=["cogvideox_2b", "cogvideox_5b"])
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    parser.add_argument("--topology", default="", help="a TPU slice, e.g. v5p-8, v6e-8")
    parser.add_argument("--mesh", default="fsdp=2,tensor=4", help="axis=size,... (all devices)")
    parser.add_argument("--videos", type=int, default=1)
    parser.add_argument("--no-cfg", action="store_true")
    parser.add_argument("--program", default="joint", choices=PROGRAMS, help="see module doc")
    args = parser.parse_args()
    from m2dit_jax.train import aot

    if args.topology:
        if not aot.libtpu_importable():
            if not aot.libtpu_installed():
                aot.require_libtpu()  # a clear error naming `make libtpu`
            os.execve(sys.executable, [sys.executable, *sys.argv], aot.libtpu_env())
        devices = aot.topology_devices(args.topology)
    else:
        import jax

        devices = jax.devices()[: args.devices]
    mesh_shape = {k: int(v) for k, v in (item.split("=") for item in args.mesh.split(","))}
    row = compile_denoise_step(
        args.model,
        devices,
        mesh_shape,
        videos=args.videos,
        cfg=not args.no_cfg,
        program=args.program,
    )
    if args.topology:
        row["topology"] = args.topology
        row["hbm_gib"] = round(aot.get_topology(args.topology).chip.hbm_bytes / GIB, 2)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
