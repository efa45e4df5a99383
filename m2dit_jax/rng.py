"""Named random streams: every consumer of randomness gets its own key, derived once.

With ``jax_threefry_partitionable`` (jax's default) ``fold_in(k, i) == split(k, n)[i]``, so
mixing ``split`` and small ``fold_in`` constants on one parent silently aliases streams (the
caption-dropout decisions used to be a function of the first noise values). Here each stream
is ``fold_in(parent, STREAM_IDS[name])`` with a 31-bit id hashed from the name — far from the
small integers used for step / micro-batch / extension indices — and nothing splits a parent
directly. ``tests/test_rng.py`` checks that no two streams coincide.

    root = jax.random.key(seed)
    init_key  = stream(root, "init")            # parameter initialisation
    train_key = stream(root, "train")           # step k: fold_in(train_key, k)
    t_key     = stream(step_key, "timesteps")   # inside the objective, and so on
"""

from __future__ import annotations

import zlib

import jax
import numpy as np

STREAM_NAMES = (
    "init",  # parameter initialisation (nnx.Rngs)
    "train",  # the train state's base key; step k folds in k
    "timesteps",  # diffusion timesteps of a batch
    "noise",  # diffusion noise of a batch
    "mask2",  # which samples are conditional and their target scene
    "caption_dropout",  # per-scene caption dropout decisions
    "eval",  # the fixed noise of the held-out evaluation
    "sample_noise",  # a sampler's initial latents
    "sampler",  # a stochastic sampler's per-step noise (DPM-Solver SDE)
    "extension",  # extension k of a chain folds in k
    "condition_posterior",  # release-style extension: the VAE posterior sample of conditions
    "condition_noise",  # release-style extension: add_noise at t = 0 on the conditions
    "lora",  # LoRA adapter initialisation (target j folds in j)
    "lora_dropout",  # LoRA dropout masks of a step / micro-batch (module, then layer fold in)
)


def _stream_id(name: str) -> int:
    # Bit 30 set: every id is >= 2**30, never a step, micro-batch or extension index.
    return (zlib.crc32(name.encode()) & 0x3FFFFFFF) | 0x40000000


STREAM_IDS: dict[str, int] = {name: _stream_id(name) for name in STREAM_NAMES}
assert len(set(STREAM_IDS.values())) == len(STREAM_IDS), "stream ids collide"


def as_key(seed_or_key: int | jax.Array) -> jax.Array:
    """A typed PRNG key from an int seed (``jax.random.key``) or an existing key."""
    if isinstance(seed_or_key, (int, np.integer)) and not isinstance(seed_or_key, bool):
        return jax.random.key(int(seed_or_key))
    return seed_or_key


def stream(parent: int | jax.Array, name: str) -> jax.Array:
    """The key of stream ``name`` under ``parent`` (an int seed or a key)."""
    if name not in STREAM_IDS:
        raise ValueError(f"unknown random stream {name!r}; streams are {STREAM_NAMES}")
    return jax.random.fold_in(as_key(parent), STREAM_IDS[name])
