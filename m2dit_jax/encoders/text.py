"""Caption encoders behind one small interface.

Every text encoder maps a list of captions to ``(embeds (N, text_len, dim) float32,
mask (N, text_len) bool)``; True in the mask marks real tokens. The CogVideoX T5 encoder lives in
``m2dit_jax.encoders.t5``; ``HashedWordEncoder`` is the dependency-free encoder the CPU demo and
tests use: fixed pseudo-random word vectors (seeded by a stable hash of the word) plus a
sinusoidal word-position code, so captions over a small vocabulary get distinct, deterministic
embeddings with no weights to download or train.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


class TextEncoder(Protocol):
    text_len: int
    dim: int

    def encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(N,) captions -> (embeds (N, text_len, dim) float32, mask (N, text_len) bool)."""
        ...


def tokenize_words(caption: str) -> list[str]:
    """Lower-cased alphanumeric words of a caption."""
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    return _WORD.findall(caption.lower())


class HashedWordEncoder:
    """Deterministic word-vector encoder: (N,) captions -> (N, text_len, dim)."""

    def __init__(self, text_len: int = 8, dim: int = 32, seed: int = 0):
        if text_len <= 0 or dim <= 0 or dim % 2:
            raise ValueError(f"text_len must be > 0 and dim even and > 0, got {text_len}, {dim}")
        self.text_len, self.dim, self.seed = text_len, dim, seed
        self._cache: dict[str, np.ndarray] = {}
        pos = np.arange(text_len)[:, None]
        freq = 1.0 / (100.0 ** (np.arange(dim // 2) / (dim // 2)))
        self._positions = 0.5 * np.concatenate([np.sin(pos * freq), np.cos(pos * freq)], axis=1)

    def word_vector(self, word: str) -> np.ndarray:
        if word not in self._cache:
            rng = np.random.default_rng([self.seed, zlib.crc32(word.encode("utf-8"))])
            self._cache[word] = rng.standard_normal(self.dim) / np.sqrt(self.dim) * 4.0
        return self._cache[word]

    def encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        embeds = np.zeros((len(captions), self.text_len, self.dim), np.float32)
        mask = np.zeros((len(captions), self.text_len), bool)
        for n, caption in enumerate(captions):
            words = tokenize_words(caption)[: self.text_len]
            if not words:
                raise ValueError(f"caption {n} is empty: {caption!r}")
            for j, w in enumerate(words):
                embeds[n, j] = self.word_vector(w) + self._positions[j]
            mask[n, : len(words)] = True
        return embeds, mask
