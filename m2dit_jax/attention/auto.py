"""The ``auto`` backend: the best exact backend for the platform and sequence length.

TPU -> ``splash``; GPU -> ``split`` (cuDNN flash attention parts); CPU -> ``split`` (chunked
online softmax) above ``AUTO_SPLIT_MIN_TOKENS`` tokens, else the dense ``xla`` reference.
Options meant for another backend are dropped (``impl`` is split's; block sizes go to
split and splash).
"""

from __future__ import annotations

import jax

from m2dit_jax.attention import dispatch, splash
from m2dit_jax.layout import SceneLayout

AUTO_SPLIT_MIN_TOKENS = 4096
_SPLASH_OPTIONS = splash.BLOCK_SIZE_OPTIONS | {"interpret"}
_SPLIT_OPTIONS = {"impl", "block_q", "block_kv"}


def choose_backend(layout: SceneLayout, platform: str | None = None) -> str:
    """Backend name ``auto`` runs for this layout on ``platform`` (default: jax's)."""
    platform = platform or dispatch.target_platform()
    if platform == "tpu":
        return "splash"
    if platform == "gpu" or layout.seq_len > AUTO_SPLIT_MIN_TOKENS:
        return "split"
    return "xla"


def auto_attention(q, k, v, layout: SceneLayout, *, scale: float, **options) -> jax.Array:
    """(B, L, H, Dh) mask-1 attention through ``choose_backend(layout)``."""
    platform = dispatch.target_platform()
    name = choose_backend(layout, platform)
    dispatch.log_choice_once(
        ("auto", layout, platform),
        f"attention backend 'auto' -> {name!r} on {platform} for {layout.seq_len} tokens "
        f"({layout})",
    )
    allowed = {"splash": _SPLASH_OPTIONS, "split": _SPLIT_OPTIONS, "xla": set()}[name]
    unknown = set(options) - _SPLASH_OPTIONS - _SPLIT_OPTIONS
    if unknown:
        raise ValueError(f"unknown attention options {sorted(unknown)} for backend 'auto'")
    chosen = {key: value for key, value in options.items() if key in allowed}
    return dispatch.BACKENDS[name](q, k, v, layout, scale=scale, **chosen)


dispatch.register_backend("auto", auto_attention)
