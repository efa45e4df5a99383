"""The one sharding vocabulary: mesh axes, logical axis names and the rule table.

Mesh axes (every mesh has all four, size 1 where unused):
  data    — pure data parallelism (replicated params),
  fsdp    — data parallelism with params/optimizer state sharded over ``embed``,
  context — sequence (context) parallelism,
  tensor  — heads / MLP (Megatron-style) parallelism.
Modules annotate parameters and activations with *logical* names only; ``LOGICAL_RULES``
maps them onto mesh axes: parameters' ``embed`` axis over fsdp x context (so the train state
takes 1 / (fsdp x context) of a device; ``RULE_PRESETS["zero3"]`` adds data), activations'
token axis ``seq`` over context everywhere outside attention (which re-shards by heads).
``axis_rules(overrides)`` replaces entries of that table inside a
``with`` block (a context variable: threads and nested blocks see their own table), e.g. the
config's ``mesh.logical_rules = "embed=fsdp+tensor, mlp="``.

Meshes come from ``make_mesh``: a topology-aware device order from
``jax.experimental.mesh_utils`` (``create_device_mesh`` within a TPU slice / GPU node,
``create_hybrid_device_mesh`` across slices or nodes when a DCN shape is given).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "context", "tensor")

Rules = tuple[tuple[str, Any], ...]

LOGICAL_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("seq", "context"),  # activations' token axis
    # params' model-width axis: sharded over every non-tensor axis that is not pure data
    # parallelism, so params, gradients, moments and EMA take 1 / (fsdp x context) per device
    ("embed", ("fsdp", "context")),
    ("act_embed", None),  # activations' width axis stays whole
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("temb", None),  # timestep-embedding width
    ("text_embed", None),  # encoder output width (4096)
    ("patch", None),
    ("layers", None),  # scanned layer axis
)

# Named rule sets, usable wherever rule overrides are (``mesh.logical_rules="zero3"``, also
# combined: "zero3, mlp="). Each is a set of overrides of LOGICAL_RULES.
RULE_PRESETS: dict[str, str] = {
    "fsdp_context": "embed=fsdp+context",  # = the default: state over fsdp x context
    "fsdp": "embed=fsdp",  # the old default: state over fsdp only (replicated over context)
    "zero3": "embed=data+fsdp+context",  # ZeRO-3: state over every non-tensor axis
    "replicated": "embed=",  # params replicated apart from tensor parallelism
}

_ACTIVE_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar(
    "m2dit_logical_rules", default=LOGICAL_RULES
)


# ---------------------------------------------------------------------------------------------
# Logical-axis rules


def _normalise_target(name: str, target: Any) -> str | tuple[str, ...] | None:
    if target is None:
        axes: tuple[str, ...] = ()
    elif isinstance(target, str):
        axes = tuple(a for a in re.split(r"[+\s]+", target.strip()) if a)
        if len(axes) == 1 and axes[0].lower() == "none":
            axes = ()
    else:
        axes = tuple(target)
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown:
        raise ValueError(
            f"logical rule {name}={'+'.join(map(str, axes))}: unknown mesh axis "
            f"{', '.join(map(repr, unknown))}; mesh axes are {MESH_AXES}"
        )
    if len(set(axes)) != len(axes):
        raise ValueError(f"logical rule {name}={'+'.join(axes)} names a mesh axis twice")
    return None if not axes else axes[0] if len(axes) == 1 else axes


def parse_logical_rules(overrides: Any) -> Rules:
    """Validated ``(logical name, mesh axes)`` pairs from a rules override.

    ``overrides`` may be empty/None; a string of entries ``name=axis1+axis2`` separated by
    commas or semicolons (``name=`` or ``name=none`` replicates that logical axis), e.g.
    ``"embed=fsdp+tensor, seq=context, mlp="``; a sequence of such strings or of
    ``(name, target)`` pairs; or a mapping ``name -> target`` (target: an axis name, a tuple
    of them, or None). A bare entry that names a preset of ``RULE_PRESETS`` ("zero3", "fsdp",
    ...) stands for its entries; an explicit entry for the same name may follow it. Names must
    be logical names of ``LOGICAL_RULES`` and axes must be mesh axes (``MESH_AXES``); anything
    else raises ValueError naming the entry.
    """
    if overrides is None:
        return ()
    if isinstance(overrides, str):
        entries: list[Any] = [e for e in re.split(r"[,;\n]", overrides) if e.strip()]
    elif isinstance(overrides, Mapping):
        entries = list(overrides.items())
    else:
        entries = list(overrides)
    known = {name for name, _ in LOGICAL_RULES}
    out: dict[str, Any] = {}
    from_preset: set[str] = set()
    for entry in entries:
        if isinstance(entry, str) and "=" not in entry and entry.strip() in RULE_PRESETS:
            for name, target in parse_logical_rules(RULE_PRESETS[entry.strip()]):
                out[name] = target
                from_preset.add(name)
            continue
        if isinstance(entry, str):
            if "=" not in entry:
                raise ValueError(
                    f"logical rule {entry.strip()!r} must look like name=axis1+axis2 "
                    f"(or name= to replicate), or be a preset: {', '.join(RULE_PRESETS)}"
                )
            name, target = (part.strip() for part in entry.split("=", 1))
        else:
            name, target = entry
        if name not in known:
            raise ValueError(
                f"logical rule for unknown logical axis {name!r}; known: {sorted(known)}"
            )
        if name in out and name not in from_preset:
            raise ValueError(f"logical axis {name!r} is given twice in the rule overrides")
        from_preset.discard(name)
        out[name] = _normalise_target(name, target)
    return tuple(out.items())


def current_rules() -> Rules:
    """The logical-axis table in effect: ``LOGICAL_RULES`` with the active overrides."""
    return _ACTIVE_RULES.get()


@contextlib.contextmanager
def axis_rules(overrides: Any) -> Iterator[Rules]:
    """Within the block, ``logical_to_mesh_axes`` (and everything built on it: param
    shardings, activation constraints, attention's shard_map specs) uses the current table
    with ``overrides`` replacing entries (see ``parse_logical_rules`` for the forms).
    Nested blocks stack; the previous table is restored on exit. Yields the table in effect.
    """
    table = dict(current_rules())
    table.update(parse_logical_rules(overrides))
    rules = tuple(table.items())
    token = _ACTIVE_RULES.set(rules)
    try:
        yield rules
    finally:
        _ACTIVE_RULES.reset(token)


def logical_to_mesh_axes(names: Sequence[str | None], rules: Rules | None = None) -> PartitionSpec:
    """Maps a tuple of logical axis names to a PartitionSpec with the rules in effect
    (``current_rules()``, i.e. LOGICAL_RULES unless inside ``axis_rules``), or ``rules``.

    A mesh axis is used at most once per spec (later duplicates are replicated).
    """
    table = dict(current_rules() if rules is None else rules)
    used: set[str] = set()
    out = []
    for name in names:
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
        target = table[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


# ---------------------------------------------------------------------------------------------
# Meshes


def _axis_sizes(shape: Mapping[str, int] | Sequence[int], what: str) -> list[int]:
    if isinstance(shape, Mapping):
        unknown = set(shape) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"unknown {what} axes {sorted(unknown)}; axes are {MESH_AXES}")
        return [int(shape.get(a, 1)) for a in MESH_AXES]
    sizes = [int(s) for s in shape]
    if len(sizes) != len(MESH_AXES):
        raise ValueError(f"{what} shape needs {len(MESH_AXES)} entries {MESH_AXES}, got {sizes}")
    return sizes


def _granules(devices: Sequence[Any]) -> tuple[str, int]:
    """(attribute, count) of the units the slow (DCN) network connects: TPU slices
    (``slice_index``; a single-slice topology may not set it), else processes (GPU nodes,
    CPU processes)."""
    if devices[0].platform == "tpu":
        return "slice_index", len({getattr(d, "slice_index", 0) for d in devices})
    return "process_index", len({d.process_index for d in devices})


def device_grid(
    ici: Sequence[int], devices: Sequence[Any], dcn: Sequence[int] | None = None
) -> np.ndarray:
    """The devices arranged as a (data, fsdp, context, tensor) array, ordered for the network.

    ``ici``: per-slice (per-node) axis sizes; ``dcn``: how many slices/nodes each axis spans
    (default all 1); the grid's shape is ``ici * dcn``.

    * One slice/node (``prod(dcn) == 1``): ``mesh_utils.create_device_mesh``. On TPU it maps
      the axes onto the physical torus (later axes — tensor, context — get the fastest links);
      when the shape cannot be laid on whole physical axes it retries with
      ``allow_split_physical_axes=True``, and raises ValueError if that fails too. On GPU it
      orders devices by id. For (simulated) CPU devices it is the defined behaviour of
      ``create_device_mesh`` to reshape the devices in the order given, as there is no
      topology to follow.
    * Several (``prod(dcn) > 1``): ``mesh_utils.create_hybrid_device_mesh`` with TPU slices
      (``slice_index``) or, elsewhere, processes (multi-node GPU) as the DCN units; their count
      must equal ``prod(dcn)``.
    """
    devices = list(devices)
    ici = [int(s) for s in ici]
    dcn = [1] * len(ici) if dcn is None else [int(s) for s in dcn]
    n_dcn = math.prod(dcn)
    if math.prod(ici) * n_dcn != len(devices):
        raise ValueError(
            f"mesh per slice {dict(zip(MESH_AXES, ici))} x dcn {dict(zip(MESH_AXES, dcn))} needs "
            f"{math.prod(ici) * n_dcn} devices, have {len(devices)}"
        )
    attr, count = _granules(devices)
    unit = "slices" if attr == "slice_index" else "processes"
    if n_dcn > 1:
        if count != n_dcn:
            raise ValueError(
                f"the DCN mesh (mesh.dcn_*) {dict(zip(MESH_AXES, dcn))} spans {n_dcn} "
                f"{unit}, but the devices belong to {count} {unit}"
            )
        try:
            return mesh_utils.create_hybrid_device_mesh(
                ici, dcn, devices, process_is_granule=attr == "process_index"
            )
        except (ValueError, NotImplementedError, AssertionError):
            return mesh_utils.create_hybrid_device_mesh(
                ici,
                dcn,
                devices,
                process_is_granule=attr == "process_index",
                allow_split_physical_axes=True,
            )
    if attr == "slice_index" and count > 1:
        raise ValueError(
            f"the devices span {count} TPU slices but the DCN mesh is 1: set mesh.dcn_data "
            f"(or another mesh.dcn_* axis) so that their product is {count}"
        )
    if devices[0].platform != "tpu":
        return mesh_utils.create_device_mesh(ici, devices)
    try:
        return mesh_utils.create_device_mesh(ici, devices)
    except (ValueError, NotImplementedError, AssertionError):
        pass
    try:
        return mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError) as e:
        raise ValueError(
            f"cannot lay the mesh {dict(zip(MESH_AXES, ici))} onto these {len(devices)} TPU "
            f"devices ({devices[0].device_kind}; a subset of a slice via mesh.num_devices "
            f"must be a whole sub-torus): {e}"
        ) from e


def make_mesh(
    shape: dict[str, int] | Sequence[int],
    devices: Sequence[jax.Device] | None = None,
    *,
    dcn: dict[str, int] | Sequence[int] | None = None,
) -> Mesh:
    """Builds a (data, fsdp, context, tensor) mesh; one entry may be -1 (fills the rest).

    ``shape`` is a dict keyed by axis name (missing axes = 1) or a 4-sequence in MESH_AXES
    order: the *full* axis sizes. ``dcn`` (same forms, default all 1) says how many TPU slices
    / GPU nodes each axis spans; each full size must be a multiple of it, and the per-slice
    part is ``shape / dcn``. Device order: ``device_grid``. Axis types are Auto so
    logical-rule sharding and shard_map compose.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = _axis_sizes(shape, "mesh")
    dcn_sizes = _axis_sizes(dcn or {}, "dcn")
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(
            f"mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}"
        )
    if any(s < 1 for s in dcn_sizes):
        raise ValueError(f"dcn axis sizes must be positive, got {dict(zip(MESH_AXES, dcn_sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"{len(devices)} devices are not divisible by the fixed mesh axes {known}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"have {len(devices)}"
        )
    bad = [f"{a}={s} (dcn {d})" for a, s, d in zip(MESH_AXES, sizes, dcn_sizes) if s % d]
    if bad:
        raise ValueError(f"mesh axes not divisible by their dcn factor: {', '.join(bad)}")
    ici = [s // d for s, d in zip(sizes, dcn_sizes)]
    grid = device_grid(ici, devices, dcn_sizes)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def named_sharding(mesh: Mesh, names: Sequence[str | None]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_mesh_axes(names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """with_sharding_constraint by logical names; a no-op when no mesh is active."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_mesh_axes(names))
