"""Model configurations: ``tiny`` (tests), ``cogvideox_2b`` and ``cogvideox_5b``.

Every field is documented in ``_DEFAULTS``. Sizes follow diffusers'
``CogVideoXTransformer3DModel`` (v1.0, no temporal patching); ``sample_frames`` /
``sample_height`` / ``sample_width`` are the *latent* sample grid of one scene (13 x 60 x 90
for both released models) — only the RoPE crop region depends on the latter two.
"""

from __future__ import annotations

from typing import Any

import ml_collections

_DEFAULTS: dict[str, Any] = {
    "num_layers": 2,
    "num_heads": 2,
    "head_dim": 16,
    "in_channels": 4,
    "out_channels": 4,
    "patch_size": 2,
    "text_dim": 32,
    "text_len": 8,  # real caption tokens per scene (CogVideoX: 226)
    "time_embed_dim": 32,  # E, the timestep-embedding width (CogVideoX: 512)
    "positions": "rope",  # "rope" (5B) | "sincos" (2B)
    # sin-cos over S scenes: "continuous" recomputes the table for S*F frames (diffusers given
    # S*F frames); "stretch" interpolates the F-frame table to S*F frames linearly in time
    # (torch trilinear, align_corners=False), as the Mask²DiT release does.
    "sincos_temporal": "continuous",
    # How position tables are computed off the sample grid (equal on it): "diffusers" (>= 0.32:
    # RoPE crop grid linspace(start, stop*(n-1)/n, n); sin-cos recomputed on the actual grid)
    # or "release" (the Mask²DiT release: RoPE np.linspace(start, stop, n, endpoint=False);
    # sin-cos = the sample-grid table trilinearly resized to (S*sample_frames, h, w), first
    # S*F*h*w rows; needs sincos_temporal="stretch" and F <= sample_frames).
    "positions_convention": "diffusers",
    # Latent sample grid of ONE scene: F latent frames, latent H / W (before patching).
    "sample_frames": 2,
    "sample_height": 8,
    "sample_width": 8,
    "temporal_compression_ratio": 4,  # VAE frames per latent frame (kept for export)
    "spatial_interpolation_scale": 1.875,  # sin-cos only: spatial positions are arange / this
    "temporal_interpolation_scale": 1.0,  # sin-cos only
    "norm_eps": 1e-5,  # adaLN / final LayerNorms
    "qk_norm_eps": 1e-6,
    "mlp_ratio": 4,
    "attention_backend": "xla",
    "attention_options": {},
    "mask_mode": "mask2dit",  # SceneLayout.mask_mode ("full" / "independent": ablations)
    "dtype": "float32",  # compute dtype: "float32" | "bfloat16"
    "param_dtype": "float32",
    "remat": "none",  # "none" | "full" | "save_dots" | "save_attn" | ... (REMAT_POLICIES)
    "scan_layers": False,
    "text_pad_to": 1,
}

_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "cogvideox_2b": {
        "num_layers": 30,
        "num_heads": 30,
        "head_dim": 64,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 4096,
        "text_len": 226,
        "time_embed_dim": 512,
        "positions": "sincos",
        "sample_frames": 13,
        "sample_height": 60,
        "sample_width": 90,
        "scan_layers": True,
        "remat": "full",
        "dtype": "bfloat16",
    },
    "cogvideox_5b": {
        "num_layers": 42,
        "num_heads": 48,
        "head_dim": 64,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 4096,
        "text_len": 226,
        "time_embed_dim": 512,
        "positions": "rope",
        "sample_frames": 13,
        "sample_height": 60,
        "sample_width": 90,
        "scan_layers": True,
        "remat": "full",
        "dtype": "bfloat16",
    },
}

MODEL_NAMES = tuple(_PRESETS)
POSITIONS = ("rope", "sincos")
SINCOS_TEMPORAL = ("continuous", "stretch")
POSITIONS_CONVENTIONS = ("diffusers", "release")
# m2dit_jax.model.transformer.REMAT_POLICIES (+ "none"); "offload_*" need host memory
REMAT_POLICIES = (
    "none",
    "full",
    "save_dots",
    "save_attn",
    "save_qkv_attn",
    "offload_attn",
    "offload_qkv_attn",
    "offload_dots",
    "offload_input",
)
DTYPES = ("float32", "bfloat16")


def get_model_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """Returns the named configuration ("tiny", "cogvideox_2b", "cogvideox_5b").

    Keyword overrides replace fields (unknown fields are an error).
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown model config {name!r}; known: {list(MODEL_NAMES)}")
    values = dict(_DEFAULTS)
    values.update(_PRESETS[name])
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"unknown model config fields {sorted(unknown)}")
    values.update(overrides)
    config = ml_collections.ConfigDict(values)
    validate_config(config)
    return config


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first inconsistent field."""
    for name in (
        "num_layers",
        "num_heads",
        "head_dim",
        "in_channels",
        "out_channels",
        "patch_size",
        "text_dim",
        "text_len",
        "time_embed_dim",
        "sample_frames",
        "sample_height",
        "sample_width",
        "mlp_ratio",
        "text_pad_to",
    ):
        value = config.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"model config field {name!r} must be a positive int, got {value!r}")
    if config.positions not in POSITIONS:
        raise ValueError(
            f"model config 'positions' must be one of {POSITIONS}, got {config.positions!r}"
        )
    if config.sincos_temporal not in SINCOS_TEMPORAL:
        raise ValueError(
            f"model config 'sincos_temporal' must be one of {SINCOS_TEMPORAL}, "
            f"got {config.sincos_temporal!r}"
        )
    # .get: configs stored before this field existed (bundles) mean "diffusers"
    convention = config.get("positions_convention", "diffusers")
    if convention not in POSITIONS_CONVENTIONS:
        raise ValueError(
            f"model config 'positions_convention' must be one of {POSITIONS_CONVENTIONS}, "
            f"got {convention!r}"
        )
    if convention == "release" and config.positions == "sincos":
        if config.sincos_temporal != "stretch":
            raise ValueError(
                "positions_convention='release' with sincos positions needs "
                "sincos_temporal='stretch' (the release only stretches the sample-grid table)"
            )
    if config.remat not in REMAT_POLICIES:
        raise ValueError(
            f"model config 'remat' must be one of {REMAT_POLICIES}, got {config.remat!r}"
        )
    for name in ("dtype", "param_dtype"):
        if config.get(name) not in DTYPES:
            raise ValueError(
                f"model config {name!r} must be one of {DTYPES}, got {config.get(name)!r}"
            )
    width = config.num_heads * config.head_dim
    if config.positions == "sincos" and width % 16:
        raise ValueError(f"sincos positions need num_heads*head_dim divisible by 16, got {width}")
    if config.positions == "rope" and config.head_dim % 16:
        raise ValueError(f"rope positions need head_dim divisible by 16, got {config.head_dim}")
    for name in ("sample_height", "sample_width"):
        if config.get(name) % config.patch_size:
            raise ValueError(
                f"model config {name!r}={config.get(name)} must be a multiple of patch_size "
                f"{config.patch_size}"
            )
    if not isinstance(config.attention_options, (dict, ml_collections.ConfigDict)):
        raise ValueError("model config 'attention_options' must be a dict")


def hidden_size(config: ml_collections.ConfigDict) -> int:
    """D = num_heads * head_dim."""
    return config.num_heads * config.head_dim
