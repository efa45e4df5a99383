"""Compile the train step ahead of time: for a TPU topology, or on N simulated CPU devices.

    python -m launch.compile --config configs/mask2dit_5b_sft.py --topology v5p-8 \
        [--search --search_context=1,2 --search_batch_per_chip=1,2 --search_remat=full,save_attn \
         --search_logical_rules=default,zero3]
    python -m launch.compile --config configs/mask2dit_5b_sft.py --devices 8 \
        [--config.mesh.context=2 --config.train.batch_size=8 ...]

Nothing is allocated: the model, optimizer state and batch are ShapeDtypeStructs with their
shardings, so a 5B config compiles on a laptop.

``--topology`` (v5p-8, v5p-16, v5p-64, v6e-8, v6e-256, v5e-16, v4-8, ...; ``--num_slices`` for
several slices with ``--config.mesh.dcn_data=...``) compiles the real TPU program with the TPU
compiler (libtpu, installed apart by ``make aot`` into .venv/libtpu; this script re-runs
itself with it on PYTHONPATH) and prints the TPU compiler's per-chip HBM use against the
chip's capacity. ``--search`` compiles every layout of the ``--search_*`` lists and prints a
table plus the fastest-looking layout that fits (``m2dit_jax.train.aot``).

Without ``--topology`` the numbers are XLA:CPU's view of the same sharded program
(per-device argument/output/temporary bytes, the compiler's FLOP count next to the model FLOPs
used for MFU); accelerator compilers fuse differently, so treat temporaries as an estimate.
"""

from __future__ import annotations

import os
import sys


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _prepare_tpu_process(argv: list[str]) -> None:
    """Environment of a TPU-compiling process (set before jax loads); re-executes this
    module with libtpu on PYTHONPATH when libtpu is installed apart but not importable."""
    # = aot.TPU_COMPILE_ENV; set before anything imports jax (it reads JAX_PLATFORMS then)
    os.environ.update(JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    from m2dit_jax.train import aot

    if aot.libtpu_importable():
        return
    if aot.libtpu_installed() and not os.environ.get("M2DIT_AOT_REEXEC"):
        env = aot.libtpu_env()
        env["M2DIT_AOT_REEXEC"] = "1"
        os.execve(sys.executable, [sys.executable, "-m", "launch.compile", *argv[1:]], env)
    try:
        aot.require_libtpu()
    except aot.LibtpuMissing as e:
        sys.exit(f"launch.compile --topology: {e}")


# Simulated devices / the TPU compiler's environment must be configured before jax is imported.
if __name__ == "__main__":
    if _flag_value(sys.argv, "topology"):
        _prepare_tpu_process(sys.argv)
    else:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={_flag_value(sys.argv, 'devices') or 8}"
        )
        os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from m2dit_jax.train import aot  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_DEVICES = flags.DEFINE_integer("devices", 8, "Simulated CPU devices (the mesh size).")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, f"Compile for this TPU slice with XLA:TPU ({', '.join(aot.TOPOLOGIES)})."
)
_NUM_SLICES = flags.DEFINE_integer(
    "num_slices", 1, "TPU slices (multi-slice: set --config.mesh.dcn_* to match)."
)
_SEARCH = flags.DEFINE_bool("search", False, "With --topology: compile every --search_* layout.")
_S_FSDP = flags.DEFINE_list("search_fsdp", ["-1"], "fsdp sizes (-1 = all chips left; data = rest).")
_S_CONTEXT = flags.DEFINE_list("search_context", ["1", "2"], "context sizes.")
_S_TENSOR = flags.DEFINE_list("search_tensor", ["1"], "tensor sizes.")
_S_BATCH = flags.DEFINE_list("search_batch_per_chip", ["1", "2"], "Global batch / chips.")
_S_REMAT = flags.DEFINE_list(
    "search_remat",
    ["full"],
    "Remat policies (m2dit_jax.model.config.REMAT_POLICIES: none, full, save_dots, save_attn, "
    "save_qkv_attn, offload_attn, offload_qkv_attn, offload_dots, offload_input; all = every "
    "one but none).",
)
_S_RULES = flags.DEFINE_list(
    "search_logical_rules",
    ["default"],
    "mesh.logical_rules variants, entries separated by ';' (default = the config's), a preset "
    "of m2dit_jax.sharding.RULE_PRESETS (fsdp_context = the default, fsdp, zero3, replicated; "
    "presets = all of them), e.g. default,zero3,embed=fsdp+tensor",
)
_JSON = flags.DEFINE_string("json", None, "Also write the report(s) as JSON to this file.")
flags.mark_flags_as_required(["config"])

GIB = aot.GIB
compile_report = aot.compile_on_cpu  # the XLA:CPU path (kept under its old name)
format_report = aot.format_cpu_report


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if _TOPOLOGY.value:
        try:
            aot.get_topology(_TOPOLOGY.value)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
    if not _TOPOLOGY.value:
        if _SEARCH.value:
            raise app.UsageError("--search needs --topology")
        report = compile_report(config, _DEVICES.value)
        print(format_report(config.name, report))
        out = report
    elif _SEARCH.value:
        out = aot.search(
            config,
            _TOPOLOGY.value,
            num_slices=_NUM_SLICES.value,
            log=lambda line: print(line, flush=True),
            fsdp=[int(x) for x in _S_FSDP.value],
            context=[int(x) for x in _S_CONTEXT.value],
            tensor=[int(x) for x in _S_TENSOR.value],
            batch_per_chip=[float(x) for x in _S_BATCH.value],
            remat=list(_S_REMAT.value),
            logical_rules=["" if x == "default" else x.replace(";", ",") for x in _S_RULES.value],
        )
        print(f"\n{config.name} on {_TOPOLOGY.value}:")
        print(aot.format_search(out))
    else:
        out = aot.compile_for_topology(config, _TOPOLOGY.value, num_slices=_NUM_SLICES.value)
        print(aot.format_tpu_report(config.name, out))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    app.run(main)
