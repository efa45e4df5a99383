"""The pluggable encoders of ``SamplingPipeline``: one text side, one video side.

Text (``TextSide``): ``encode(captions) -> (N, T, D)`` float32 embeddings, ``empty()`` -> the
embedding a scene without a negative caption gets, ``release()`` frees the weights.

- ``HashedText``: the demo's ``HashedWordEncoder``; the empty negative is all zeros.
- ``T5Text``: CogVideoX's T5 + tokenizer (``m2dit_jax.encoders.t5``), loaded lazily on first
  use; the empty negative is the encoding of ``""``, as the release and diffusers do.

Video (``VideoSide``): ``latent_shape(frames, h, w)``, ``encode(scenes uint8 (N, F, H, W, 3),
key=None) -> latents (N, F', h, w, C)`` (``key``: draw from the posterior instead of its
mode), ``decode(latents (N, F', h, w, C)) -> float32 video in [-1, 1]``. Each of the N scenes
is encoded / decoded on its own, one at a time (nothing leaks across a cut, memory of one
scene).

- ``PixelVideo``: the CPU demo's pixel codecs: the lossless space-to-depth fold, or the fold
  plus a learned conv codec (``ConvAutoencoder``).
- ``VAEVideo``: the CogVideoX 3D VAE (``m2dit_jax.encoders.vae``), optional spatial tiling.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from m2dit_jax.encoders.pixel import SpaceToDepthAutoencoder
from m2dit_jax.encoders.text import HashedWordEncoder


# ---------------------------------------------------------------------- text
class HashedText:
    """``HashedWordEncoder`` behind the pipeline's text interface."""

    kind = "hashed"

    def __init__(self, encoder: HashedWordEncoder):
        self.encoder = encoder
        self.text_len, self.dim = encoder.text_len, encoder.dim

    def encode(self, captions: Sequence[str]) -> np.ndarray:
        return np.asarray(self.encoder.encode(list(captions))[0], np.float32)

    def empty(self) -> np.ndarray:
        return np.zeros((self.text_len, self.dim), np.float32)

    def release(self) -> None:  # nothing to free
        pass


class T5Text:
    """The T5 text encoder of a CogVideoX pipeline folder, loaded on first use.

    ``loader()`` returns a ``T5TextEncoder``; ``release()`` drops it (the next ``encode``
    loads it again), so the 4.7B-parameter encoder need not stay resident while sampling.
    """

    kind = "t5"

    def __init__(self, loader: Callable[[], Any], *, text_len: int, dim: int):
        self._loader, self._encoder = loader, None
        self.text_len, self.dim = int(text_len), int(dim)
        self.loads = 0

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = self._loader()
            self.loads += 1
            if (self._encoder.text_len, self._encoder.dim) != (self.text_len, self.dim):
                raise ValueError(
                    f"the T5 encoder gives {self._encoder.text_len} tokens x {self._encoder.dim}"
                    f" but the transformer expects {self.text_len} x {self.dim}"
                )
        return self._encoder

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def encode(self, captions: Sequence[str]) -> np.ndarray:
        return np.asarray(self.encoder.encode(list(captions))[0], np.float32)

    def empty(self) -> np.ndarray:
        return self.encode([""])[0]

    def release(self) -> None:
        self._encoder = None


def as_text_side(encoder: Any) -> Any:
    if isinstance(encoder, (HashedText, T5Text)):
        return encoder
    if isinstance(encoder, HashedWordEncoder):
        return HashedText(encoder)
    if hasattr(encoder, "tokenizer") and hasattr(encoder, "encode"):  # a T5TextEncoder
        return T5Text(lambda: encoder, text_len=encoder.text_len, dim=encoder.dim)
    raise ValueError(f"unsupported text encoder {type(encoder).__name__}")


# ---------------------------------------------------------------------- video
class PixelVideo:
    """``SpaceToDepthAutoencoder`` or ``ConvAutoencoder`` (the fold + a learned conv codec)
    behind the pipeline's video interface."""

    def __init__(self, autoencoder: Any):
        self.autoencoder = autoencoder
        self.kind = getattr(autoencoder, "kind", "space_to_depth")
        self.latent_channels = autoencoder.latent_channels

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return self.autoencoder.latent_shape(frames, height, width)

    def encode(self, scenes: np.ndarray, key: jax.Array | None = None) -> np.ndarray:
        del key  # deterministic: there is no posterior to sample
        return self.autoencoder.encode(np.asarray(scenes))

    def decoded_frames(self, latent_frames: int) -> int:
        """Pixel frames that ``latent_frames`` latent frames decode to."""
        return latent_frames * self.autoencoder.patch_t

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return self.autoencoder.to_pixels(latents)

    def release(self) -> None:
        pass


class VAEVideo:
    """The CogVideoX VAE behind the pipeline's video interface (jitted, scene by scene)."""

    kind = "cogvideox_vae"

    def __init__(self, vae: Any, *, tiling: Any = None, mesh: jax.sharding.Mesh | None = None):
        from flax import nnx

        self.vae, self.tiling = vae, tiling
        self.latent_channels = vae.config.latent_channels
        self.ratio = vae.config.spatial_ratio
        graphdef, state = nnx.split(vae)
        if mesh is not None:  # one scene at a time: weights replicated on every device
            state = jax.device_put(
                state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            )
        self._graphdef, self._state = graphdef, state

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        if frames < 1 or (frames - 1) % self.vae.config.temporal_compression_ratio:
            raise ValueError(
                f"frames={frames}: the CogVideoX VAE needs 1 + "
                f"{self.vae.config.temporal_compression_ratio}k frames per scene (e.g. 49)"
            )
        if height % self.ratio or width % self.ratio:
            raise ValueError(
                f"{height}x{width} is not a multiple of the VAE's {self.ratio}x compression"
            )
        return (
            self.vae.config.latent_frames(frames),
            height // self.ratio,
            width // self.ratio,
            self.latent_channels,
        )

    @functools.cached_property
    def _encode(self):
        graphdef, tiling = self._graphdef, self.tiling

        def run(state, clip, key, sample):
            from flax import nnx

            from m2dit_jax.encoders.vae import pixels_to_unit

            model = nnx.merge(graphdef, state)
            return model.encode(pixels_to_unit(clip), key=key if sample else None, tiling=tiling)

        return jax.jit(run, static_argnums=3)

    @functools.cached_property
    def _decode(self):
        graphdef, tiling = self._graphdef, self.tiling

        def run(state, latents):
            from flax import nnx

            return nnx.merge(graphdef, state).decode(latents, tiling=tiling)

        return jax.jit(run)

    def encode(self, scenes: np.ndarray, key: jax.Array | None = None) -> np.ndarray:
        scenes = np.asarray(scenes)
        out = []
        for i in range(len(scenes)):
            k = jax.random.fold_in(key, i) if key is not None else jax.random.key(0)
            out.append(np.asarray(self._encode(self._state, scenes[i : i + 1], k, key is not None)))
        return np.concatenate(out)

    def decoded_frames(self, latent_frames: int) -> int:
        """Pixel frames that ``latent_frames`` latent frames decode to (the decoder's shape,
        traced without running it: 13 -> 49, 3 -> 9, 2 -> 8; only odd latent counts give back
        the 4k+1 frames they were encoded from)."""
        c = self.latent_channels
        spec = jax.ShapeDtypeStruct((1, int(latent_frames), 2, 2, c), jnp.float32)
        return int(jax.eval_shape(self._decode, self._state, spec).shape[1])

    def decode(self, latents: np.ndarray) -> np.ndarray:
        lat = jnp.asarray(latents, jnp.float32)
        return np.concatenate(
            [np.asarray(self._decode(self._state, lat[i : i + 1])) for i in range(lat.shape[0])]
        )

    def release(self) -> None:
        pass


def as_video_side(autoencoder: Any, **kwargs: Any) -> Any:
    if isinstance(autoencoder, (PixelVideo, VAEVideo)):
        return autoencoder
    from m2dit_jax.encoders.conv_autoencoder import ConvAutoencoder

    if isinstance(autoencoder, (SpaceToDepthAutoencoder, ConvAutoencoder)):
        return PixelVideo(autoencoder)
    if hasattr(autoencoder, "encode_moments"):  # a CogVideoXVAE
        return VAEVideo(autoencoder, **kwargs)
    raise ValueError(f"unsupported video autoencoder {type(autoencoder).__name__}")


def unit_to_uint8(video: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255]: round((x + 1) * 127.5), clipped."""
    return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def unit_to_float01(video: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> float32 [0, 1] as diffusers' video processor does (x / 2 + 0.5, clamp)."""
    return np.clip(np.asarray(video, np.float32) / 2 + 0.5, 0.0, 1.0)
