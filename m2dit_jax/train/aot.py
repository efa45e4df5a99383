"""Ahead-of-time compilation of the train step for a TPU topology, on a machine without TPUs.

The TPU compiler (libtpu) runs on any Linux x86-64 host. It is kept out of the default
environment (with libtpu importable, jax tries to open a TPU at start-up): ``make aot``
installs it into ``.venv/libtpu`` and code that needs it runs in a process started with
``libtpu_env()`` (PYTHONPATH += that directory, JAX_PLATFORMS=cpu, TPU_SKIP_MDS_QUERY=1,
ALLOW_MULTIPLE_LIBTPU_LOAD=1)::

    env = libtpu_env()                      # then, in that process:
    report = compile_for_topology(config, "v5p-8")
    reports = search(config, "v5p-8", context=(1, 2), batch_per_chip=(1, 2))

``compile_for_topology`` builds a mesh from the topology's devices
(``jax.experimental.topologies.get_topology_desc`` + ``m2dit_jax.sharding.make_mesh``),
lowers the real train step (``build_train_program``) under
``jax.sharding.use_abstract_mesh(mesh.abstract_mesh)`` — so the ``auto`` attention backend
picks splash and Mosaic compiles it for TPU (``jax.set_mesh`` would try to place splash's
mask data on the absent TPUs) — and compiles it with XLA:TPU. The memory numbers are the TPU
compiler's own per-chip view. A program that does not fit makes the compiler fail with
RESOURCE_EXHAUSTED; the report then carries the compiler's "used X of Y" figure.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import itertools
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections

GIB = 1024**3

# The libtpu release that matches jax/jaxlib 0.10.2 (the jax[tpu]==0.10.2 pin).
LIBTPU_REQUIREMENT = "libtpu==0.0.42.1"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Override with M2DIT_LIBTPU_DIR.
DEFAULT_LIBTPU_DIR = os.path.join(REPO_ROOT, ".venv", "libtpu")
INSTALL_HINT = (
    "run `make libtpu` (`make aot` installs it and compiles a config), or "
    f"`python -m pip install --no-deps --target .venv/libtpu '{LIBTPU_REQUIREMENT}'`"
)


class LibtpuMissing(RuntimeError):
    """libtpu (the TPU compiler) is not importable in this process."""


# ---------------------------------------------------------------------------------------------
# Chips and topologies


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str  # "v5p"
    hbm_bytes: int  # per chip
    peak_bf16_tflops: float  # dense, per chip (vendor figure)
    chip_config_name: str  # "megacore" (2 TensorCores as one device) or "default"
    cores_per_chip: int  # how the "-N" in the product name counts (v4/v5p: TensorCores)


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 32 * GIB, 275.0, "megacore", 2),
    "v5e": Chip("v5e", 16 * GIB, 197.0, "default", 1),
    "v5p": Chip("v5p", 95 * GIB, 459.0, "megacore", 2),
    "v6e": Chip("v6e", int(31.25 * GIB), 918.0, "default", 1),
}


@dataclasses.dataclass(frozen=True)
class Topology:
    """One TPU slice type, as ``get_topology_desc`` wants it (MaxText's table)."""

    name: str  # product name, "v5p-8"
    topology_name: str  # "v5p:2x2x1"
    chip_config_name: str
    chips_per_host_bounds: tuple[int, int, int]
    chip: Chip

    @property
    def num_chips(self) -> int:
        return math.prod(int(x) for x in self.topology_name.split(":")[1].split("x"))


def _build_topologies() -> dict[str, Topology]:
    grids = {
        # 3-D tori: the product name counts TensorCores (2 per chip).
        "v4": ["2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8"],
        "v5p": ["2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8"],
        # 2-D: the product name counts chips; one host has up to 8 (2x4) or 4 (2x2 per host).
        "v5e": ["1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"],
        "v6e": ["1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"],
    }
    table = {}
    for gen, shapes in grids.items():
        chip = CHIPS[gen]
        for shape in shapes:
            chips = math.prod(int(x) for x in shape.split("x"))
            if gen in ("v5e", "v6e"):
                per_host = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 4, 1)}.get(chips, (2, 2, 1))
            else:
                per_host = (2, 2, 1)
            name = f"{gen}-{chips * chip.cores_per_chip}"
            table[name] = Topology(name, f"{gen}:{shape}", chip.chip_config_name, per_host, chip)
    return table


TOPOLOGIES: dict[str, Topology] = _build_topologies()


def get_topology(name: str) -> Topology:
    if name not in TOPOLOGIES:
        raise ValueError(f"unknown TPU topology {name!r}; known: {', '.join(TOPOLOGIES)}")
    return TOPOLOGIES[name]


# ---------------------------------------------------------------------------------------------
# libtpu


def libtpu_dir() -> str:
    return os.environ.get("M2DIT_LIBTPU_DIR", DEFAULT_LIBTPU_DIR)


def libtpu_importable() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def libtpu_installed(directory: str | None = None) -> bool:
    """Whether the separate libtpu target directory holds libtpu."""
    return os.path.exists(os.path.join(directory or libtpu_dir(), "libtpu", "__init__.py"))


# No TPU is opened: jax stays on CPU, libtpu skips the GCE metadata lookup and its one-process
# lockfile (/tmp/libtpu_lockfile), so several compiling processes can run at once.
TPU_COMPILE_ENV = {
    "JAX_PLATFORMS": "cpu",
    "TPU_SKIP_MDS_QUERY": "1",
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


def libtpu_env(env: Mapping[str, str] | None = None, directory: str | None = None) -> dict:
    """``env`` (default: os.environ) for a process that compiles for TPU on this host:
    libtpu's directory first on PYTHONPATH, plus ``TPU_COMPILE_ENV`` (JAX_PLATFORMS=cpu,
    TPU_SKIP_MDS_QUERY=1, ALLOW_MULTIPLE_LIBTPU_LOAD=1)."""
    out = dict(os.environ if env is None else env)
    directory = directory or libtpu_dir()
    path = [directory] + [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    out["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    out.update(TPU_COMPILE_ENV)
    return out


def require_libtpu() -> None:
    """Raises LibtpuMissing with the install command when libtpu cannot be imported."""
    if not libtpu_importable():
        where = libtpu_dir()
        found = (
            f"{where} holds libtpu but is not on PYTHONPATH (start the process with "
            "m2dit_jax.train.aot.libtpu_env(), or `python -m launch.compile`, which does)"
            if libtpu_installed(where)
            else f"not installed: {INSTALL_HINT}"
        )
        raise LibtpuMissing(
            f"compiling for a TPU topology needs libtpu (the TPU compiler); it is {found}."
        )


def topology_devices(topology: Topology | str, num_slices: int = 1) -> list[Any]:
    """The (non-addressable) TPU devices of ``num_slices`` slices of ``topology``."""
    require_libtpu()
    from jax.experimental import topologies

    topo = get_topology(topology) if isinstance(topology, str) else topology
    desc = topologies.get_topology_desc(
        topology_name=topo.topology_name,
        platform="tpu",
        chip_config_name=topo.chip_config_name,
        chips_per_host_bounds=topo.chips_per_host_bounds,
        num_slices=int(num_slices),
    )
    return list(desc.devices)


# ---------------------------------------------------------------------------------------------
# Compiling one layout

# What each remat policy re-runs in the backward, as parts of the forward's matmul FLOPs:
# "all" (the whole block), "attention" (q k^T and p v), "all-attention" (everything but
# attention: its kernel's outputs are saved), "all-attention-qkv" (also q, k, v saved),
# "all-qkv" (everything but the q, k, v projections).
_REMAT_RECOMPUTES = {
    "none": "nothing",
    "full": "all",
    "offload_input": "all",
    "save_dots": "attention",
    "offload_dots": "attention",
    "save_attn": "all-attention",
    "save_qkv_attn": "all-attention-qkv",
    # offloaded by name only: the attention kernel's statistics are recomputed -> all of it
    "offload_attn": "all",
    "offload_qkv_attn": "all-qkv",
}


def recompute_factor(config: ml_collections.ConfigDict) -> float:
    """Compute of a step relative to the model FLOPs (3 x forward): remat "full" re-runs the
    forward (4/3); "save_dots" re-runs attention only (1 + attention / (3 x forward));
    "save_attn" everything but attention; see ``_REMAT_RECOMPUTES``. Host transfers of the
    offload_* policies are not counted (``ranking_key`` prefers not offloading on a tie)."""
    from m2dit_jax.model.flops import forward_flops_per_sample
    from m2dit_jax.train.config_checks import model_layout

    m = config.model
    what = _REMAT_RECOMPUTES[str(m.remat)]
    if what == "nothing":
        return 1.0
    layout = model_layout(config)
    fwd = forward_flops_per_sample(m, layout)
    width = m.num_heads * m.head_dim
    attention = m.num_layers * 4.0 * layout.seq_len**2 * width
    qkv = m.num_layers * 3 * 2.0 * layout.seq_len * width * width
    again = {
        "all": fwd,
        "attention": attention,
        "all-attention": fwd - attention,
        "all-attention-qkv": fwd - attention - qkv,
        "all-qkv": fwd - qkv,
    }[what]
    return 1.0 + again / (3.0 * fwd)


def state_bytes_per_device(abstract_state: Any) -> dict[str, int]:
    """Bytes one device holds of the train state's params, optimizer state (AdamW moments)
    and EMA, from the abstract state's shapes and shardings (exact, no compile needed); the
    fraction of the unsharded size shows how the state scales with the mesh."""
    import jax

    out = {}
    for part, key in (("params", "param"), ("opt_state", "opt"), ("ema", "ema")):
        local = total = 0
        for x in jax.tree.leaves(abstract_state.get(part, {})):
            if not hasattr(x, "sharding") or x.sharding is None:
                continue
            size = x.dtype.itemsize
            total += math.prod(x.shape) * size
            local += math.prod(x.sharding.shard_shape(x.shape)) * size
        out[f"{key}_bytes_per_device"] = local
        out[f"{key}_bytes_total"] = total
    return out


# XLA:TPU's out-of-memory errors: "... Used 120.5G of 95.74G hbm ..." (whole program) or
# "... the total memory required for HLO temporaries (38.11G) exceeds available HBM (31.25G)".
_OOM_USED = re.compile(r"Used\s+([\d.]+)([KMGT]?)\s+of\s+([\d.]+)([KMGT]?)\s+hbm", re.I)
_OOM_TEMP = re.compile(
    r"HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)", re.I
)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _parse_oom(message: str) -> tuple[str, int, int] | None:
    """("used" | "temp", bytes needed, HBM bytes the compiler had) from an XLA:TPU
    RESOURCE_EXHAUSTED message; "temp" counts temporaries only (a lower bound of the peak)."""
    for kind, pattern in (("used", _OOM_USED), ("temp", _OOM_TEMP)):
        found = pattern.search(message)
        if found:
            need, u1, cap, u2 = found.groups()
            return kind, int(float(need) * _UNITS[u1.upper()]), int(float(cap) * _UNITS[u2.upper()])
    return None


def compile_for_topology(
    config: ml_collections.ConfigDict,
    topology: Topology | str,
    *,
    num_slices: int = 1,
    devices: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Compiles ``config``'s train step for ``topology`` (exactly as configured: mesh, batch,
    attention backend, dtype, remat, scan); returns per-chip memory and timing.

    Keys: topology, num_chips, mesh, dcn, global_batch, batch_per_chip, remat, params, seq_len,
    lower_s, compile_s, argument/output/alias/temp/code_bytes, peak_bytes (arguments + outputs
    - aliased + temporaries + code), hbm_bytes, fits, uses_mosaic (a Mosaic kernel, e.g.
    splash, is in the program), model_flops_per_chip (per step), est_compute_s (model FLOPs x
    remat recompute / chip peak), error (the compiler's message when it failed, else "").
    """
    import jax

    from m2dit_jax.model.flops import train_flops_per_sample
    from m2dit_jax.sharding import axis_rules, make_mesh
    from m2dit_jax.train.config_checks import check_config, dcn_mesh_shape, model_layout
    from m2dit_jax.train.program import build_train_program
    from m2dit_jax.train.state import count_params

    topo = get_topology(topology) if isinstance(topology, str) else topology
    devices = list(devices) if devices is not None else topology_devices(topo, num_slices)
    config = copy.deepcopy(config)
    config.mesh.num_devices = 0
    mesh_shape = check_config(config, num_devices=len(devices), process_count=1)
    dcn = dcn_mesh_shape(config.mesh)
    b = int(config.train.batch_size)
    layout = model_layout(config)
    model_flops = train_flops_per_sample(config.model, layout) * b / len(devices)
    report: dict[str, Any] = {
        "topology": topo.name if num_slices == 1 else f"{num_slices}x{topo.name}",
        "num_chips": len(devices),
        "mesh": mesh_shape,
        "dcn": dcn,
        "global_batch": b,
        "batch_per_chip": b / len(devices),
        "remat": str(config.model.remat),
        "logical_rules": str(config.mesh.get("logical_rules", "")),
        "seq_len": layout.seq_len,
        "hbm_bytes": topo.chip.hbm_bytes,
        "model_flops_per_chip": model_flops,
        "est_compute_s": model_flops
        * recompute_factor(config)
        / (topo.chip.peak_bf16_tflops * 1e12),
        "error": "",
    }
    with axis_rules(config.mesh.get("logical_rules", "")):
        mesh = make_mesh(mesh_shape, devices, dcn=dcn)
        program = build_train_program(config, mesh)
        batch = program.abstract_batch()
        step = program.step_for({k: v.sharding for k, v in batch.items()})
        report["params"] = count_params(program.abstract_state["params"])
        report.update(state_bytes_per_device(program.abstract_state))
        t0 = time.perf_counter()
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            lowered = step.lower(program.abstract_state, batch)
        t1 = time.perf_counter()
    report["lower_s"] = t1 - t0
    report["uses_mosaic"] = "tpu_custom_call" in lowered.as_text()
    try:
        compiled = lowered.compile()
    except Exception as e:  # XlaRuntimeError; RESOURCE_EXHAUSTED when it does not fit
        report["compile_s"] = time.perf_counter() - t1
        message = str(e)
        oom = _parse_oom(message)
        if oom is None:
            raise
        kind, need, capacity = oom
        report.update(
            dict.fromkeys(
                ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "code_bytes")
            ),
            error=message.strip().splitlines()[0][:500],
            fits=False,
            peak_bytes=need,  # with kind "temp": at least this much
            oom_kind=kind,
            compiler_hbm_bytes=capacity,
        )
        if kind == "temp":
            report["temp_bytes"] = need
        return report
    report["compile_s"] = time.perf_counter() - t1
    mem = compiled.memory_analysis()
    sizes = {
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "code_bytes": int(mem.generated_code_size_in_bytes),
        # host memory the program uses (remat offload_* policies: the offloaded activations)
        "host_temp_bytes": int(getattr(mem, "host_temp_size_in_bytes", 0) or 0),
        "compiler_peak_bytes": int(getattr(mem, "peak_memory_in_bytes", 0) or 0),
    }
    peak = (
        sizes["argument_bytes"]
        + sizes["output_bytes"]
        - sizes["alias_bytes"]
        + sizes["temp_bytes"]
        + sizes["code_bytes"]
    )
    report.update(sizes, peak_bytes=peak, fits=peak <= topo.chip.hbm_bytes)
    return report


# ---------------------------------------------------------------------------------------------
# Searching layouts


def _as_tuple(values: Iterable[Any] | Any) -> tuple:
    if isinstance(values, str) or not isinstance(values, Iterable):
        return (values,)
    return tuple(values)


def search_candidates(
    config: ml_collections.ConfigDict,
    num_chips: int,
    *,
    fsdp: Iterable[int] = (-1,),
    context: Iterable[int] = (1,),
    tensor: Iterable[int] = (1,),
    batch_per_chip: Iterable[float] = (1,),
    remat: Iterable[str] = ("full",),
    logical_rules: Iterable[str] = ("",),
) -> tuple[list[ml_collections.ConfigDict], list[tuple[dict, str]]]:
    """(valid configs, [(layout, why not)]) over the product of the options.

    A layout is (fsdp, context, tensor, batch per chip, remat, logical rules); ``data`` takes
    the chips that are left (fsdp -1 = all of them); the global batch is ``batch_per_chip x
    chips``; ``logical_rules`` entries are ``mesh.logical_rules`` strings ("" = the config's;
    a preset of ``m2dit_jax.sharding.RULE_PRESETS`` such as "zero3" or "fsdp"; or entries such
    as "embed=fsdp+tensor"): "presets" stands for every preset, and remat "all" for every
    policy of ``REMAT_POLICIES`` but "none". Layouts
    ``check_config`` rejects (heads or sequence not divisible, ...) come back with the reason.
    """
    from m2dit_jax.model.config import REMAT_POLICIES
    from m2dit_jax.sharding import RULE_PRESETS
    from m2dit_jax.train.config_checks import ConfigError, check_config

    def expand(values, word, everything):
        out = []
        for v in _as_tuple(values):
            out.extend(everything if v == word else (v,))
        return tuple(dict.fromkeys(out))

    remat = expand(remat, "all", [p for p in REMAT_POLICIES if p != "none"])
    logical_rules = expand(logical_rules, "presets", list(RULE_PRESETS))
    ok, rejected = [], []
    for f, c, t, bpc, r, rules in itertools.product(
        _as_tuple(fsdp),
        _as_tuple(context),
        _as_tuple(tensor),
        _as_tuple(batch_per_chip),
        remat,
        logical_rules,
    ):
        layout = dict(fsdp=int(f), context=int(c), tensor=int(t), batch_per_chip=bpc, remat=r)
        if rules:
            layout["logical_rules"] = rules
        cand = copy.deepcopy(config)
        model_par = int(c) * int(t)
        if num_chips % model_par:
            rejected.append((layout, f"context x tensor = {model_par} does not divide chips"))
            continue
        f_size = num_chips // model_par if int(f) == -1 else int(f)
        if f_size < 1 or (num_chips // model_par) % f_size:
            rejected.append((layout, f"fsdp={f_size} does not divide the chips left"))
            continue
        global_batch = float(bpc) * num_chips
        if global_batch != int(global_batch) or global_batch < 1:
            rejected.append((layout, f"batch {global_batch} is not a whole number"))
            continue
        cand.mesh.update(
            dict(data=num_chips // model_par // f_size, fsdp=f_size, context=int(c), tensor=int(t))
        )
        cand.train.batch_size = int(global_batch)
        cand.model.remat = str(r)
        if rules:
            cand.mesh.logical_rules = str(rules)
        cand.mesh.num_devices = 0
        try:
            check_config(cand, num_devices=num_chips, process_count=1)
        except ConfigError as e:
            rejected.append((layout, str(e)))
            continue
        ok.append(cand)
    return ok, rejected


def search(
    config: ml_collections.ConfigDict,
    topology: Topology | str,
    *,
    num_slices: int = 1,
    log=None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Compiles every valid layout of ``search_candidates(config, chips, **options)`` for
    ``topology``; returns their reports (``compile_for_topology``) in order. ``log(str)`` gets a
    line per layout as it finishes."""
    topo = get_topology(topology) if isinstance(topology, str) else topology
    devices = topology_devices(topo, num_slices)
    candidates, rejected = search_candidates(config, len(devices), **options)
    if log is not None:
        for layout, why in rejected:
            log(f"skipped {layout}: {why}")
    reports = []
    for cand in candidates:
        try:
            report = compile_for_topology(cand, topo, num_slices=num_slices, devices=devices)
        except LibtpuMissing:
            raise
        except (ValueError, RuntimeError) as e:  # XlaRuntimeError / config errors: the row
            # shows the layout as not fitting with the compiler's message; the search goes on
            m = cand.mesh
            report = {
                "topology": topo.name,
                "mesh": {a: int(m[a]) for a in ("data", "fsdp", "context", "tensor")},
                "logical_rules": str(m.get("logical_rules", "")),
                "batch_per_chip": int(cand.train.batch_size) / len(devices),
                "remat": str(cand.model.remat),
                "fits": False,
                "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}",
            }
        reports.append(report)
        if log is not None:
            log(format_row(report))
    return reports


def ranking_key(report: Mapping[str, Any]) -> tuple:
    """Sort key of "fastest-looking" (smallest first): the least compute per sample (model
    FLOPs x remat recompute / chip peak), then no host offload, then the least model
    parallelism (tensor x context: per-layer collectives), then the largest batch per chip
    (bigger matmuls), then the lowest peak memory. A heuristic from the memory analysis and
    model FLOPs, not a measurement."""
    per_sample = report["est_compute_s"] / max(report["batch_per_chip"], 1e-9)
    mesh = report["mesh"]
    return (
        round(per_sample, 6),
        str(report.get("remat", "")).startswith("offload_"),  # host transfers not modelled
        mesh["tensor"] * mesh["context"],
        -report["batch_per_chip"],
        report["peak_bytes"] or 0,
    )


def best_layout(reports: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The fastest-looking report that fits (``ranking_key``), or None."""
    fitting = [r for r in reports if r.get("fits")]
    return min(fitting, key=ranking_key) if fitting else None


# ---------------------------------------------------------------------------------------------
# Formatting


def _gib(x: int | None) -> str:
    return "-" if x is None else f"{x / GIB:.2f}"


def mesh_text(mesh: Mapping[str, int]) -> str:
    return "x".join(f"{a[0]}{s}" for a, s in mesh.items() if s > 1) or "1"


TABLE_HEADER = (
    "| topology | mesh | rules | batch/chip | remat | state GiB | args GiB | temp GiB | host GiB "
    "| peak GiB | HBM GiB | fits | est. chip-ms/sample | compile s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _state_gib(r: Mapping[str, Any]) -> str:
    """Params + optimizer state + EMA per chip (exact, from the shardings)."""
    keys = ("param_bytes_per_device", "opt_bytes_per_device", "ema_bytes_per_device")
    if not all(k in r for k in keys):
        return "-"
    return _gib(sum(r[k] for k in keys))


def format_row(r: Mapping[str, Any]) -> str:
    if "est_compute_s" not in r:  # the compiler failed for another reason than memory
        return (
            f"| {r['topology']} | {mesh_text(r['mesh'])} | {r.get('logical_rules') or '-'} "
            f"| {r['batch_per_chip']:g} | {r['remat']} | failed: {r['error']} |"
        )
    per_sample_ms = 1e3 * r["est_compute_s"] / max(r["batch_per_chip"], 1e-9)
    return (
        f"| {r['topology']} | {mesh_text(r['mesh'])} | {r.get('logical_rules') or '-'} "
        f"| {r['batch_per_chip']:g} | {r['remat']} | {_state_gib(r)} "
        f"| {_gib(r['argument_bytes'])} | {_gib(r['temp_bytes'])} "
        f"| {_gib(r.get('host_temp_bytes'))} "
        f"| {'>' if r.get('oom_kind') == 'temp' else ''}{_gib(r['peak_bytes'])} "
        f"| {r['hbm_bytes'] / GIB:g} | {'yes' if r['fits'] else 'NO'}"
        f"{' (compiler OOM)' if r['error'] else ''} | {per_sample_ms:.0f} "
        f"| {r['compile_s']:.0f} |"
    )


def format_tpu_report(name: str, r: Mapping[str, Any]) -> str:
    """Human-readable per-chip memory of one compiled layout."""
    lines = [
        f"{name} on {r['topology']} ({r['num_chips']} chips): {r['params'] / 1e9:.3f} B params, "
        f"{r['seq_len']} tokens/sample, global batch {r['global_batch']} "
        f"({r['batch_per_chip']:g}/chip), mesh {r['mesh']}"
        + (f" dcn {r['dcn']}" if math.prod(r["dcn"].values()) > 1 else "")
        + f", remat {r['remat']}",
        f"  lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s (XLA:TPU); Mosaic kernel "
        f"in program: {'yes' if r['uses_mosaic'] else 'no'}",
    ]
    if r["error"]:
        what = "temporaries alone need" if r.get("oom_kind") == "temp" else "the program needs"
        lines += [
            f"  does NOT fit: {what} {_gib(r['peak_bytes'])} GiB of the "
            f"{_gib(r.get('compiler_hbm_bytes'))} GiB HBM per chip the compiler has",
            f"  ({r['error']})",
        ]
    else:
        lines += [
            "  per chip (TPU compiler's memory analysis):",
            f"    arguments (state + batch) {_gib(r['argument_bytes']):>8} GiB "
            f"(params + optimizer + EMA {_state_gib(r)} GiB)",
            f"    outputs                   {_gib(r['output_bytes']):>8} GiB "
            f"(donated/aliased {_gib(r['alias_bytes'])} GiB)",
            f"    temporaries               {_gib(r['temp_bytes']):>8} GiB",
            f"    generated code            {_gib(r['code_bytes']):>8} GiB",
            f"    host (offloaded) temps    {_gib(r.get('host_temp_bytes')):>8} GiB",
            f"    peak                      {_gib(r['peak_bytes']):>8} GiB of "
            f"{r['hbm_bytes'] / GIB:g} GiB HBM -> {'fits' if r['fits'] else 'does NOT fit'}",
        ]
    lines.append(
        f"  model FLOPs per chip per step {r['model_flops_per_chip']:.3e}; compute-bound estimate "
        f"{r['est_compute_s']:.2f} s/step with remat {r['remat']}"
    )
    return "\n".join(lines)


def format_search(reports: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of every compiled layout plus the fastest-looking one that fits."""
    lines = [TABLE_HEADER] + [format_row(r) for r in reports]
    best = best_layout(reports)
    if best is None:
        lines.append("no layout fits")
    else:
        m = best["mesh"]
        lines.append(
            f"fastest-looking that fits: {format_row(best)}\n  flags: "
            + " ".join(f"--config.mesh.{a}={s}" for a, s in m.items())
            + f" --config.train.batch_size={best['global_batch']}"
            + f" --config.model.remat={best['remat']}"
            + (
                f" --config.mesh.logical_rules='{best['logical_rules']}'"
                if best.get("logical_rules")
                else ""
            )
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The same program on simulated CPU devices (no libtpu needed)


def compile_on_cpu(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, Any]:
    """Lowers and compiles the train step for ``num_devices`` (simulated) CPU devices; returns
    XLA:CPU's per-device memory and FLOP counts (accelerator compilers fuse differently:
    temporaries are an estimate, arguments exact)."""
    import jax

    from m2dit_jax.model.flops import train_flops_per_sample
    from m2dit_jax.sharding import axis_rules, make_mesh
    from m2dit_jax.train.config_checks import check_config, dcn_mesh_shape, model_layout
    from m2dit_jax.train.program import build_train_program
    from m2dit_jax.train.state import count_params

    devices = jax.devices()[:num_devices]
    if len(devices) < num_devices:
        raise ValueError(f"--devices={num_devices} but only {len(devices)} devices exist")
    config = copy.deepcopy(config)
    config.mesh.num_devices = 0
    mesh_shape = check_config(config, num_devices=num_devices, process_count=1)
    layout = model_layout(config)
    b = int(config.train.batch_size)
    with axis_rules(config.mesh.get("logical_rules", "")):
        mesh = make_mesh(mesh_shape, devices, dcn=dcn_mesh_shape(config.mesh))
        program = build_train_program(config, mesh)
        state = program.abstract_state
        batch = program.abstract_batch()
        step = program.step_for({k: v.sharding for k, v in batch.items()})
        state_bytes = state_bytes_per_device(state)
        t0 = time.perf_counter()
        with jax.set_mesh(mesh):
            lowered = step.lower(state, batch)
        t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()

    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {
        "mesh": mesh_shape,
        "params": count_params(state["params"]),
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
        "model_flops_per_step": train_flops_per_sample(config.model, layout) * b,
        **state_bytes,
    }


def format_cpu_report(name: str, r: Mapping[str, Any]) -> str:
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
