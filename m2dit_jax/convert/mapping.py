"""Name and layout mapping between diffusers' ``CogVideoXTransformer3DModel`` and Mask2DiT.

Each ``Rule`` ties one of our parameter paths to one diffusers tensor name (per block for
block parameters) with the exact, lossless array transform in each direction (transposes and
reshapes only). Our layouts: Dense kernels are (in..., out...) — q/k/v (D, H, Dh), out
(H, Dh, D); the patch projection takes features in (ph, pw, c) order and the output head
produces them in (ph, pw, c) order (diffusers: conv weight (D, C, p, p), head (c, ph, pw)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections
import numpy as np

from m2dit_jax.model.config import get_model_config

Transform = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]  # path inside one block (per_block) or inside the model
    theirs: str  # diffusers name; "{i}" is the block index for per-block rules
    to_ours: Transform
    to_theirs: Transform
    per_block: bool


def _linear(shape_in: tuple[int, ...], shape_out: tuple[int, ...]):
    """torch Linear weight (out, in) <-> our kernel (*shape_in, *shape_out)."""
    to_ours = lambda w: w.T.reshape(shape_in + shape_out)
    to_theirs = lambda k: k.reshape(int(np.prod(shape_in)), int(np.prod(shape_out))).T
    return to_ours, to_theirs


def _reshape(shape: tuple[int, ...]):
    return (lambda b: b.reshape(shape)), (lambda b: b.reshape(-1))


_SAME = (lambda x: x, lambda x: x)


def rules(config: ml_collections.ConfigDict) -> list[Rule]:
    """Every parameter of a Mask2DiT with ``config`` and its diffusers counterpart."""
    d = config.num_heads * config.head_dim
    h, dh = config.num_heads, config.head_dim
    e = config.time_embed_dim
    p = config.patch_size
    c_in, c_out = config.in_channels, config.out_channels
    inner = config.mlp_ratio * d
    out: list[Rule] = []

    def add(ours, theirs, fns, per_block=False):
        out.append(Rule(tuple(ours.split(".")), theirs, fns[0], fns[1], per_block))

    def dense(ours, theirs, shape_in, shape_out, per_block=False):
        add(f"{ours}.kernel", f"{theirs}.weight", _linear(shape_in, shape_out), per_block)
        add(f"{ours}.bias", f"{theirs}.bias", _reshape(shape_out), per_block)

    def norm(ours, theirs, per_block=False):
        add(f"{ours}.scale", f"{theirs}.weight", _SAME, per_block)
        add(f"{ours}.bias", f"{theirs}.bias", _SAME, per_block)

    dense("text_proj", "patch_embed.text_proj", (config.text_dim,), (d,))
    add(
        "patch_proj.kernel",
        "patch_embed.proj.weight",
        (
            lambda w: w.transpose(2, 3, 1, 0).reshape(p * p * c_in, d),
            lambda k: k.reshape(p, p, c_in, d).transpose(3, 2, 0, 1),
        ),
    )
    add("patch_proj.bias", "patch_embed.proj.bias", _SAME)
    dense("time_embedding.linear_1", "time_embedding.linear_1", (d,), (e,))
    dense("time_embedding.linear_2", "time_embedding.linear_2", (e,), (e,))
    blk = "transformer_blocks.{i}"
    for n in ("norm1", "norm2"):
        dense(f"{n}.linear", f"{blk}.{n}.linear", (e,), (6 * d,), True)
        norm(f"{n}.norm", f"{blk}.{n}.norm", True)
    for n in ("q", "k", "v"):
        dense(f"attn.to_{n}", f"{blk}.attn1.to_{n}", (d,), (h, dh), True)
    for n in ("q", "k"):
        norm(f"attn.norm_{n}", f"{blk}.attn1.norm_{n}", True)
    dense("attn.to_out", f"{blk}.attn1.to_out.0", (h, dh), (d,), True)
    dense("ff.proj_in", f"{blk}.ff.net.0.proj", (d,), (inner,), True)
    dense("ff.proj_out", f"{blk}.ff.net.2", (inner,), (d,), True)
    norm("norm_final", "norm_final")
    dense("norm_out_linear", "norm_out.linear", (e,), (2 * d,))
    norm("norm_out", "norm_out.norm")
    add(
        "proj_out.kernel",
        "proj_out.weight",
        (
            lambda w: w.reshape(c_out, p, p, d).transpose(3, 1, 2, 0).reshape(d, p * p * c_out),
            lambda k: k.reshape(d, p, p, c_out).transpose(3, 1, 2, 0).reshape(c_out * p * p, d),
        ),
    )
    add(
        "proj_out.bias",
        "proj_out.bias",
        (
            lambda b: b.reshape(c_out, p, p).transpose(1, 2, 0).reshape(-1),
            lambda b: b.reshape(p, p, c_out).transpose(2, 0, 1).reshape(-1),
        ),
    )
    return out


# ---------------------------------------------------------------------- configs
# diffusers config values our model implements; anything else is refused by name.
_REQUIRED = {
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "ofs_embed_dim": None,
    "patch_size_t": None,
    "activation_fn": "gelu-approximate",
    "timestep_activation_fn": "silu",
    "norm_elementwise_affine": True,
    "use_learned_positional_embeddings": False,
    "attention_bias": True,
    "patch_bias": True,
    "dropout": 0.0,
}


def config_from_diffusers(diffusers_config: dict, **overrides) -> ml_collections.ConfigDict:
    """Our model config for a diffusers ``CogVideoXTransformer3DModel`` config.json dict.

    Preset-like runtime fields (dtype, remat, scan_layers, attention backend) come from
    ``overrides`` (default: the tiny preset's values, i.e. f32, no remat, no scan).
    """
    cfg = dict(diffusers_config)
    for key, required in _REQUIRED.items():
        if key in cfg and cfg[key] != required:
            raise ValueError(
                f"diffusers config {key}={cfg[key]!r} is not supported (Mask2DiT implements "
                f"CogVideoX 1.0: {key}={required!r})"
            )
    cls = cfg.get("_class_name", "CogVideoXTransformer3DModel")
    if cls != "CogVideoXTransformer3DModel":
        raise ValueError(f"expected a CogVideoXTransformer3DModel config, got {cls!r}")
    get = lambda key, default: cfg.get(key, default)
    ratio = int(get("temporal_compression_ratio", 4))
    heads = int(get("num_attention_heads", 30))
    head_dim = int(get("attention_head_dim", 64))
    out_channels = get("out_channels", 16)
    values = dict(
        num_layers=int(get("num_layers", 30)),
        num_heads=heads,
        head_dim=head_dim,
        in_channels=int(get("in_channels", 16)),
        out_channels=int(out_channels if out_channels is not None else get("in_channels", 16)),
        patch_size=int(get("patch_size", 2)),
        text_dim=int(get("text_embed_dim", 4096)),
        text_len=int(get("max_text_seq_length", 226)),
        time_embed_dim=int(get("time_embed_dim", 512)),
        positions="rope" if get("use_rotary_positional_embeddings", False) else "sincos",
        sample_frames=(int(get("sample_frames", 49)) - 1) // ratio + 1,
        sample_height=int(get("sample_height", 60)),
        sample_width=int(get("sample_width", 90)),
        temporal_compression_ratio=ratio,
        spatial_interpolation_scale=float(get("spatial_interpolation_scale", 1.875)),
        temporal_interpolation_scale=float(get("temporal_interpolation_scale", 1.0)),
        norm_eps=float(get("norm_eps", 1e-5)),
    )
    values.update(overrides)
    return get_model_config("tiny", **values)


def config_to_diffusers(config: ml_collections.ConfigDict) -> dict:
    """The diffusers config.json dict of a Mask2DiT config (inverse of config_from_diffusers)."""
    return {
        "_class_name": "CogVideoXTransformer3DModel",
        "_diffusers_version": "0.42.1",
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.head_dim,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "time_embed_dim": config.time_embed_dim,
        "ofs_embed_dim": None,
        "text_embed_dim": config.text_dim,
        "num_layers": config.num_layers,
        "dropout": 0.0,
        "attention_bias": True,
        "sample_width": config.sample_width,
        "sample_height": config.sample_height,
        "sample_frames": (config.sample_frames - 1) * config.temporal_compression_ratio + 1,
        "patch_size": config.patch_size,
        "patch_size_t": None,
        "temporal_compression_ratio": config.temporal_compression_ratio,
        "max_text_seq_length": config.text_len,
        "activation_fn": "gelu-approximate",
        "timestep_activation_fn": "silu",
        "norm_elementwise_affine": True,
        "norm_eps": config.norm_eps,
        "spatial_interpolation_scale": config.spatial_interpolation_scale,
        "temporal_interpolation_scale": config.temporal_interpolation_scale,
        "use_rotary_positional_embeddings": config.positions == "rope",
        "use_learned_positional_embeddings": False,
        "patch_bias": True,
    }
