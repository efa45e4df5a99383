"""LoRA fine-tuning without touching the model: effective kernels formed inside the step.

For every targeted Dense kernel ``W`` (our layout ``(*lead, *in, *out)``; ``lead`` is the
layer axis of scanned blocks) the step trains two adapters

    lora_a: (*lead, *in, r)     lora_b: (*lead, r, *out)       (B starts at zero)

and runs the model on ``W + (alpha / r) * lora_a @ lora_b`` (contracted over r, batched over
``lead``), built from the frozen base params inside the jitted step. Only the adapters are
differentiated, so the base has no gradient, no optimizer state and no EMA. Each adapter is
sharded like the kernel dimensions it spans (``in`` dims of ``a``, ``out`` dims of ``b``; r is
replicated), so fsdp / tensor layouts carry over; scan, remat, bf16 compute, gradient
accumulation and context parallelism are the model's and the step's, unchanged.

Paths: adapters live in ``state["params"]`` under the kernel's module path, e.g.
``blocks/attn/to_q/{lora_a,lora_b}`` (scanned) or ``blocks/3/attn/to_q/...``; targets are
regular expressions searched in the per-layer module name ``blocks/{i}/attn/to_q`` (so one
pattern works whether or not the layers are scanned; a scanned stack must be selected for all
of its layers or none). Only block Dense kernels can be targeted (their diffusers counterparts
are plain ``nn.Linear`` layers, see ``m2dit_jax.convert.lora``).

Dropout (``lora.dropout > 0``, peft's ``lora_dropout``): the merged kernel cannot drop the
branch's input, so training then runs unmerged — the model is bound on the frozen base and
every targeted Dense gets a ``LoraBranch`` (``m2dit_jax.model.layers``) adding
``(alpha / r) * (dropout(x) . a) . b``. The mask of module m in layer i comes from the
"lora_dropout" stream of the step (or micro-batch) key, folded with m's index in
``BLOCK_MODULES`` and then i, so scanned and unscanned layers draw the same masks, and remat
recomputes the same ones. Evaluation, EMA scoring and export use the merged form (no dropout,
like peft's eval mode).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from m2dit_jax.rng import stream

# Block Dense modules (path inside one block) -> number of kernel input dims.
BLOCK_MODULES: dict[str, int] = {
    "attn/to_q": 1,
    "attn/to_k": 1,
    "attn/to_v": 1,
    "attn/to_out": 2,  # (H, Dh, D)
    "ff/proj_in": 1,
    "ff/proj_out": 1,
    "norm1/linear": 1,
    "norm2/linear": 1,
}
DEFAULT_TARGETS = r"attn/to_q$,attn/to_k$,attn/to_v$,attn/to_out$"
FF_TARGETS = r"ff/proj_in$,ff/proj_out$"
INITS = ("kaiming_uniform", "gaussian")
BASE_DTYPES = ("", "float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class LoraTarget:
    module: str  # path inside one block, e.g. "attn/to_q"
    layer: int | None  # None: the scanned stack (all layers); else the block index
    n_in: int  # kernel input dims (after the layer axis)

    def kernel_path(self) -> tuple[Any, ...]:
        inner = tuple(self.module.split("/"))
        head = ("blocks",) if self.layer is None else ("blocks", self.layer)
        return head + inner + ("kernel",)

    def adapter_path(self) -> tuple[Any, ...]:
        return self.kernel_path()[:-1]

    @property
    def name(self) -> str:
        return "/".join(str(p) for p in self.adapter_path())


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    targets: tuple[LoraTarget, ...]
    init: str = "kaiming_uniform"
    base_dtype: str = ""
    # The dtype the block Dense layers cast their kernels to (model.dtype): the merged kernel
    # is produced in it directly, so no f32 copy of the merged stack (or of its cotangent)
    # exists; numerically identical, the layer would cast it to this dtype anyway.
    compute_dtype: str = ""
    dropout: float = 0.0  # > 0: training runs the unmerged branch with this input dropout

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def parse_targets(targets: str) -> list[re.Pattern]:
    """Comma-separated regular expressions (raises re.error on a bad one)."""
    return [re.compile(t.strip()) for t in str(targets).split(",") if t.strip()]


def select_targets(
    targets: str, num_layers: int, scan_layers: bool
) -> tuple[list[LoraTarget], list[str]]:
    """(targets, problems) for the model's block modules matched by ``targets``."""
    patterns = parse_targets(targets)
    chosen, problems = [], []
    for module, n_in in BLOCK_MODULES.items():
        hits = [
            i for i in range(num_layers) if any(p.search(f"blocks/{i}/{module}") for p in patterns)
        ]
        if not hits:
            continue
        if scan_layers:
            if len(hits) != num_layers:
                problems.append(
                    f"lora.targets selects {module} in layers {hits} only, but the layers are "
                    "scanned (one stacked kernel): select all layers or set model.scan_layers=False"
                )
                continue
            chosen.append(LoraTarget(module, None, n_in))
        else:
            chosen += [LoraTarget(module, i, n_in) for i in hits]
    if not chosen and not problems:
        problems.append(
            f"lora.targets={targets!r} matches no block module (blocks/{{i}}/ + one of "
            f"{sorted(BLOCK_MODULES)})"
        )
    return chosen, problems


def lora_spec(config) -> LoraSpec | None:
    """The LoRA of a full training config, or None (no ``lora`` section or rank 0)."""
    lora = config.get("lora")
    if lora is None or int(lora.rank) <= 0:
        return None
    targets, problems = select_targets(
        str(lora.targets), int(config.model.num_layers), bool(config.model.scan_layers)
    )
    if problems:
        raise ValueError("; ".join(problems))
    rank = int(lora.rank)
    return LoraSpec(
        rank=rank,
        alpha=float(lora.alpha) or float(rank),
        targets=tuple(targets),
        init=str(lora.init),
        base_dtype=str(lora.base_dtype),
        compute_dtype=str(config.model.dtype),
        dropout=float(lora.get("dropout", 0.0)),
    )


# ------------------------------------------------------------------------ trees


def _get(tree: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path: tuple[Any, ...], value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _copy_dicts(tree: Any) -> Any:
    """A copy of the nested dict structure (leaves shared)."""
    if isinstance(tree, dict):
        return {k: _copy_dicts(v) for k, v in tree.items()}
    return tree


def _lead(target: LoraTarget) -> int:
    return 1 if target.layer is None else 0


def adapter_shapes(
    target: LoraTarget, kernel_shape: tuple[int, ...], rank: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    lead = _lead(target)
    lead_s = kernel_shape[:lead]
    in_s = kernel_shape[lead : lead + target.n_in]
    out_s = kernel_shape[lead + target.n_in :]
    return lead_s + in_s + (rank,), lead_s + (rank,) + out_s


def _adapter_specs(target: LoraTarget, kernel_sharding: Any, ndim: int):
    spec = tuple(getattr(kernel_sharding, "spec", PartitionSpec()))
    spec = spec + (None,) * (ndim - len(spec))
    lead = _lead(target)
    a = spec[: lead + target.n_in] + (None,)
    b = spec[:lead] + (None,) + spec[lead + target.n_in :]
    return PartitionSpec(*a), PartitionSpec(*b)


def abstract_adapters(spec: LoraSpec, abstract_params: Any, dtype=jnp.float32) -> Any:
    """Adapters as ShapeDtypeStructs carrying shardings derived from their kernels'."""
    out: dict = {}
    for t in spec.targets:
        kernel = _get(abstract_params, t.kernel_path())
        a_shape, b_shape = adapter_shapes(t, kernel.shape, spec.rank)
        sh = kernel.sharding
        if isinstance(sh, NamedSharding):
            a_spec, b_spec = _adapter_specs(t, sh, len(kernel.shape))
            a_sh, b_sh = NamedSharding(sh.mesh, a_spec), NamedSharding(sh.mesh, b_spec)
        else:
            a_sh = b_sh = sh
        path = t.adapter_path()
        _set(out, path + ("lora_a",), jax.ShapeDtypeStruct(a_shape, dtype, sharding=a_sh))
        _set(out, path + ("lora_b",), jax.ShapeDtypeStruct(b_shape, dtype, sharding=b_sh))
    return out


def init_adapters(spec: LoraSpec, abstract: Any, seed: int) -> Any:
    """Fresh adapters (called inside a jit with out_shardings): B = 0; A from the "lora"
    stream of ``seed`` (target j folds in j): peft's default kaiming-uniform
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), or N(0, 1/r) for ``init="gaussian"``."""
    root = stream(seed, "lora")
    out: dict = {}
    for j, t in enumerate(spec.targets):
        a_abs = _get(abstract, t.adapter_path() + ("lora_a",))
        b_abs = _get(abstract, t.adapter_path() + ("lora_b",))
        key = jax.random.fold_in(root, j)
        fan_in = math.prod(a_abs.shape[_lead(t) : -1])
        if spec.init == "gaussian":
            a = jax.random.normal(key, a_abs.shape, jnp.float32) / spec.rank
        else:
            bound = 1.0 / math.sqrt(fan_in)
            a = jax.random.uniform(key, a_abs.shape, jnp.float32, -bound, bound)
        _set(out, t.adapter_path() + ("lora_a",), a.astype(a_abs.dtype))
        _set(out, t.adapter_path() + ("lora_b",), jnp.zeros(b_abs.shape, b_abs.dtype))
    return out


def delta(target: LoraTarget, a: jax.Array, b: jax.Array, kernel_shape: tuple[int, ...]):
    """a @ b contracted over r (batched over the layer axis), in f32, kernel-shaped."""
    lead = _lead(target)
    lead_s = a.shape[:lead]
    a2 = a.astype(jnp.float32).reshape(lead_s + (-1, a.shape[-1]))
    b2 = b.astype(jnp.float32).reshape(lead_s + (b.shape[lead], -1))
    return jnp.matmul(a2, b2).reshape(kernel_shape)


def merge(base: Any, adapters: Any, spec: LoraSpec, scale: float = 1.0) -> Any:
    """Params with every targeted kernel replaced by ``W + scale * (alpha/r) * a @ b``
    (summed in f32, stored in ``spec.compute_dtype``, else W's dtype); other leaves are the
    base's own arrays."""
    out = _copy_dicts(base)
    s = float(scale) * spec.scale
    for t in spec.targets:
        w = _get(base, t.kernel_path())
        ad = _get(adapters, t.adapter_path())
        d = delta(t, ad["lora_a"], ad["lora_b"], w.shape)
        dtype = jnp.dtype(spec.compute_dtype) if spec.compute_dtype else w.dtype
        _set(out, t.kernel_path(), (w.astype(jnp.float32) + s * d).astype(dtype))
    return out


def base_abstract(spec: LoraSpec, abstract_params: Any) -> Any:
    """The frozen base's ShapeDtypeStructs (``lora.base_dtype`` applied to float leaves)."""
    if not spec.base_dtype:
        return abstract_params
    dt = jnp.dtype(spec.base_dtype)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, dt if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype, sharding=x.sharding
        ),
        abstract_params,
    )


def cast_base(spec: LoraSpec, params: Any) -> Any:
    if not spec.base_dtype:
        return params
    dt = jnp.dtype(spec.base_dtype)
    return jax.tree.map(
        lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
    )


def _module(model: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        model = model[k] if isinstance(k, int) else getattr(model, k)
    return model


def dropout_keys(target: LoraTarget, key: jax.Array, num_layers: int) -> jax.Array:
    """Raw key data of ``target``'s dropout masks: (L, 2) for a scanned stack, else (2,).

    Layer i of module m uses ``fold_in(fold_in(key, index of m), i)`` either way."""
    module_key = jax.random.fold_in(key, list(BLOCK_MODULES).index(target.module))
    if target.layer is not None:
        return jax.random.key_data(jax.random.fold_in(module_key, target.layer))
    layers = jnp.arange(num_layers)
    return jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(module_key, i)))(layers)


def bind_unmerged(parts: Any, base: Any, adapters: Any, spec: LoraSpec, key: jax.Array):
    """The model on the frozen ``base`` with an unmerged, dropout-ing ``LoraBranch`` on every
    target (``key``: this step's or micro-batch's "lora_dropout" key)."""
    from m2dit_jax.model.layers import LoraBranch

    model = parts.bind(base)
    dtype = jnp.dtype(spec.compute_dtype) if spec.compute_dtype else jnp.float32
    for t in spec.targets:
        dense = _module(model, t.adapter_path())
        ad = _get(adapters, t.adapter_path())
        lead = _lead(t)
        num_layers = ad["lora_a"].shape[0] if lead else 1
        dense.adapter = LoraBranch(
            ad["lora_a"],
            ad["lora_b"],
            dropout_keys(t, key, num_layers),
            n_in=t.n_in,
            scale=spec.scale,
            rate=spec.dropout,
            dtype=dtype,
        )
    return model


def bind_for_training(parts: Any, base: Any, adapters: Any, spec: LoraSpec, rng: jax.Array):
    """The model a train step differentiates: merged kernels, or (``spec.dropout > 0``) the
    unmerged branches with dropout drawn from ``stream(rng, "lora_dropout")``."""
    if spec.dropout > 0:
        return bind_unmerged(parts, base, adapters, spec, stream(rng, "lora_dropout"))
    return parts.bind(merge(base, adapters, spec))


class LoraParts:
    """ModelParts-like view whose ``bind`` takes ``{"base": params, "lora": adapters}``
    (used by the held-out evaluation, which scores params and EMA adapters on one base)."""

    def __init__(self, parts: Any, spec: LoraSpec):
        self.parts, self.spec = parts, spec

    def bind(self, params: Any):
        return self.parts.bind(merge(params["base"], params["lora"], self.spec))
