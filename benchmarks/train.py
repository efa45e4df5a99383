"""Train-step throughput: step time, video tokens/s and MFU for a config.

    python benchmarks/train.py                       # shapes_tiny and a medium variant on CPU
    python benchmarks/train.py --configs medium --steps 20 --dtype bfloat16
    python benchmarks/train.py --configs 2b --tokens_scale 0.25   # accelerators: the 2B model
    python benchmarks/train.py --configs tiny --loop_steps 60     # + the train loop's overhead
    python benchmarks/train.py --configs demo1,demo2 --autoencoder runs/demo/autoencoder.npz

Times the compiled train step alone (random device-resident batches, so the data pipeline is
excluded; the full loop's step time is in metrics.jsonl of any run). MFU = model FLOPs
(``m2dit_jax.model.flops``: 6N-style matmuls + dense attention, remat not counted) / elapsed /
peak, with the peak from the device table or, on CPU, a measured f32 matmul rate.

``--loop_steps N`` also runs ``train_and_evaluate`` for N steps of the same config (real data
loader, checkpointing off, one log point) and reports the loop overhead
``(loop time per step - compiled step time) / loop time per step``.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np


def bench_config(name: str, dtype: str, tokens_scale: float, autoencoder: str = ""):
    from configs.release_recipe import release_config
    from configs.shapes_tiny import get_config

    if name == "tiny":
        config = get_config()
    elif name == "medium":  # 792 tokens/sample, width 256, 8 layers
        config = get_config()
        config.data.update(dict(frames=8, height=32, width=32))
        config.model.update(
            dict(
                num_layers=8,
                num_heads=8,
                head_dim=32,
                sample_frames=4,
                sample_height=16,
                sample_width=16,
                time_embed_dim=256,
            )
        )
        config.train.batch_size = 8
    elif name in ("demo1", "demo2"):  # make demo's stage 1 / stage 2 (codec latents)
        from configs import demo

        if not autoencoder:
            raise SystemExit(f"--configs {name} reads the demo's codec: pass --autoencoder PATH")
        make = demo.get_pretrain_config if name == "demo1" else demo.get_config
        config = make({"data.autoencoder": autoencoder})
    elif name in ("2b", "5b"):
        config = release_config(f"cogvideox_{name}", stage=1, name=f"mask2dit_{name}")
        config.data.path = "unused"
        frames = max(1, round(13 * tokens_scale))
        config.model.sample_frames = frames
        config.train.batch_size = jax.device_count()
    else:
        raise ValueError(
            f"unknown benchmark config {name!r}: tiny | medium | demo1 | demo2 | 2b | 5b"
        )
    if name in ("tiny", "medium", "demo1", "demo2"):
        config.model.dtype = dtype
    config.mesh.update(dict(data=1, fsdp=-1, context=1, tensor=1, num_devices=0))
    return config


def run(name: str, steps: int, dtype: str, tokens_scale: float, autoencoder: str = "") -> dict:
    from m2dit_jax.model import create_model
    from m2dit_jax.model.flops import train_flops_per_sample
    from m2dit_jax.sharding import make_mesh
    from m2dit_jax.train.config_checks import check_config, model_layout
    from m2dit_jax.train.metrics import peak_tflops_per_device, throughput
    from m2dit_jax.train.program import build_train_program
    from m2dit_jax.train.state import count_params, split_model
    from m2dit_jax.train.step import batch_shardings

    config = bench_config(name, dtype, tokens_scale, autoencoder)
    mesh = make_mesh(check_config(config, num_devices=jax.device_count()))
    layout = model_layout(config)
    m, b, s = config.model, int(config.train.batch_size), layout.num_scenes
    with jax.set_mesh(mesh):
        program = build_train_program(config, mesh)
        _, params = split_model(create_model(m, seed=0, mesh=mesh))
        state = program.init_state(params, 0)
        del params
        rng = np.random.default_rng(0)
        host = {
            "latents": rng.standard_normal(
                (b, s * m.sample_frames, m.sample_height, m.sample_width, m.in_channels)
            ).astype(np.float32),
            "text_embeds": rng.standard_normal((b, s * m.text_len, m.text_dim)).astype(np.float32),
            "cond": np.ones((b, s), bool),
        }
        b_sh = batch_shardings(mesh, host)
        batch = {k: jax.device_put(v, b_sh[k]) for k, v in host.items()}
        step = program.step_for(b_sh)
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t0
        state, metrics = step(state, batch)  # one more warm-up
        jax.block_until_ready(metrics)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
    step_time = float(np.median(times))
    peak, source = peak_tflops_per_device()
    out = throughput(
        step_time, b, layout.video_total, train_flops_per_sample(m, layout), mesh.size, peak
    )
    return {
        "config": name,
        "dtype": m.dtype,
        "params_M": count_params(state["params"]) / 1e6,
        "tokens_per_sample": layout.seq_len,
        "batch": b,
        "devices": mesh.size,
        "device": jax.devices()[0].device_kind,
        "compile_s": round(compile_s, 2),
        "step_ms": round(step_time * 1e3, 2),
        "peak_tflops_per_device": round(peak, 4),
        "peak_source": source,
        "loss": float(metrics["loss"]),
        **{k: round(v, 4) for k, v in out.items()},
    }


def loop_overhead(
    name: str, dtype: str, steps: int, compiled_step_s: float, autoencoder: str = ""
) -> dict:
    """Runs the real train loop for ``steps`` steps and compares it with the bare step."""
    import tempfile

    from m2dit_jax.train import train_and_evaluate

    config = bench_config(name, dtype, 1.0, autoencoder)
    config.train.update(
        dict(
            num_steps=steps,
            log_every=steps,
            checkpoint_every=10 * steps,
            progress_bar=False,
            tensorboard=False,
            jsonl=False,
        )
    )
    config.eval.batches = 0
    with tempfile.TemporaryDirectory() as workdir:
        result = train_and_evaluate(config, workdir)
    loop = result["mean_step_time_s"]
    return {
        "config": name,
        "loop_steps": steps,
        "loop_step_ms": round(loop * 1e3, 2),
        "compiled_step_ms": round(compiled_step_s * 1e3, 2),
        "loop_overhead": round((loop - compiled_step_s) / loop, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,medium")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--tokens_scale",
        type=float,
        default=1.0,
        help="2b/5b: fraction of the 13 latent frames per scene",
    )
    parser.add_argument(
        "--autoencoder", default="", help="demo1/demo2: the codec (runs/demo/autoencoder.npz)"
    )
    parser.add_argument("--loop_steps", type=int, default=0, help="also time the train loop")
    parser.add_argument("--repeats", type=int, default=3, help="bare-step / loop pairs")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "default")
    ae = args.autoencoder
    rows = [run(n, args.steps, args.dtype, args.tokens_scale, ae) for n in args.configs.split(",")]
    if args.loop_steps:
        # Bare step and loop alternate, so both see the same machine state; the spread of the
        # pairs is reported (a ratio taken under load moves).
        for r in rows:
            pairs = []
            for i in range(args.repeats):
                bare = (
                    r if i == 0 else run(r["config"], args.steps, args.dtype, args.tokens_scale, ae)
                )
                pairs.append(
                    loop_overhead(
                        r["config"], args.dtype, args.loop_steps, bare["step_ms"] / 1e3, ae
                    )
                )
                print(json.dumps(pairs[-1]))
            overheads = sorted(p["loop_overhead"] for p in pairs)
            print(
                f"{r['config']}: loop overhead median {np.median(overheads):.2%} "
                f"(min {overheads[0]:.2%}, max {overheads[-1]:.2%}, {len(pairs)} pairs)"
            )
    for row in rows:
        print(json.dumps(row))
    print()
    print(
        f"{'config':8} {'dtype':9} {'params':>8} {'tokens':>7} {'batch':>5} {'ms/step':>9} "
        f"{'video tok/s':>12} {'TFLOP/s/dev':>12} {'MFU':>6}"
    )
    for r in rows:
        print(
            f"{r['config']:8} {r['dtype']:9} {r['params_M']:7.2f}M {r['tokens_per_sample']:7d} "
            f"{r['batch']:5d} {r['step_ms']:9.1f} {r['video_tokens_per_s']:12.0f} "
            f"{r['tflops_per_device']:12.4f} {r.get('mfu', float('nan')):6.1%}"
        )
    r = rows[0]
    print(
        f"device: {r['device']} x {r['devices']}; peak {r['peak_tflops_per_device']} "
        f"TFLOP/s/device ({r['peak_source']})"
    )


if __name__ == "__main__":
    main()
