"""Mask2DiT benchmarks: (1) CPU forward+backward vs diffusers, (2) abstract 5B train-step compile.

    python benchmarks/model.py                 # both parts (~5 min on a 2-core CPU)
    python benchmarks/model.py --skip-compile  # only the side-by-side timing
    python benchmarks/model.py --skip-cpu --mesh fsdp=2,context=4

Part 1 (``--threads 1`` by default) times one jitted forward+backward (loss = mean(out^2),
gradients for every parameter) of our model against diffusers' CogVideoXTransformer3DModel
(torch, eager) on the same inputs, same weights and the same CPU thread count: 8 layers,
8 x 64 heads, RoPE, 3 scenes x 2 latent frames of 16x16 (384 video tokens), captions 3 x 32
tokens, mask 1 in both.

Part 2 needs no accelerator: it builds the 5B model abstractly (no parameter is allocated),
lowers and compiles one AdamW training step (bf16 compute, f32 params and state, full remat,
scanned layers, split attention) for a 3 x 13 x 60 x 90 latent sample (53,328 tokens) on a
mesh of simulated CPU devices, and prints the compiled per-device memory and the FLOPs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEVICES = 8


def _threads_from_argv(argv: list[str]) -> int:
    """--threads N (read before jax is imported, since XLA takes it from XLA_FLAGS)."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return 1


THREADS = _threads_from_argv(sys.argv)
if "jax" not in sys.modules:  # must precede the first jax import
    flags = f" --xla_force_host_platform_device_count={DEVICES}"
    if THREADS == 1:
        flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + flags).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from m2dit_jax.model import Mask2DiT, get_model_config  # noqa: E402
from m2dit_jax.model.create import param_shardings  # noqa: E402
from m2dit_jax.model.flops import param_count, train_flops_per_sample  # noqa: E402

GiB = 2**30


def _alternating_medians(fn_a, fn_b, iters: int) -> tuple[float, float]:
    """Median seconds of fn_a and fn_b, run alternately so that load drifts hit both alike."""
    fn_a(), fn_b()  # warm-up (compile / allocator)
    times_a, times_b = [], []
    for _ in range(iters):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return float(np.median(times_a)), float(np.median(times_b))


# ---------------------------------------------------------------------------------- part 1
def side_by_side(iters: int, backend: str) -> dict:
    import tempfile

    import torch
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    from m2dit_jax.convert import load_diffusers_transformer

    threads = THREADS
    if threads not in (1, os.cpu_count()):
        raise ValueError(f"--threads must be 1 or all {os.cpu_count()} cores (XLA's choices)")
    torch.set_num_threads(threads)
    s, f, hw, t_len = 3, 2, 16, 32
    torch.manual_seed(0)
    reference = CogVideoXTransformer3DModel(
        num_attention_heads=8,
        attention_head_dim=64,
        in_channels=16,
        out_channels=16,
        time_embed_dim=512,
        text_embed_dim=256,
        num_layers=8,
        sample_width=hw,
        sample_height=hw,
        sample_frames=(s * f - 1) * 4 + 1,
        max_text_seq_length=s * t_len,
        use_rotary_positional_embeddings=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(tmp)
        ours = load_diffusers_transformer(tmp, text_len=t_len, attention_backend=backend)
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((1, s * f, hw, hw, 16)).astype(np.float32)
    text = rng.standard_normal((1, s * t_len, 256)).astype(np.float32)
    t = np.array([500])
    layout = ours.layout(latents.shape, s)
    mask = torch.from_numpy(layout.dense_mask()[None])
    rope = get_3d_rotary_pos_embed(64, ((0, 0), (hw // 2, hw // 2)), (hw // 2, hw // 2), s * f)
    hidden = torch.from_numpy(latents.transpose(0, 1, 4, 2, 3).copy())
    enc, ts = torch.from_numpy(text), torch.from_numpy(t)

    def torch_step():
        reference.zero_grad(set_to_none=True)
        out = reference(
            hidden_states=hidden,
            encoder_hidden_states=enc,
            timestep=ts,
            image_rotary_emb=rope,
            attention_kwargs={"attention_mask": mask},
            return_dict=False,
        )[0]
        out.square().mean().backward()

    graphdef, params = nnx.split(ours)
    lat, txt, tj = jnp.asarray(latents), jnp.asarray(text), jnp.asarray(t)

    @jax.jit
    def jax_step(params):
        def loss(p):
            return jnp.mean(nnx.merge(graphdef, p)(lat, txt, tj, num_scenes=s) ** 2)

        return jax.value_and_grad(loss)(params)

    def jax_run():
        jax.block_until_ready(jax_step(params))

    t_jax, t_torch = _alternating_medians(jax_run, torch_step, iters)
    with torch.no_grad():
        want = reference(
            hidden_states=hidden,
            encoder_hidden_states=enc,
            timestep=ts,
            image_rotary_emb=rope,
            attention_kwargs={"attention_mask": mask},
            return_dict=False,
        )[0]
    got = nnx.merge(graphdef, params)(lat, txt, tj, num_scenes=s)
    max_err = float(np.abs(np.asarray(got) - want.numpy().transpose(0, 1, 3, 4, 2)).max())
    return {
        "max_abs_err": max_err,
        "threads": threads,
        "tokens": layout.seq_len,
        "ours_s": t_jax,
        "diffusers_s": t_torch,
        "ratio": t_jax / t_torch,
        "backend": backend,
    }


# ---------------------------------------------------------------------------------- part 2
def _like_params(opt_abstract, params, mesh):
    """Optimizer-state ShapeDtypeStructs sharded like the parameter each moment belongs to.

    A moment's tree path ends with its parameter's path; anything else (step counts) is
    replicated.
    """
    from jax.sharding import NamedSharding, PartitionSpec

    by_path = {tuple(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(path, leaf):
        for start in range(len(path)):
            param = by_path.get(tuple(path[start:]))
            if param is not None and param.shape == leaf.shape:
                return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=param.sharding)
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated)

    return jax.tree_util.tree_map_with_path(place, opt_abstract)


def abstract_compile(
    mesh_text: str, batch: int | None, backend: str, layers: int | None = None, remat: str = "full"
) -> dict:
    import optax

    from m2dit_jax.layout import SceneLayout
    from m2dit_jax.sharding import make_mesh, named_sharding

    shape = {k: int(v) for k, v in (p.split("=") for p in mesh_text.split(","))}
    mesh = make_mesh(shape)
    options = {"impl": "chunked"} if backend == "split" else {}
    overrides = {"num_layers": layers} if layers else {}
    cfg = get_model_config(
        "cogvideox_5b",
        attention_backend=backend,
        attention_options=options,
        remat=remat,
        **overrides,
    )
    s, f, h, w = 3, 13, 60, 90
    layout = SceneLayout(s, cfg.text_len, f, h // 2, w // 2)
    batch = batch or mesh.shape["data"] * mesh.shape["fsdp"]

    abstract = nnx.eval_shape(lambda: Mask2DiT(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = param_shardings(abstract_state, mesh)
    params = jax.tree.map(
        lambda v, sh: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh)),
        abstract_state,
        shardings,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    tx = optax.adamw(1e-5, b1=0.9, b2=0.999, eps=1e-10, weight_decay=0.03)
    opt_state = _like_params(jax.eval_shape(tx.init, params), params, mesh)
    batch_sharding = named_sharding(mesh, ("batch",))
    data = {
        "latents": jax.ShapeDtypeStruct(
            (batch, s * f, h, w, 16), jnp.float32, sharding=named_sharding(mesh, ("batch",))
        ),
        "text_embeds": jax.ShapeDtypeStruct(
            (batch, s * cfg.text_len, 4096), jnp.float32, sharding=batch_sharding
        ),
        "timesteps": jax.ShapeDtypeStruct((batch, s), jnp.int32, sharding=batch_sharding),
        "target": jax.ShapeDtypeStruct(
            (batch, s * f, h, w, 16), jnp.float32, sharding=batch_sharding
        ),
    }

    def train_step(params, opt_state, data):
        def loss_fn(p):
            model = nnx.merge(graphdef, p)
            pred = model(data["latents"], data["text_embeds"], data["timesteps"], num_scenes=s)
            return jnp.mean((pred - data["target"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, data)
        compiled = lowered.compile()
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    peak = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )
    model_flops = train_flops_per_sample(cfg, layout) * batch
    return {
        "mesh": dict(mesh.shape),
        "batch": batch,
        "tokens_per_sample": layout.seq_len,
        "params_B": param_count(cfg) / 1e9,
        "compile_s": seconds,
        "argument_GiB": mem.argument_size_in_bytes / GiB,
        "output_GiB": mem.output_size_in_bytes / GiB,
        "alias_GiB": mem.alias_size_in_bytes / GiB,
        "temp_GiB": mem.temp_size_in_bytes / GiB,
        "peak_GiB_per_device": peak / GiB,
        "xla_flops_per_device": float(cost.get("flops", float("nan"))),
        "model_flops_per_step": model_flops,
        "model_flops_per_device": model_flops / mesh.size,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="part 1 CPU threads for both frameworks: 1 (default; fair on a shared machine, "
        "where torch's spinning threads collapse under load) or all cores",
    )
    parser.add_argument("--cpu-backend", default="xla", help="attention backend for part 1")
    parser.add_argument("--mesh", default="fsdp=8", help="part 2 mesh, e.g. fsdp=2,context=4")
    parser.add_argument("--batch", type=int, default=None, help="part 2 global batch")
    parser.add_argument("--backend", default="split", help="part 2 attention backend")
    parser.add_argument("--layers", type=int, default=None, help="part 2: override 42 layers")
    parser.add_argument("--remat", default="full", help="part 2 remat policy")
    args = parser.parse_args(argv)
    if not args.skip_cpu:
        r = side_by_side(args.iters, args.cpu_backend)
        print(
            f"[cpu fwd+bwd, {r['threads']} threads, {r['tokens']} tokens, backend {r['backend']}] "
            f"ours {r['ours_s'] * 1e3:.1f} ms, diffusers {r['diffusers_s'] * 1e3:.1f} ms, "
            f"ratio ours/diffusers {r['ratio']:.3f} (outputs agree to {r['max_abs_err']:.1e})",
            flush=True,
        )
    if not args.skip_compile:
        r = abstract_compile(args.mesh, args.batch, args.backend, args.layers, args.remat)
        print(f"[5B abstract train step] {r}")
        print(
            f"  mesh {r['mesh']}, global batch {r['batch']} x {r['tokens_per_sample']} tokens: "
            f"peak {r['peak_GiB_per_device']:.2f} GiB/device (args {r['argument_GiB']:.2f}, "
            f"temp {r['temp_GiB']:.2f}), compile {r['compile_s']:.0f} s, "
            f"model FLOPs/step {r['model_flops_per_step']:.3e} "
            f"({r['model_flops_per_device']:.3e}/device), "
            f"XLA cost-analysis FLOPs/device {r['xla_flops_per_device']:.3e}"
        )


if __name__ == "__main__":
    main()
