"""Mask-1 attention behind one function, ``masked_attention``, with pluggable backends."""

from m2dit_jax.attention.dispatch import BACKENDS, masked_attention, register_backend

__all__ = ["BACKENDS", "masked_attention", "register_backend"]
