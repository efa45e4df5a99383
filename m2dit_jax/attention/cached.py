"""Attention of one new scene against cached condition keys/values (causal-condition mask).

Under ``mask_mode="causal_conditions"`` condition tokens never attend to the generated scene,
so their keys/values are fixed for a whole extension: they are computed once (at t = 0) and
the sampler's steps run only the new scene's tokens. Under mask 1 a generated scene's tokens
see, outside the scene itself, only the other scenes' *video*; so the cache holds the
conditions' video keys/values alone and the new scene's attention is exactly:

* real caption queries  -> [own real caption ; own video]
* caption padding       -> [own real caption]                 (the layout's convention)
* video queries         -> [own real caption ; own video] merged with [cached video]

Every part is an *unmasked* attention, merged exactly through its log-sum-exp (``dense`` or
``chunked`` parts), or for the release-style ``cudnn`` / ``xla`` split impls one fused call
over the concatenated keys. No mask kernel is needed, so the ``splash`` backend's cached step
runs the pure-JAX ``chunked`` parts (XLA on TPU too).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from m2dit_jax.attention import auto, context_parallel, dispatch, split
from m2dit_jax.attention.online_softmax import (
    DEFAULT_BLOCK_KV,
    DEFAULT_BLOCK_Q,
    chunked_attention,
    dense_attention_with_lse,
    merge_partials,
)
from m2dit_jax.layout import SceneLayout

_SPLIT_OPTIONS = {"impl", "block_q", "block_kv"}


def _check(q, k, v, cache_k, cache_v, layout: SceneLayout) -> None:
    if layout.num_scenes != 1 or layout.mask_mode != "mask2dit":
        raise ValueError(
            f"cached_attention needs the new scene's one-scene mask2dit layout, got {layout}"
        )
    for name, x in (("q", q), ("k", k), ("v", v), ("cache_k", cache_k), ("cache_v", cache_v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must be (batch, seq, heads, head_dim), got {x.shape}")
    if not q.shape == k.shape == v.shape or q.shape[1] != layout.seq_len:
        raise ValueError(
            f"q/k/v must be (B, {layout.seq_len}, H, Dh) for {layout}, got "
            f"{q.shape}, {k.shape}, {v.shape}"
        )
    if cache_k.shape != cache_v.shape or cache_k.shape[0] != q.shape[0]:
        raise ValueError(
            f"cache_k/cache_v must both be (B={q.shape[0]}, Nc, H, Dh), got "
            f"{cache_k.shape}, {cache_v.shape}"
        )
    if cache_k.shape[2:] != q.shape[2:]:
        raise ValueError(f"cache heads/head_dim {cache_k.shape[2:]} != q's {q.shape[2:]}")


def resolve_impl(backend: str, dtype, head_dim: int, tokens: int, options: dict) -> str:
    """The part implementation the cached step uses for ``backend`` (see module doc)."""
    if backend not in dispatch.BACKENDS:
        raise ValueError(
            f"unknown attention backend {backend!r}; available: {sorted(dispatch.BACKENDS)}"
        )
    if backend == "auto":
        backend = "split" if tokens > auto.AUTO_SPLIT_MIN_TOKENS else "xla"
        if dispatch.target_platform() == "gpu":
            backend = "split"
    if backend == "xla":
        return "dense"
    if backend == "split":
        impl = options.get("impl", "auto")
        if impl not in split.SPLIT_IMPLS:
            raise ValueError(
                f"split attention impl must be one of {split.SPLIT_IMPLS}, got {impl!r}"
            )
        return split.default_split_impl(dtype, head_dim) if impl == "auto" else impl
    return "chunked"  # splash (and any kernel backend): unmasked parts need no mask kernel


def _local(q, k, v, cache_k, cache_v, layout, *, scale, impl, block_q, block_kv):
    tl, tb = layout.text_len, layout.text_block
    own_k = jnp.concatenate([k[:, :tl], k[:, tb:]], axis=1)  # [own real caption ; own video]
    own_v = jnp.concatenate([v[:, :tl], v[:, tb:]], axis=1)
    text_q, pad_q, video_q = q[:, :tl], q[:, tl:tb], q[:, tb:]
    if impl in ("cudnn", "xla"):

        def fused(q_, k_, v_):
            return jax.nn.dot_product_attention(q_, k_, v_, scale=scale, implementation=impl)

        text = fused(text_q, own_k, own_v)
        video = fused(
            video_q,
            jnp.concatenate([own_k, cache_k], axis=1),
            jnp.concatenate([own_v, cache_v], axis=1),
        )
        pad = fused(pad_q, k[:, :tl], v[:, :tl]) if tb > tl else None
    else:
        if impl == "chunked":

            def attend(q_, k_, v_):
                return chunked_attention(
                    q_, k_, v_, scale=scale, block_q=block_q, block_kv=block_kv
                )
        elif impl == "dense":

            def attend(q_, k_, v_):
                return dense_attention_with_lse(q_, k_, v_, scale=scale)
        else:
            raise ValueError(f"unknown cached attention impl {impl!r}")
        text = attend(text_q, own_k, own_v)[0]
        video = merge_partials([attend(video_q, own_k, own_v), attend(video_q, cache_k, cache_v)])[
            0
        ]
        pad = attend(pad_q, k[:, :tl], v[:, :tl])[0] if tb > tl else None
    parts = [text] + ([pad] if pad is not None else []) + [video]
    return jnp.concatenate([p.astype(q.dtype) for p in parts], axis=1)


def cached_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    cache_k: jax.Array,
    cache_v: jax.Array,
    layout: SceneLayout,
    *,
    backend: str = "xla",
    scale: float | None = None,
    **options,
) -> jax.Array:
    """The new scene's attention under the causal-condition mask, conditions from a cache.

    Args:
      q, k, v: (B, L1, H, Dh) the new scene's tokens [caption block | video], L1 ==
        ``layout.seq_len`` of its one-scene ``layout``.
      cache_k, cache_v: (B, Nc, H, Dh) the condition scenes' video keys/values of this layer.
      backend: the model's attention backend; picks the part implementation
        (``resolve_impl``). Options of the backend are accepted (``impl``, ``block_q``,
        ``block_kv`` are used, the rest — splash block sizes, ``interpret`` — do not apply).
      options: also ``mesh`` (default: the active one): under a multi-device mesh the call
        runs in a ``shard_map``, batch over (data, fsdp), heads over tensor, and the new
        tokens and the cache (both sharded over ``context`` like activations) gathered per
        head group by Ulysses all-to-alls, as in ``masked_attention``.
    Returns:
      (B, L1, H, Dh) in q's dtype.
    """
    _check(q, k, v, cache_k, cache_v, layout)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    mesh = context_parallel.active_mesh(options.pop("mesh", None))
    tokens = layout.seq_len + cache_k.shape[1]
    impl = resolve_impl(backend, q.dtype, q.shape[-1], tokens, options)
    dispatch.log_choice_once(
        ("cached", backend, impl, str(q.dtype), dispatch.target_platform()),
        f"cached condition attention for backend {backend!r} -> parts {impl!r} on "
        f"{dispatch.target_platform()}",
    )
    kwargs = dict(
        scale=float(scale),
        impl=impl,
        block_q=int(options.get("block_q") or DEFAULT_BLOCK_Q),
        block_kv=int(options.get("block_kv") or DEFAULT_BLOCK_KV),
    )

    def fn(q, k, v, cache_k, cache_v):
        return _local(q, k, v, cache_k, cache_v, layout, **kwargs)

    if mesh is None:
        return fn(q, k, v, cache_k, cache_v)
    return context_parallel.sharded_heads_call(fn, (q, k, v, cache_k, cache_v), mesh)
