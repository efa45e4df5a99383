"""Chunked online-softmax attention in pure JAX: memory linear in sequence length.

``chunked_attention(q, k, v, scale=..., block_q=..., block_kv=...)`` computes unmasked
softmax attention and its row log-sum-exp without ever holding more than a
(B, H, block_q, block_kv) tile of logits. The backward pass is a custom VJP that recomputes the
tiles (flash-attention style), so gradients are memory-linear too, and it accepts a cotangent for
the log-sum-exp: that is what lets partial attentions be merged exactly (``merge_partials``).

This is the fallback for platforms without a fused attention kernel (CPU, or GPU dtypes cuDNN
does not take); the GPU production path is cuDNN through ``jax.nn.dot_product_attention``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_KV = 512


def _blocks(x: jax.Array, block: int) -> jax.Array:
    """(B, L, H, D) -> (n, B, H, block, D), zero-padding L up to a multiple of ``block``."""
    b, length, h, d = x.shape
    n = -(-length // block)
    x = jnp.pad(x, ((0, 0), (0, n * block - length), (0, 0), (0, 0)))
    return x.reshape(b, n, block, h, d).transpose(1, 0, 3, 2, 4)


def _unblocks(x: jax.Array, length: int) -> jax.Array:
    """(n, B, H, block, D) -> (B, length, H, D)."""
    n, b, h, block, d = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(b, n * block, h, d)[:, :length]


def _logits(qb, kb, kv_valid, scale):
    """(B, H, bq, D) x (B, H, bkv, D) -> f32 (B, H, bq, bkv), padding keys at -inf."""
    s = jnp.einsum("bhqd,bhkd->bhqk", qb, kb, preferred_element_type=jnp.float32) * scale
    return jnp.where(kv_valid[None, None, None, :], s, -jnp.inf)


def _pick_block(length: int, block: int) -> int:
    if block <= 0:
        raise ValueError(f"attention block sizes must be positive, got {block}")
    return min(block, length)


def _forward(q, k, v, scale, block_q, block_kv):
    lq, lk = q.shape[1], k.shape[1]
    bq, bkv = _pick_block(lq, block_q), _pick_block(lk, block_kv)
    qs, ks, vs = _blocks(q, bq), _blocks(k, bkv), _blocks(v, bkv)
    kv_valid = (jnp.arange(ks.shape[0] * bkv) < lk).reshape(ks.shape[0], bkv)

    def one_q_block(qb):
        b, h = qb.shape[:2]
        init = (
            jnp.full((b, h, bq), -jnp.inf, jnp.float32),  # running max
            jnp.zeros((b, h, bq), jnp.float32),  # running normaliser
            jnp.zeros((b, h, bq, v.shape[-1]), jnp.float32),  # running numerator
        )

        def step(carry, kv):
            m, denom, acc = carry
            kb, vb, valid = kv
            s = _logits(qb, kb, valid, scale)
            m_new = jnp.maximum(m, s.max(-1))
            # A row whose keys so far are all padding keeps m = -inf; avoid inf - inf.
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            p = jnp.exp(s - m_safe[..., None])
            corr = jnp.exp(m - m_safe)
            denom = denom * corr + p.sum(-1)
            pv = jnp.einsum(
                "bhqk,bhkd->bhqd", p.astype(vb.dtype), vb, preferred_element_type=jnp.float32
            )
            return (m_new, denom, acc * corr[..., None] + pv), None

        (m, denom, acc), _ = jax.lax.scan(step, init, (ks, vs, kv_valid))
        out = acc / denom[..., None]
        lse = m + jnp.log(denom)
        return out.astype(q.dtype), lse

    outs, lses = jax.lax.map(one_q_block, qs)
    out = _unblocks(outs, lq)
    # lse blocks: (n, B, H, bq) -> (B, Lq, H)
    lse = lses.transpose(1, 0, 3, 2).reshape(q.shape[0], -1, q.shape[2])[:, :lq]
    return out, lse


def _backward(q, k, v, out, lse, dout, dlse, scale, block_q, block_kv):
    lq, lk = q.shape[1], k.shape[1]
    bq, bkv = _pick_block(lq, block_q), _pick_block(lk, block_kv)
    # delta_i = sum_d dout*out - dlse_i: the lse cotangent enters the softmax VJP as a row shift.
    delta = (dout.astype(jnp.float32) * out.astype(jnp.float32)).sum(-1) - dlse
    qs, ks, vs, dos = _blocks(q, bq), _blocks(k, bkv), _blocks(v, bkv), _blocks(dout, bq)
    lse_b = _blocks(lse[..., None], bq)[..., 0]  # (nq, B, H, bq)
    delta_b = _blocks(delta[..., None], bq)[..., 0]
    kv_valid = (jnp.arange(ks.shape[0] * bkv) < lk).reshape(ks.shape[0], bkv)

    def probs_and_dlogits(qb, kb, vb, dob, lse_q, delta_q, valid):
        s = _logits(qb, kb, valid, scale)
        # Padded query rows carry lse = 0 and produce finite junk that is sliced off.
        p = jnp.exp(s - lse_q[..., None])
        dp = jnp.einsum("bhqd,bhkd->bhqk", dob, vb, preferred_element_type=jnp.float32)
        return p, p * (dp - delta_q[..., None])

    def dq_block(args):
        qb, dob, lse_q, delta_q = args

        def step(acc, kv):
            kb, vb, valid = kv
            _, ds = probs_and_dlogits(qb, kb, vb, dob, lse_q, delta_q, valid)
            acc = acc + jnp.einsum(
                "bhqk,bhkd->bhqd", ds.astype(kb.dtype), kb, preferred_element_type=jnp.float32
            )
            return acc, None

        acc, _ = jax.lax.scan(step, jnp.zeros(qb.shape, jnp.float32), (ks, vs, kv_valid))
        return (acc * scale).astype(q.dtype)

    def dkv_block(args):
        kb, vb, valid = args

        def step(carry, qargs):
            dk, dv = carry
            qb, dob, lse_q, delta_q = qargs
            p, ds = probs_and_dlogits(qb, kb, vb, dob, lse_q, delta_q, valid)
            dv = dv + jnp.einsum(
                "bhqk,bhqd->bhkd", p.astype(dob.dtype), dob, preferred_element_type=jnp.float32
            )
            dk = dk + jnp.einsum(
                "bhqk,bhqd->bhkd", ds.astype(qb.dtype), qb, preferred_element_type=jnp.float32
            )
            return (dk, dv), None

        init = (jnp.zeros(kb.shape, jnp.float32), jnp.zeros(vb.shape, jnp.float32))
        (dk, dv), _ = jax.lax.scan(step, init, (qs, dos, lse_b, delta_b))
        return (dk * scale).astype(k.dtype), dv.astype(v.dtype)

    dq = _unblocks(jax.lax.map(dq_block, (qs, dos, lse_b, delta_b)), lq)
    dks, dvs = jax.lax.map(dkv_block, (ks, vs, kv_valid))
    return dq, _unblocks(dks, lk), _unblocks(dvs, lk)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _chunked(q, k, v, scale, block_q, block_kv):
    return _forward(q, k, v, scale, block_q, block_kv)


def _chunked_fwd(q, k, v, scale, block_q, block_kv):
    out, lse = _forward(q, k, v, scale, block_q, block_kv)
    return (out, lse), (q, k, v, out, lse)


def _chunked_bwd(scale, block_q, block_kv, res, cotangents):
    q, k, v, out, lse = res
    dout, dlse = cotangents
    return _backward(q, k, v, out, lse, dout, dlse, scale, block_q, block_kv)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def chunked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float,
    block_q: int = DEFAULT_BLOCK_Q,
    block_kv: int = DEFAULT_BLOCK_KV,
) -> tuple[jax.Array, jax.Array]:
    """Unmasked attention in (block_q x block_kv) tiles.

    Args:
      q: (B, Lq, H, Dh); k, v: (B, Lk, H, Dh) (any float dtype; statistics in f32).
      scale: logit scale.
      block_q, block_kv: tile sizes (clipped to the sequence lengths).
    Returns:
      out (B, Lq, H, Dh) in q's dtype and lse (B, Lq, H) f32, both differentiable.
    """
    return _chunked(q, k, v, float(scale), int(block_q), int(block_kv))


def dense_attention_with_lse(
    q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float
) -> tuple[jax.Array, jax.Array]:
    """Same contract as ``chunked_attention`` with a materialised (Lq, Lk) logit array."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    lse = jax.nn.logsumexp(s, axis=-1)
    p = jnp.exp(s - lse[..., None])
    out = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype), lse.transpose(0, 2, 1)


def merge_partials(parts: list[tuple[jax.Array, jax.Array]]) -> tuple[jax.Array, jax.Array]:
    """Exactly combines attentions over disjoint key sets through their log-sum-exp.

    Args:
      parts: [(out (B, L, H, Dh), lse (B, L, H) f32)]; an lse of -inf marks a row that has no
        keys in that part (it gets weight 0). Every row needs at least one finite lse.
    Returns:
      (out (B, L, H, Dh) in the first part's dtype, lse (B, L, H) f32) of the union.
    """
    lses = jnp.stack([lse for _, lse in parts])
    top = jax.lax.stop_gradient(lses.max(0))
    weights = jnp.exp(lses - top)
    total = weights.sum(0)
    out = sum(w[..., None] * o.astype(jnp.float32) for w, (o, _) in zip(weights, parts))
    out = out / total[..., None]
    return out.astype(parts[0][0].dtype), top + jnp.log(total)
