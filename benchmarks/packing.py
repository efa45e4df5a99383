"""Packed ragged rows vs equal-length padding: fill rate and real tokens/s of a train step.

    .venv/bin/python benchmarks/packing.py                 # CPU, ~5 minutes
    .venv/bin/python benchmarks/packing.py --repeats 5 --steps 10

1. **Fill rate** (real tokens / allocated tokens) of the same samples two ways: packed by the
   data pipeline's first-fit planner (``m2dit_jax.data.packing``) into rows of
   ``--budget_samples`` padded samples' worth of tokens, and padded to S x max_frames frames
   (what equal-length batching of ragged data allocates). Two sources: the synthetic ragged
   source (3 scenes of 2..6 frames, uniform) and a manifest-like source of varied shot lengths
   (shot durations log-normal, median 2 s, at 4 fps, clamped to [2, 12] frames; bucketed by
   layout as a manifest's stage 2 is), both with the space_to_depth encoder (patch_t 2).
2. **Real tokens/s of a tiny-model train step** (configs/shapes_tiny.py's model, f32,
   ``--backend`` attention: ``split`` computes each packed sample's attention alone, ``xla``
   the dense row) on the same token slots per step: the padded batch (B rows of the padded
   layout) vs packed rows of ``--budget_samples`` x the padded row (B / budget_samples rows,
   one packing plan from the planner, attention confined to each packed sample). Real tokens
   = the samples' own tokens (caption + video); each step's time is the median of ``--steps``
   compiled steps after warm-up, repeated ``--repeats`` times (spread reported).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _data_config(budget_samples: int, *, max_frames: int, min_frames: int = 2):
    from m2dit_jax.data import default_data_config

    c = default_data_config()
    c.update(dict(num_scenes=3, height=16, width=16, text_len=8, patch_t=2, patch_s=2,
                  video_encoder="space_to_depth", ragged=True, min_frames=min_frames,
                  max_frames=max_frames, pack_frame_tokens=16, pack_text_tokens=8,
                  pack_plans=0))  # fmt: skip
    spec_padded = 3 * 8 + 3 * (max_frames // 2) * 16
    c.pack_tokens = budget_samples * spec_padded
    return c


def fill_rates(budget_samples: int, seed: int = 0) -> dict[str, dict[str, float]]:
    from m2dit_jax.data import packing
    from m2dit_jax.data.frame_sampling import FrameRule

    out = {}
    config = _data_config(budget_samples, max_frames=6)
    out["synthetic (2..6 frames)"] = packing.simulate_fill_rates(config, seed=seed)
    # manifest-like: varied shot lengths, one layout per unit, bucketed
    config = _data_config(budget_samples, max_frames=12)
    rule = FrameRule.from_config(config)
    rng = np.random.default_rng(seed)
    seconds = rng.lognormal(np.log(2.0), 0.8, size=(4096, 3))
    layouts = [tuple(rule.clamp(int(s * 4)) or rule.min_frames for s in row) for row in seconds]
    unique = sorted(set(layouts))
    counts = np.array([layouts.count(u) for u in unique], np.float64)
    spec = packing.PackSpec.from_config(config)
    planner = packing.bucket_planner(unique, counts / counts.sum(), spec, seed=seed)
    plans = [planner.plan_layouts(k) for k in range(256)]
    drawn = [lay for plan in plans for lay in plan]
    out["manifest-like (log-normal shots, 2..12 frames)"] = {
        "packed": packing.pack_fill_rate(plans, spec),
        "padded": packing.padded_fill_rate(drawn, spec),
        "samples_per_row": float(np.mean([len(p) for p in plans])),
        "layouts": len(unique),
    }
    return out


def _time_step(program, state, host, frames, samples, steps):
    from m2dit_jax.train.step import batch_shardings

    sh = batch_shardings(program.mesh, host)
    batch = {k: jax.device_put(v, sh[k]) for k, v in host.items()}
    step = program.step_for(sh, scene_frames=frames, samples=samples, donate=False)
    for _ in range(2):
        _, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def throughput(
    budget_samples: int, batch: int, steps: int, repeats: int, backend: str, seed: int = 0
):
    from configs.shapes_tiny import get_config
    from m2dit_jax.data import packing
    from m2dit_jax.model import create_model
    from m2dit_jax.sharding import make_mesh
    from m2dit_jax.train.config_checks import check_config
    from m2dit_jax.train.program import build_train_program
    from m2dit_jax.train.state import split_model

    config = get_config()
    config.mesh.update(dict(data=1, fsdp=1, context=1, tensor=1, num_devices=1))
    config.train.batch_size = batch
    config.model.attention_backend = backend
    data = _data_config(budget_samples, max_frames=6)
    spec = packing.PackSpec.from_config(data)
    planner = packing.draw_planner(data, seed=seed)
    plan = max((planner.plan_layouts(k) for k in range(64)), key=spec.plan_tokens)
    m = config.model
    rng = np.random.default_rng(seed)
    mesh = make_mesh(check_config(config, num_devices=1))

    def host(rows, scenes, latent_frames):
        return {
            "latents": rng.standard_normal((rows, latent_frames, 8, 8, m.in_channels)).astype(
                np.float32
            ),
            "text_embeds": rng.standard_normal((rows, scenes * m.text_len, m.text_dim)).astype(
                np.float32
            ),
        }

    rows_packed = max(1, batch // budget_samples)
    packed_frames = tuple(f // 2 for lay in plan for f in lay)  # latent frames (patch_t 2)
    real_packed = rows_packed * spec.plan_tokens(plan)
    real_padded = batch * int(np.mean([spec.sample_tokens(lay) for lay in plan]))
    results = {"padded": [], "packed": []}
    with jax.set_mesh(mesh):
        program = build_train_program(config, mesh)
        _, params = split_model(create_model(m, seed=0, mesh=mesh))
        state = program.init_state(params, 0)
        padded_host = host(batch, 3, 3 * 3)  # 3 scenes x 6 frames -> 3 latent frames each
        packed_host = host(rows_packed, 3 * len(plan), sum(packed_frames))
        for _ in range(repeats):
            results["padded"].append(_time_step(program, state, padded_host, None, None, steps))
            results["packed"].append(
                _time_step(program, state, packed_host, packed_frames, (3,) * len(plan), steps)
            )
    return {
        "plan_samples": len(plan),
        "rows": {"padded": batch, "packed": rows_packed},
        "slots_per_step": {"padded": batch * spec.padded_tokens(),
                           "packed": rows_packed * data.pack_tokens},
        "real_tokens_per_step": {"padded": real_padded, "packed": real_packed},
        "step_s": results,
        "tokens_per_s": {
            k: [(real_packed if k == "packed" else real_padded) / t for t in v]
            for k, v in results.items()
        },
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget_samples", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="split", help="attention backend: split | xla")
    args = parser.parse_args()
    print(f"uptime: {os.getloadavg()} (1/5/15-min load), device {jax.devices()[0].device_kind}")
    print(f"\nfill rate, budget = {args.budget_samples} padded samples per packed row")
    print(f"{'source':>48} | {'packed':>7} | {'padded':>7} | samples/row")
    for name, r in fill_rates(args.budget_samples).items():
        print(f"{name:>48} | {r['packed']:7.1%} | {r['padded']:7.1%} | {r['samples_per_row']:.1f}")
    r = throughput(args.budget_samples, args.batch, args.steps, args.repeats, args.backend)
    print(f"\ntiny train step ({args.backend} attention), {r['plan_samples']} samples packed")
    for k in ("padded", "packed"):
        tps = r["tokens_per_s"][k]
        ms = [t * 1e3 for t in r["step_s"][k]]
        print(
            f"{k:>7}: {r['rows'][k]} rows, {r['slots_per_step'][k]} token slots, "
            f"{r['real_tokens_per_step'][k]} real tokens; step {statistics.median(ms):.1f} ms "
            f"(min {min(ms):.1f}, max {max(ms):.1f}); "
            f"real tokens/s {statistics.median(tps):,.0f}"
        )
    ratio = [p / q for p, q in zip(r["tokens_per_s"]["packed"], r["tokens_per_s"]["padded"])]
    print(f"packed / padded real tokens/s: {statistics.median(ratio):.2f}x "
          f"(spread {min(ratio):.2f}-{max(ratio):.2f} over {len(ratio)} repeats)")  # fmt: skip


if __name__ == "__main__":
    main()
