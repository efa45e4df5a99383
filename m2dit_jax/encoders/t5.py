"""The T5-v1.1 text encoder (CogVideoX's ``text_encoder/``) in Flax NNX.

Pre-norm transformer: RMS norm without bias or mean subtraction, unscaled dot-product
attention with a learned relative-position bias (bidirectional log buckets, computed by the
first block and shared by all), gated-GELU (tanh) feed-forward, no biases anywhere.
Parameter names mirror transformers' ``T5EncoderModel`` state dict.

``T5TextEncoder`` wraps model + tokenizer behind the ``TextEncoder`` protocol
(``encode(captions) -> (embeds (N, 226, 4096) f32, mask (N, 226) bool)``). Like the CogVideoX
pipeline it runs the encoder *without* an attention mask (pad tokens are attended and their
outputs are real embeddings the DiT was trained on); ``attend_to_padding=False`` masks them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m2dit_jax.encoders.tokenizer import COGVIDEOX_TEXT_LEN, T5Tokenizer
from m2dit_jax.encoders.weights_io import (
    assign_torch_state,
    load_safetensors,
    read_config,
    save_torch_state,
)


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Encoder architecture (the fields of a transformers T5 ``config.json``).
    Defaults: T5-v1.1-XXL as shipped with CogVideoX."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"

    def __post_init__(self):
        if self.feed_forward_proj not in ("gated-gelu", "gated-gelu_new"):
            raise ValueError(
                f"T5Config.feed_forward_proj={self.feed_forward_proj!r}: only T5-v1.1's "
                "'gated-gelu' is supported"
            )
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_transformers(cls, config: Mapping[str, Any]) -> T5Config:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in fields})


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int):
    """(q_len, k_len) int32 buckets of (key - query), bidirectional, as T5 computes them
    (float32 log spacing, truncated toward zero)."""
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    max_exact = half // 2
    is_small = rel < max_exact
    with np.errstate(divide="ignore"):
        scaled = np.log(np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact))
    scaled = scaled / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    return (buckets + np.where(is_small, rel, large)).astype(np.int32)


def _param(rng: np.random.Generator | None, shape, std: float, dtype):
    if rng is None:  # abstract placeholder, filled by the checkpoint loader (no allocation)
        return nnx.Param(jax.ShapeDtypeStruct(tuple(shape), dtype))
    return nnx.Param(jnp.asarray((rng.standard_normal(shape) * std).astype(np.float32), dtype))


class _Table(nnx.Module):
    """A lookup table (torch ``nn.Embedding``): weight (N, D)."""

    def __init__(self, rows, dim, rng, std, param_dtype):
        self.weight = _param(rng, (rows, dim), std, param_dtype)


class _Linear(nnx.Module):
    def __init__(self, din, dout, rng, dtype, param_dtype):
        self.weight = _param(rng, (din, dout), din**-0.5, param_dtype)
        self.dtype = dtype

    def __call__(self, x):
        return x.astype(self.dtype) @ self.weight[...].astype(self.dtype)


class _RMSNorm(nnx.Module):
    def __init__(self, dim, eps, param_dtype):
        self.weight = nnx.Param(jnp.asarray(np.ones((dim,), np.float32), param_dtype))
        self.eps = eps

    def __call__(self, x):
        var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
        y = x.astype(jnp.float32) * jax.lax.rsqrt(var + self.eps)
        return (self.weight[...].astype(jnp.float32) * y).astype(x.dtype)


class _Attention(nnx.Module):
    def __init__(self, cfg: T5Config, has_bias: bool, rng, dtype, param_dtype):
        inner = cfg.num_heads * cfg.d_kv
        for name, (din, dout) in dict(
            q=(cfg.d_model, inner), k=(cfg.d_model, inner), v=(cfg.d_model, inner),
            o=(inner, cfg.d_model),
        ).items():  # fmt: skip
            setattr(self, name, _Linear(din, dout, rng, dtype, param_dtype))
        if has_bias:
            self.relative_attention_bias = _Table(
                cfg.relative_attention_num_buckets, cfg.num_heads, rng, 1.0, param_dtype
            )
        self.heads, self.d_kv = cfg.num_heads, cfg.d_kv

    def __call__(self, x, bias):
        b, n, _ = x.shape
        split = lambda t: t.reshape(b, n, self.heads, self.d_kv)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(scores + bias, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, self.heads * self.d_kv)
        return self.o(out)


class _Layer(nnx.Module):
    """transformers' ``block.i.layer.j``: layer_norm plus SelfAttention or DenseReluDense."""

    def __init__(self, cfg, body_name, body, param_dtype):
        self.layer_norm = _RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype)
        setattr(self, body_name, body)


class _GatedFF(nnx.Module):
    def __init__(self, cfg: T5Config, rng, dtype, param_dtype):
        self.wi_0 = _Linear(cfg.d_model, cfg.d_ff, rng, dtype, param_dtype)
        self.wi_1 = _Linear(cfg.d_model, cfg.d_ff, rng, dtype, param_dtype)
        self.wo = _Linear(cfg.d_ff, cfg.d_model, rng, dtype, param_dtype)

    def __call__(self, x):
        return self.wo(jax.nn.gelu(self.wi_0(x), approximate=True) * self.wi_1(x))


class _Block(nnx.Module):
    def __init__(self, cfg, has_bias, rng, dtype, param_dtype):
        attn = _Attention(cfg, has_bias, rng, dtype, param_dtype)
        ff = _GatedFF(cfg, rng, dtype, param_dtype)
        self.layer = nnx.List(
            [
                _Layer(cfg, "SelfAttention", attn, param_dtype),
                _Layer(cfg, "DenseReluDense", ff, param_dtype),
            ]
        )

    def __call__(self, h, bias):
        attn, ff = self.layer[0], self.layer[1]
        h = h + attn.SelfAttention(attn.layer_norm(h), bias).astype(h.dtype)
        return h + ff.DenseReluDense(ff.layer_norm(h)).astype(h.dtype)


class _Stack(nnx.Module):
    def __init__(self, cfg, rng, dtype, param_dtype):
        self.block = nnx.List(
            [_Block(cfg, i == 0, rng, dtype, param_dtype) for i in range(cfg.num_layers)]
        )
        self.final_layer_norm = _RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype)


class T5Encoder(nnx.Module):
    """ids (B, L) int -> hidden states (B, L, d_model) float32.

    ``seed`` draws a random init (tests); ``seed=None`` leaves abstract placeholders that
    ``load_t5_encoder`` fills, so a 4.7B-parameter encoder is never allocated twice."""

    def __init__(
        self, config: T5Config, *, seed: int | None = 0, dtype=jnp.float32, param_dtype=jnp.float32
    ):
        rng = np.random.default_rng(seed) if seed is not None else None
        self.config = config
        self.dtype = dtype
        self.shared = _Table(config.vocab_size, config.d_model, rng, 1.0, param_dtype)
        self.encoder = _Stack(config, rng, dtype, param_dtype)

    def __call__(self, ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        if ids.ndim != 2:
            raise ValueError(f"ids must be (B, L), got shape {ids.shape}")
        length = ids.shape[1]
        h = jnp.take(self.shared.weight[...], ids, axis=0).astype(self.dtype)
        buckets = relative_position_buckets(
            length, length, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        )
        table = self.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight[...]
        bias = jnp.transpose(table.astype(jnp.float32)[buckets], (2, 0, 1))[None]  # (1,H,L,L)
        if attention_mask is not None:
            neg = jnp.finfo(jnp.float32).min
            bias = bias + jnp.where(attention_mask[:, None, None, :], 0.0, neg)
        for block in self.encoder.block:
            h = block(h, bias)
        return self.encoder.final_layer_norm(h).astype(jnp.float32)


def _t5_rename(tensors: Mapping[str, np.ndarray]):
    def rename(key: str) -> str | None:
        if key == "encoder.embed_tokens.weight":  # tied to shared.weight
            return None if "shared.weight" in tensors else "shared.weight"
        if key.startswith("decoder.") or key == "lm_head.weight":
            return None  # a full T5 checkpoint: only the encoder is used
        return key

    return rename


def _is_t5_table(name: str) -> bool:
    return name == "shared.weight" or "relative_attention_bias" in name


def save_t5_encoder(model: T5Encoder, path: str | os.PathLike) -> None:
    """Write ``model`` as a transformers ``text_encoder/`` folder (T5EncoderModel, f32)."""
    cfg = dataclasses.asdict(model.config)
    config = {
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        **cfg,
        "dense_act_fn": "gelu_new",
        "is_gated_act": True,
        "is_encoder_decoder": False,
        "use_cache": False,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }
    save_torch_state(
        model, path, config, weights_name="model.safetensors", is_embedding=_is_t5_table
    )


def load_t5_encoder(
    path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=jnp.float32
) -> T5Encoder:
    """A transformers ``text_encoder/`` folder (T5EncoderModel, safetensors) -> ``T5Encoder``."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(
        os.path.join(path, "text_encoder")
    ):
        path = os.path.join(path, "text_encoder")
    config = T5Config.from_transformers(read_config(path))
    model = T5Encoder(config, seed=None, dtype=dtype, param_dtype=param_dtype)
    tensors = load_safetensors(path)
    assign_torch_state(
        model,
        tensors,
        what="T5 encoder",
        rename=_t5_rename(tensors),
        is_embedding=_is_t5_table,
        param_dtype=param_dtype,
    )
    return model


class T5TextEncoder:
    """``TextEncoder`` protocol over a T5 encoder + tokenizer: (N,) captions ->
    (embeds (N, text_len, d_model) float32, mask (N, text_len) bool).

    Captions are encoded in jitted batches of ``batch_size`` (the last one padded), so only
    one program is compiled whatever N is. With ``mesh``, each batch is split over all of the
    mesh's devices (weights replicated; ``batch_size`` rounded up to a multiple of them).
    """

    def __init__(
        self,
        model: T5Encoder,
        tokenizer: T5Tokenizer,
        *,
        batch_size: int = 8,
        attend_to_padding: bool = True,
        mesh: jax.sharding.Mesh | None = None,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.text_len = tokenizer.max_length
        self.dim = model.config.d_model
        self.attend_to_padding = attend_to_padding
        graphdef, state = nnx.split(model)
        shardings = {}
        if mesh is not None:
            # Data parallel over every mesh axis: captions split, weights replicated.
            axes = tuple(mesh.axis_names)
            size = int(np.prod([mesh.shape[a] for a in axes]))
            batch_size = -(-batch_size // size) * size
            rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes))
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            state = jax.device_put(state, replicated)
            shardings = dict(in_shardings=(replicated, rows, rows), out_shardings=rows)
        self.batch_size = batch_size
        self._state = state

        @functools.partial(jax.jit, **shardings)
        def forward(state, ids, mask):
            m = nnx.merge(graphdef, state)
            return m(ids, None if attend_to_padding else mask)

        self._forward = forward

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        text_len: int = COGVIDEOX_TEXT_LEN,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        **kwargs,
    ) -> T5TextEncoder:
        """A CogVideoX pipeline folder holding ``text_encoder/`` and ``tokenizer/``."""
        path = os.fspath(path)
        model = load_t5_encoder(
            os.path.join(path, "text_encoder"), dtype=dtype, param_dtype=param_dtype
        )
        tokenizer = T5Tokenizer.from_folder(os.path.join(path, "tokenizer"), max_length=text_len)
        return cls(model, tokenizer, **kwargs)

    def encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.tokenizer(captions)
        n = len(ids)
        out = np.zeros((n, self.text_len, self.dim), np.float32)
        for start in range(0, n, self.batch_size):
            chunk_ids, chunk_mask = (
                ids[start : start + self.batch_size],
                mask[start : start + self.batch_size],
            )
            pad = self.batch_size - len(chunk_ids)
            if pad:
                chunk_ids = np.concatenate([chunk_ids, np.zeros((pad, self.text_len), np.int32)])
                chunk_mask = np.concatenate([chunk_mask, np.ones((pad, self.text_len), bool)])
            emb = self._forward(self._state, jnp.asarray(chunk_ids), jnp.asarray(chunk_mask))
            out[start : start + self.batch_size] = np.asarray(emb)[: self.batch_size - pad]
        return out, mask
