"""Compile the train step ahead of time on N simulated CPU devices; print memory and FLOPs.

    python -m launch.compile --config configs/mask2dit_5b_sft.py --devices 8 \
        [--config.mesh.context=2 --config.train.batch_size=8 ...]

Nothing is allocated: the model, optimizer state and batch are ShapeDtypeStructs with their
shardings, so a 5B config fits on a laptop. The numbers are XLA:CPU's view of the same sharded
program (per-device argument/output/temporary bytes, the compiler's FLOP count next to the
model FLOPs used for MFU); accelerator compilers fuse differently, so treat temporaries as an
estimate and the argument/output sizes (params, optimizer state, EMA) as exact.
"""

from __future__ import annotations

import os
import sys
import time


def _device_count_from_argv(argv: list[str]) -> int:
    for i, arg in enumerate(argv):
        if arg.startswith("--devices="):
            return int(arg.split("=", 1)[1])
        if arg == "--devices" and i + 1 < len(argv):
            return int(argv[i + 1])
    return 8


# Simulated devices must be configured before jax is imported.
if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={_device_count_from_argv(sys.argv)}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_DEVICES = flags.DEFINE_integer("devices", 8, "Simulated CPU devices (the mesh size).")
flags.mark_flags_as_required(["config"])

GIB = 1024**3


def compile_report(config, num_devices: int) -> dict:
    """Lowers and compiles the train step for ``config``; returns the numbers it prints."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from m2dit_jax.model import Mask2DiT, param_shardings
    from m2dit_jax.model.flops import train_flops_per_sample
    from m2dit_jax.sharding import make_mesh
    from m2dit_jax.train.config_checks import check_config, model_layout
    from m2dit_jax.train.optimizer import make_optimizer
    from m2dit_jax.train.state import ModelParts, abstract_train_state, count_params
    from m2dit_jax.train.step import batch_shardings, make_train_step
    from m2dit_jax.train.trainer import _make_loss

    devices = jax.devices()[:num_devices]
    if len(devices) < num_devices:
        raise ValueError(f"--devices={num_devices} but only {len(devices)} devices exist")
    config.mesh.num_devices = 0
    mesh_shape = check_config(config, num_devices=num_devices, process_count=1)
    mesh = make_mesh(mesh_shape, devices)
    layout = model_layout(config)
    m = config.model

    abstract_model = nnx.eval_shape(lambda: Mask2DiT(m, rngs=nnx.Rngs(0)))
    graphdef, params_state, rest = nnx.split(abstract_model, nnx.Param, ...)
    shardings = nnx.to_pure_dict(param_shardings(params_state, mesh))
    shapes = nnx.to_pure_dict(params_state)
    params = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )
    tx, schedule = make_optimizer(config.optim, int(config.train.num_steps))
    state, state_sh = abstract_train_state(params, tx, mesh)

    b, s = int(config.train.batch_size), layout.num_scenes
    host_batch = {
        "latents": jax.ShapeDtypeStruct(
            (b, s * m.sample_frames, m.sample_height, m.sample_width, m.in_channels), jnp.float32
        ),
        "text_embeds": jax.ShapeDtypeStruct((b, s * m.text_len, m.text_dim), jnp.float32),
        "cond": jax.ShapeDtypeStruct((b, s), jnp.bool_),
    }
    b_sh = batch_shardings(mesh, host_batch)
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=b_sh[k]) for k, v in host_batch.items()
    }
    step = make_train_step(
        ModelParts(graphdef, rest),
        tx,
        schedule,
        _make_loss(config),
        state_shardings=state_sh,
        batch_sharding=b_sh,
        grad_accum_steps=int(config.optim.grad_accum_steps),
        ema_decay=float(config.optim.ema_decay),
    )
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()

    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    model_flops = train_flops_per_sample(m, layout) * b
    return {
        "mesh": mesh_shape,
        "params": count_params(params),
        "seq_len": layout.seq_len,
        "global_batch": b,
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "argument_bytes": getattr(mem, "argument_size_in_bytes", 0),
        "output_bytes": getattr(mem, "output_size_in_bytes", 0),
        "temp_bytes": getattr(mem, "temp_size_in_bytes", 0),
        "alias_bytes": getattr(mem, "alias_size_in_bytes", 0),
        "code_bytes": getattr(mem, "generated_code_size_in_bytes", 0),
        "xla_flops_per_device": float((cost or {}).get("flops", 0.0)),
        "model_flops_per_step": model_flops,
    }


def format_report(name: str, r: dict) -> str:
    peak = r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"] + r["temp_bytes"]
    lines = [
        f"{name}: {r['params'] / 1e9:.3f} B params, {r['seq_len']} tokens/sample, "
        f"global batch {r['global_batch']}, mesh {r['mesh']}",
        f"  lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s",
        "  per device:",
        f"    arguments (state + batch) {r['argument_bytes'] / GIB:9.3f} GiB",
        f"    outputs                   {r['output_bytes'] / GIB:9.3f} GiB "
        f"(donated/aliased {r['alias_bytes'] / GIB:.3f} GiB)",
        f"    temporaries               {r['temp_bytes'] / GIB:9.3f} GiB",
        f"    peak estimate             {peak / GIB:9.3f} GiB",
        f"  step FLOPs: model {r['model_flops_per_step']:.3e} (6N + attention, used for MFU); "
        f"XLA per device {r['xla_flops_per_device']:.3e} (loop bodies counted once)",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    print(format_report(config.name, compile_report(config, _DEVICES.value)))


if __name__ == "__main__":
    app.run(main)
