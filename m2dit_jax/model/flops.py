"""Model FLOPs of one sample, for MFU reporting.

Counted: every matmul at 2 FLOPs per multiply-add. Per block, with L tokens (text padding
included), width D, MLP ratio r, S scenes and temb width E:
  projections  2 L D^2 (4 + 2 r)        (q, k, v, out; MLP in and out)
  attention    4 L^2 D                  (q k^T and p v, dense: mask 1 blocks ~2%)
  modulation   2 * 2 S E 6D             (two adaLN-zero linears)
plus the embeddings (caption projection, patch projection, timestep MLP) and the output head.
Training = 3 x forward (backward = 2 x forward), so attention contributes 12 L^2 D per layer;
activation recomputation (remat) is not counted, as is the convention for MFU.
Elementwise work (norms, softmax, GELU, RoPE) is not counted.
"""

from __future__ import annotations

import ml_collections

from m2dit_jax.layout import SceneLayout


def forward_flops_per_sample(config: ml_collections.ConfigDict, layout: SceneLayout) -> float:
    """Forward-pass matmul FLOPs of one sample with ``layout``."""
    d = config.num_heads * config.head_dim
    e = config.time_embed_dim
    r = config.mlp_ratio
    s = layout.num_scenes
    seq = layout.seq_len
    video = layout.video_total
    patch_in = config.patch_size**2 * config.in_channels
    patch_out = config.patch_size**2 * config.out_channels
    per_block = 2.0 * seq * d * d * (4 + 2 * r) + 4.0 * seq * seq * d + 2.0 * 2 * s * e * 6 * d
    embed = (
        2.0 * s * layout.text_len * config.text_dim * d  # caption projection
        + 2.0 * video * patch_in * d  # patch projection
        + 2.0 * s * (d * e + e * e)  # timestep MLP
    )
    head = 2.0 * s * e * 2 * d + 2.0 * video * d * patch_out
    return config.num_layers * per_block + embed + head


def train_flops_per_sample(config: ml_collections.ConfigDict, layout: SceneLayout) -> float:
    """Forward + backward model FLOPs of one training sample (3 x forward)."""
    return 3.0 * forward_flops_per_sample(config, layout)


def param_count(config: ml_collections.ConfigDict) -> int:
    """Number of parameters of a Mask2DiT with ``config`` (equals the diffusers model's)."""
    d = config.num_heads * config.head_dim
    e = config.time_embed_dim
    dh = config.head_dim
    inner = config.mlp_ratio * d
    p2 = config.patch_size**2
    block = (
        2 * (e * 6 * d + 6 * d + 2 * d)  # two adaLN-zero: linear + LayerNorm
        + 4 * (d * d + d)  # q, k, v, out
        + 2 * 2 * dh  # qk LayerNorms
        + (d * inner + inner)
        + (inner * d + d)  # MLP
    )
    other = (
        (config.text_dim * d + d)
        + (p2 * config.in_channels * d + d)
        + (d * e + e + e * e + e)
        + 2 * d  # norm_final
        + (e * 2 * d + 2 * d)
        + 2 * d  # norm_out linear + LayerNorm
        + (d * p2 * config.out_channels + p2 * config.out_channels)
    )
    return config.num_layers * block + other
