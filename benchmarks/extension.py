"""Scene extension with cached conditions vs the uncached causal-condition extension.

Same model, same inputs, window 3 (two conditions + the new scene), CFG on (the release's
batched [negative; positive] pass), ``mask_mode="causal_conditions"`` on both sides:

* per step: one guided model evaluation — uncached = the whole window's tokens through every
  layer; cached = the new scene's tokens only, against the per-layer condition K/V cache;
* per extension: ``extend(..., num_steps=N)`` end to end (cached includes its one
  condition forward that fills the cache);
* compiled FLOPs (XLA cost analysis; layers unscanned and the dense ``xla`` attention so no
  loop body is counted once only) of the step programs and of the cache fill;
* the cache's memory: 2 x layers x cached tokens x width per CFG branch, measured on the
  benchmark model and computed for CogVideoX-5B at the release layout.

    .venv/bin/python benchmarks/extension.py                  # tiny + medium, 50 steps
    .venv/bin/python benchmarks/extension.py --configs tiny --steps 10 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

CONFIGS = {
    # one scene: F latent frames of H x W latents (patch 2), T caption tokens
    "tiny": dict(model={}, frames=2, size=8),
    "medium": dict(
        model=dict(num_layers=8, num_heads=4, head_dim=32, text_len=32, time_embed_dim=64),
        frames=4,
        size=24,
    ),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--steps", type=int, default=50, help="sampler steps per extension")
    p.add_argument("--repeats", type=int, default=5, help="timed runs (median)")
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    return p.parse_args()


def _median_time(fn, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _flops(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def bench(name: str, args) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from m2dit_jax.diffusion import extend
    from m2dit_jax.model import create_model, get_model_config

    spec = CONFIGS[name]
    cfg = get_model_config("tiny", attention_backend="xla", scan_layers=False, **spec["model"])
    model = create_model(cfg, seed=0)
    graphdef, state = nnx.split(model)
    s, k, f, hw, t_len = args.window, args.window - 1, spec["frames"], spec["size"], cfg.text_len
    b = args.batch
    keys = jax.random.split(jax.random.key(0), 4)
    window = jax.random.normal(keys[0], (b, s * f, hw, hw, cfg.in_channels))
    text = jax.random.normal(keys[1], (b, s * t_len, cfg.text_dim))
    negative = jax.random.normal(keys[2], (b, s * t_len, cfg.text_dim))
    t = jnp.asarray([[0] * k + [500]] * b, jnp.int32)
    guidance = jnp.float32(6.0)

    def full_step(state, x, text, negative, t):  # one guided evaluation, whole window
        m = nnx.merge(graphdef, state)
        v = m(
            jnp.concatenate([x, x]),
            jnp.concatenate([negative, text]),
            jnp.concatenate([t, t]),
            num_scenes=s,
            causal_conditions=k,
        )
        v_u, v_t = jnp.split(v, 2)
        return v_u + guidance * (v_t - v_u)

    def fill_cache(state, x, text, negative):
        m = nnx.merge(graphdef, state)
        cond = x[:, : k * f]
        return m.condition_cache(
            jnp.concatenate([cond, cond]),
            jnp.concatenate([negative[:, : k * t_len], text[:, : k * t_len]]),
            num_scenes=s,
        )

    def cached_step(state, x, text, negative, t, cache):  # the new scene's tokens only
        m = nnx.merge(graphdef, state)
        new = x[:, k * f :]
        v = m.cached_call(
            jnp.concatenate([new, new]),
            jnp.concatenate([negative[:, k * t_len :], text[:, k * t_len :]]),
            jnp.concatenate([t[:, k:], t[:, k:]]),
            cache,
            num_scenes=s,
        )
        v_u, v_t = jnp.split(v, 2)
        return v_u + guidance * (v_t - v_u)

    full_j, fill_j, cached_j = jax.jit(full_step), jax.jit(fill_cache), jax.jit(cached_step)
    cache = jax.block_until_ready(fill_j(state, window, text, negative))
    step_args = (state, window, text, negative, t)
    out = {"config": name, "layers": cfg.num_layers, "width": cfg.num_heads * cfg.head_dim}
    layout = model.layout(window.shape, s)
    out["window_tokens"] = layout.seq_len
    out["new_scene_tokens"] = layout.text_block + layout.video_len
    out["cached_tokens"] = k * layout.video_len
    out["step_full_s"] = _median_time(lambda: full_j(*step_args), args.repeats)
    out["step_cached_s"] = _median_time(lambda: cached_j(*step_args, cache), args.repeats)
    out["fill_s"] = _median_time(lambda: fill_j(state, window, text, negative), args.repeats)
    out["flops_step_full"] = _flops(full_j, *step_args)
    out["flops_step_cached"] = _flops(cached_j, *step_args, cache)
    out["flops_fill"] = _flops(fill_j, state, window, text, negative)
    cache_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    out["cache_bytes_per_branch"] = cache_bytes // 2
    formula = 2 * cfg.num_layers * out["cached_tokens"] * out["width"] * 4
    assert formula == out["cache_bytes_per_branch"], (formula, out["cache_bytes_per_branch"])

    prior, prior_text = window[:, : k * f], text[:, : k * t_len]
    kw = dict(scene_text=prior_text, window=s, num_steps=args.steps, guidance_scale=6.0,
              negative_text_embeds=negative[:, :t_len], mask_mode="causal_conditions")  # fmt: skip
    caption = text[:, k * t_len :]
    reps = max(1, args.repeats // 2)
    out["extend_full_s"] = _median_time(lambda: extend(model, prior, caption, **kw), reps)
    out["extend_cached_s"] = _median_time(
        lambda: extend(model, prior, caption, cache_conditions=True, **kw), reps
    )
    diff = jnp.abs(
        extend(model, prior, caption, cache_conditions=True, **kw)
        - extend(model, prior, caption, **kw)
    ).max()
    out["max_abs_diff"] = float(diff)
    return out


def release_cache_bytes() -> dict:
    """Cache memory for CogVideoX-5B at the release layout (3 scenes, 2 conditions), bf16."""
    layers, width, text, video, conditions = 42, 3072, 226, 13 * 30 * 45, 2
    bf16 = 2
    all_tokens = 2 * layers * conditions * (text + video) * width * bf16
    video_only = 2 * layers * conditions * video * width * bf16
    return {"all_condition_tokens": all_tokens, "video_only": video_only}


def main() -> None:
    args = parse_args()
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    print(f"uptime: {os.popen('uptime').read().strip()}  |  cores: {os.cpu_count()}")
    print(f"window {args.window}, batch {args.batch}, CFG on, {args.steps} steps, f32, CPU")
    rows = [bench(name, args) for name in args.configs]
    header = ("config", "window tok", "new tok", "cached tok", "step full s", "step cached s",
              "speed-up", "fill s", "extend full s", "extend cached s", "speed-up",
              "GFLOP full", "GFLOP cached", "GFLOP fill", "FLOP ratio", "cache MiB/branch",
              "max |diff|")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [
            f"{r['config']} ({r['layers']}L x {r['width']})",
            r["window_tokens"],
            r["new_scene_tokens"],
            r["cached_tokens"],
            f"{r['step_full_s']:.4f}",
            f"{r['step_cached_s']:.4f}",
            f"{r['step_full_s'] / r['step_cached_s']:.2f}x",
            f"{r['fill_s']:.4f}",
            f"{r['extend_full_s']:.3f}",
            f"{r['extend_cached_s']:.3f}",
            f"{r['extend_full_s'] / r['extend_cached_s']:.2f}x",
            f"{r['flops_step_full'] / 1e9:.3f}",
            f"{r['flops_step_cached'] / 1e9:.3f}",
            f"{r['flops_fill'] / 1e9:.3f}",
            f"{r['flops_step_full'] / r['flops_step_cached']:.2f}x",
            f"{r['cache_bytes_per_branch'] / 2**20:.2f}",
            f"{r['max_abs_diff']:.1e}",
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    rel = release_cache_bytes()
    print(
        "CogVideoX-5B release layout (42 layers, width 3072, 2 conditions, bf16), per CFG "
        f"branch: 2 x layers x (226 + 17,550) x width = {rel['all_condition_tokens']:,} B "
        f"({rel['all_condition_tokens'] / 2**30:.2f} GiB); stored (video K/V only, mask 1 "
        f"never lets a new scene see another scene's caption): {rel['video_only']:,} B "
        f"({rel['video_only'] / 2**30:.2f} GiB)"
    )
    print(f"uptime: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
