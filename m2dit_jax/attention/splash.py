"""The ``splash`` backend: Pallas splash attention with a *computable* mask-1 predicate.

``SceneMask`` evaluates ``SceneLayout.allowed`` from token indices (no mask array of any
size): splash's preprocessing classifies each (block_q x block_kv) tile as empty (skipped),
full (no mask work) or partial (predicate evaluated in the kernel). Forward and backward are
splash's own kernels. On TPU it is the production path; elsewhere it runs only when asked for
with ``interpret=True`` (the Pallas interpreter: slow, for tests) and otherwise refuses.

Pitfalls handled here:
* splash does not scale q: q is multiplied by ``scale`` first;
* splash has no batch axis: the kernel is vmapped over the batch;
* splash needs the sequence to be a multiple of the block sizes: the sequence is padded at the
  end with tokens that no real query sees and that see only each other (no empty softmax row);
* ``q_seq_shards > 1`` crashes when a mask has no partial block, and splash's own q-sequence
  sharding would need it: this backend always builds with ``q_seq_shards = 1`` and context
  parallelism goes through the Ulysses all-to-all in ``context_parallel`` (each device runs the
  kernel on the whole sequence for its heads).

Options (``masked_attention(..., backend="splash", **options)``): ``block_q``, ``block_kv``
(default 512, clipped to the padded length), ``block_kv_compute``, ``block_q_dkv``,
``block_kv_dkv``, ``block_q_dq``, ``block_kv_dq`` (default to block_q / block_kv),
``interpret`` (default False; required True off TPU — never chosen silently).
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_mask_info as splash_info,
)

from m2dit_jax.attention import dispatch
from m2dit_jax.layout import SceneLayout

DEFAULT_BLOCK = 512


class SceneMask(splash_mask._ComputableMask):
    """Mask 1 of ``layout`` on a sequence padded to ``padded_len`` tokens, as a predicate.

    Real tokens follow ``layout.allowed``; tail padding tokens attend only to each other.
    """

    def __init__(self, layout: SceneLayout, padded_len: int):
        if padded_len < layout.seq_len:
            raise ValueError(f"padded_len {padded_len} < layout.seq_len {layout.seq_len}")
        self.layout = layout
        self.padded_len = padded_len
        length = layout.seq_len

        def scene_mask_function(q_ids, kv_ids):
            # Operators only: evaluated on NumPy while preprocessing and on jnp in the kernel.
            q_real = q_ids < length
            k_real = kv_ids < length
            return (layout.allowed(q_ids, kv_ids) & q_real & k_real) | (~q_real & ~k_real)

        super().__init__((padded_len, padded_len), scene_mask_function)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SceneMask)
            and self.layout == other.layout
            and self.padded_len == other.padded_len
        )

    def __hash__(self) -> int:
        return hash((SceneMask, self.layout, self.padded_len))


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


BLOCK_SIZE_OPTIONS = frozenset(
    {
        "block_q",
        "block_kv",
        "block_kv_compute",
        "block_q_dkv",
        "block_kv_dkv",
        "block_q_dq",
        "block_kv_dq",
    }
)


def resolve_block_sizes(seq_len: int, **options: int | None) -> splash.BlockSizes:
    """Splash BlockSizes from the backend options (see module docstring)."""
    unknown = set(options) - BLOCK_SIZE_OPTIONS
    if unknown:
        raise ValueError(f"unknown splash block-size options {sorted(unknown)}")
    for name, value in options.items():
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"splash option {name} must be a positive int, got {value!r}")
    # Splash needs multiples of 128 (TPU lanes); a block never needs to exceed the rounded
    # sequence, so small problems get one block instead of a mostly-padding tile.
    for name, value in options.items():
        if value is not None and value % 128:
            raise ValueError(f"splash option {name}={value} must be a multiple of 128")
    cap = _round_up(seq_len, 128)
    block_q = min(options.get("block_q") or DEFAULT_BLOCK, cap)
    block_kv = min(options.get("block_kv") or DEFAULT_BLOCK, cap)
    pick = lambda name, default: min(options.get(name) or default, cap)
    return splash.BlockSizes(
        block_q=block_q,
        block_kv=block_kv,
        block_kv_compute=pick("block_kv_compute", block_kv),
        block_q_dkv=pick("block_q_dkv", block_q),
        block_kv_dkv=pick("block_kv_dkv", block_kv),
        block_kv_dkv_compute=pick("block_kv_dkv", block_kv),
        block_q_dq=pick("block_q_dq", block_q),
        block_kv_dq=pick("block_kv_dq", block_kv),
    )


def padded_length(seq_len: int, blocks: splash.BlockSizes) -> int:
    sizes = [
        blocks.block_q,
        blocks.block_kv,
        blocks.block_kv_compute,
        blocks.block_q_dkv,
        blocks.block_kv_dkv,
        blocks.block_q_dq,
        blocks.block_kv_dq,
    ]
    return _round_up(seq_len, math.lcm(*(b for b in sizes if b)))


@functools.lru_cache(maxsize=32)
def scene_kernel(
    layout: SceneLayout, heads: int, blocks: splash.BlockSizes, interpret: bool
) -> splash.SplashAttentionKernel:
    """The splash kernel (forward + backward) for ``heads`` heads of ``layout``; cached."""
    length = padded_length(layout.seq_len, blocks)
    mask = splash_mask.MultiHeadMask([SceneMask(layout, length)] * heads)
    # Built eagerly even when first called under jit: the cached kernel holds concrete
    # block-metadata arrays, never tracers of one trace.
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mha(
            mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret
        )


def block_statistics(layout: SceneLayout, block_q: int, block_kv: int) -> dict[str, float]:
    """Fraction of (block_q x block_kv) tiles of mask 1 that splash skips / masks / runs full.

    Uses splash's own preprocessing (``process_mask``) on the computable mask.
    """
    blocks = splash.BlockSizes(block_q=block_q, block_kv=block_kv)
    length = padded_length(layout.seq_len, blocks)
    info, _ = splash_info.process_mask(
        splash_mask.MultiHeadMask([SceneMask(layout, length)]), (block_q, block_kv)
    )
    # block_mask: 0 = empty, 1 = partial, 2 = full (one head).
    kinds = np.asarray(info.block_mask)[0]
    total = (length // block_q) * (length // block_kv)
    partial = int((kinds == 1).sum())
    full = int((kinds == 2).sum())
    return {
        "blocks": total,
        "empty": (total - partial - full) / total,
        "partial": partial / total,
        "full": full / total,
    }


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    layout: SceneLayout,
    *,
    scale: float,
    interpret: bool | None = None,
    **block_options: int,
) -> jax.Array:
    """Mask-1 attention with the splash kernel.

    Args:
      q, k, v: (B, L, H, Dh), L == layout.seq_len.
      layout: the scene layout (any ``mask_mode``).
      scale: logit scale (applied to q before the kernel).
      interpret: Pallas interpret mode. ``None`` (default) compiles the kernel for TPU and
        raises off TPU (the target platform, ``dispatch.target_platform``): pass True to
        run the interpreter elsewhere.
      block_options: block sizes (see module docstring).
    Returns:
      (B, L, H, Dh) in q's dtype.
    """
    if not interpret:
        platform = dispatch.target_platform()
        if platform != "tpu":
            raise ValueError(
                f"attention backend 'splash' is a TPU kernel and the target platform is "
                f"{platform!r}: set attention_options.interpret=True to run it in the (slow) "
                "Pallas interpreter, or use backend 'split' / 'auto'"
            )
    blocks = resolve_block_sizes(layout.seq_len, **block_options)
    length = padded_length(layout.seq_len, blocks)
    kernel = scene_kernel(layout, q.shape[2], blocks, bool(interpret))
    pad = ((0, 0), (0, 0), (0, length - layout.seq_len), (0, 0))

    def to_kernel(x):  # (B, L, H, D) -> (B, H, Lp, D)
        return jax.numpy.pad(x.transpose(0, 2, 1, 3), pad)

    qs = to_kernel(q * jax.numpy.asarray(scale, q.dtype))
    out = jax.vmap(kernel)(qs, to_kernel(k), to_kernel(v))
    return out[:, :, : layout.seq_len].transpose(0, 2, 1, 3).astype(q.dtype)


dispatch.register_backend("splash", splash_attention)
