"""Captions in, video frames out: the sampling pipeline behind ``launch.sample`` and the demo.

``SamplingPipeline`` wraps a model with its text encoder and pixel autoencoder:

- ``generate(script)``: the first ``num_scenes`` scenes are sampled jointly (mask 1); scripts
  with more scenes continue with ``extend`` one scene at a time (mask 2, a sliding window of
  ``window - 1`` condition scenes), so any number of scenes works;
- ``extend(video, captions_so_far, script)``: encodes an existing video scene by scene and
  appends the script's scenes.

Videos are (S*F, H, W, 3) uint8 at the model's pixel size; scene i is frames [i*F, (i+1)*F).
Negative captions: a scene without one uses all-zero text embeddings (the encoder's "empty
caption"); guidance_scale <= 1 disables classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from m2dit_jax.diffusion import CogVideoXSchedule
from m2dit_jax.diffusion.generation import extend, generate
from m2dit_jax.inference.script import SamplerOptions, SampleScript
from m2dit_jax.rng import stream


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    """Pixel geometry of one scene and the number of scenes the model samples jointly."""

    num_scenes: int
    frames: int
    height: int
    width: int
    fps: int = 4


class SamplingPipeline:
    """Model + text encoder + pixel autoencoder -> multi-scene videos."""

    def __init__(
        self,
        model: Any,
        text_encoder: Any,
        autoencoder: Any,
        video: VideoSpec,
        *,
        schedule: CogVideoXSchedule | None = None,
    ):
        self.model, self.text_encoder, self.autoencoder = model, text_encoder, autoencoder
        self.video = video
        self.schedule = schedule if schedule is not None else CogVideoXSchedule.create()
        self.latent_shape = autoencoder.latent_shape(video.frames, video.height, video.width)

    @classmethod
    def from_bundle(cls, bundle: Any, **kwargs: Any) -> SamplingPipeline:
        v = bundle.video
        spec = VideoSpec(v["num_scenes"], v["frames"], v["height"], v["width"], v.get("fps", 4))
        schedule = kwargs.pop("schedule", None)
        if schedule is None and bundle.meta.get("schedule"):
            schedule = CogVideoXSchedule.create(**bundle.meta["schedule"])
        return cls(bundle.model, bundle.text_encoder, bundle.autoencoder, spec, schedule=schedule)

    # ------------------------------------------------------------------ encoding
    def encode_captions(self, captions: Sequence[str] | Sequence[Sequence[str]]) -> jax.Array:
        """(S,) captions -> (1, S*T, D); a list of B caption lists -> (B, S*T, D)."""
        batch = [captions] if captions and isinstance(captions[0], str) else list(captions)
        counts = {len(c) for c in batch}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"every video needs the same non-zero number of captions: {counts}")
        flat = [c for caps in batch for c in caps]
        embeds, _ = self.text_encoder.encode(flat)
        return jnp.asarray(embeds.reshape(len(batch), -1, embeds.shape[-1]))

    def encode_negatives(self, negatives: Sequence[str | None]) -> jax.Array:
        """Per-scene negative captions (None = all-zero embeddings) -> (1, S*T, D)."""
        t, d = self.text_encoder.text_len, self.text_encoder.dim
        out = np.zeros((len(negatives), t, d), np.float32)
        given = [i for i, n in enumerate(negatives) if n is not None]
        if given:
            embeds, _ = self.text_encoder.encode([negatives[i] for i in given])
            out[given] = embeds
        return jnp.asarray(out.reshape(1, -1, d))

    def encode_video(self, video: np.ndarray) -> jax.Array:
        """(S*F, H, W, 3) uint8 -> latents (1, S*F', h, w, C), each scene encoded on its own."""
        scenes = self.split_video(video)
        latents = self.autoencoder.encode(scenes)  # scenes as a batch: no cross-scene leakage
        return jnp.asarray(latents.reshape(1, -1, *latents.shape[2:]))

    def decode_latents(self, latents: jax.Array) -> np.ndarray:
        """(B, S*F', h, w, C) -> (B, S*F, H, W, 3) uint8, scene by scene."""
        lat = np.asarray(jax.device_get(latents), np.float32)
        b, f = lat.shape[0], self.latent_shape[0]
        scenes = lat.reshape(-1, f, *lat.shape[2:])
        video = self.autoencoder.decode(scenes)
        return video.reshape(b, -1, *video.shape[2:])

    def split_video(self, video: np.ndarray) -> np.ndarray:
        """(S*F, H, W, 3) -> (S, F, H, W, 3), checking the model's frame size."""
        v = self.video
        video = np.asarray(video)
        if video.ndim != 4 or video.shape[1:] != (v.height, v.width, 3):
            raise ValueError(
                f"video must be (frames, {v.height}, {v.width}, 3) for this model, "
                f"got {video.shape}"
            )
        if video.shape[0] == 0 or video.shape[0] % v.frames:
            raise ValueError(
                f"video has {video.shape[0]} frames: not a whole number of {v.frames}-frame scenes"
            )
        return video.reshape(-1, v.frames, *video.shape[1:])

    # ------------------------------------------------------------------ sampling
    def _options(self, sampler: SamplerOptions) -> dict[str, Any]:
        return dict(
            num_steps=sampler.steps,
            guidance_scale=sampler.guidance_scale,
            sampler=sampler.name,
            schedule=self.schedule,
        )

    def sample_latents(
        self,
        captions: Sequence[Sequence[str]],
        sampler: SamplerOptions,
        negatives: Sequence[str | None] | None = None,
    ) -> jax.Array:
        """B videos of S = num_scenes scenes sampled jointly -> latents (B, S*F', h, w, C)."""
        s = self.video.num_scenes
        if any(len(c) != s for c in captions):
            raise ValueError(f"this model samples {s} scenes jointly; give {s} captions per video")
        return generate(
            self.model,
            self.encode_captions(captions),
            num_scenes=s,
            latent_shape=self.latent_shape,
            negative_text_embeds=self.encode_negatives(negatives or [None] * s),
            seed=sampler.seed,
            **self._options(sampler),
        )

    def extend_latents(
        self,
        latents: jax.Array,
        previous: Sequence[Sequence[str]],
        new: Sequence[Sequence[str]],
        sampler: SamplerOptions,
        *,
        window: int | None = None,
        negatives: Sequence[str | None] | None = None,
        seed_offset: int = 0,
    ) -> jax.Array:
        """Appends K scenes to B videos' latents, one extension step per scene.

        ``previous``: per video, the captions of the scenes in ``latents``; ``new``: per video,
        K captions; ``negatives``: K negative captions shared by the batch (None = zeros).
        """
        window = window or self.video.num_scenes
        text = self.encode_captions(previous)
        key = stream(sampler.seed, "extension")
        num_new = {len(n) for n in new}
        if len(new) != latents.shape[0] or len(num_new) != 1:
            raise ValueError("give every video the same number of new captions")
        negatives = negatives or [None] * num_new.pop()
        for k, negative in enumerate(negatives):
            caption_embeds = self.encode_captions([[n[k]] for n in new])  # (B, T, D)
            neg = None if negative is None else self.encode_negatives([negative])[0]
            latents = extend(
                self.model,
                latents,
                caption_embeds,
                scene_text=text,
                window=window,
                negative_text_embeds=neg,
                seed=jax.random.fold_in(key, seed_offset + k),
                **self._options(sampler),
            )
            text = jnp.concatenate([text, caption_embeds], axis=1)
        return latents

    def generate(self, script: SampleScript) -> np.ndarray:
        """All scenes of ``script`` -> (S*F, H, W, 3) uint8 video."""
        s = self.video.num_scenes
        if len(script.scenes) < s:
            raise ValueError(
                f"this model samples {s} scenes jointly; the script has {len(script.scenes)}. "
                f"Give at least {s} scenes (more are added by scene extension)."
            )
        captions, negatives = script.captions, script.negatives
        latents = self.sample_latents([captions[:s]], script.sampler, negatives[:s])
        if len(captions) > s:
            latents = self.extend_latents(
                latents,
                [captions[:s]],
                [captions[s:]],
                script.sampler,
                window=script.window,
                negatives=negatives[s:],
                seed_offset=1,
            )
        return self.decode_latents(latents)[0]

    def extend(
        self, video: np.ndarray, previous_captions: Sequence[str], script: SampleScript
    ) -> np.ndarray:
        """Appends ``script``'s scenes to ``video`` (whose scenes had ``previous_captions``)."""
        scenes = self.split_video(video)
        if len(previous_captions) != len(scenes):
            raise ValueError(
                f"the video has {len(scenes)} scenes but {len(previous_captions)} captions were "
                "given for them"
            )
        latents = self.extend_latents(
            self.encode_video(video),
            [list(previous_captions)],
            [script.captions],
            script.sampler,
            window=script.window,
            negatives=script.negatives,
        )
        return self.decode_latents(latents)[0]
