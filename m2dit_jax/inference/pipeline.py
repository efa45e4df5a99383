"""Captions in, video frames out: the one sampling pipeline behind ``launch.sample``, the demo
and the Python API, for every model format.

``SamplingPipeline`` = a transformer + a text side + a video side (``m2dit_jax.inference.codecs``):

- ``SamplingPipeline.from_pretrained(path, dtype=..., mesh=...)`` loads a diffusers CogVideoX
  pipeline folder (T5 + tokenizer, VAE, transformer, scheduler; optional ``m2dit.json``) with
  our Flax ports, or an inference bundle (``launch.export`` of a pixel-space run: hashed text
  encoder + space-to-depth). The transformer is streamed onto the mesh; T5 is loaded on
  first use and can be released after the captions are encoded (``release_text_encoder``).
- ``generate(script, noise=None)``: the first ``num_scenes`` scenes are sampled jointly
  (mask 1) from ``noise`` (explicit initial latents, or drawn from the script's seed); scripts
  with more scenes continue with scene extension one scene at a time (mask 2, a sliding
  window of ``window - 1`` condition scenes), so any number of scenes works;
- ``extend(video, captions_so_far, script, noise=None)``: encodes an existing video scene by
  scene and appends the script's scenes (``noise``: the new scenes' initial latents).

Both take ``guidance_schedule`` (one CFG scale per sampler step), ``callback(step, timestep,
latents)`` (after every denoising step) and ``cache_conditions`` (the conditions' keys/values
computed once per extension: only for models extended with the causal-condition mask,
``extension_mask="causal_conditions"``, which ``from_pretrained`` reads from what
``launch.export`` recorded; refused otherwise). The denoising loop is
``m2dit_jax.diffusion.sample_from_noise``, the one behind ``generate`` / ``extend`` too.

Each scene's caption is encoded on its own; a scene without a negative caption gets the text
side's empty embedding (T5: the encoding of ``""``, as diffusers and the release; hashed: all
zeros). CFG is batched ([negative; positive]); ``dynamic_cfg`` is CogVideoX's
``use_dynamic_cfg``. Conditions of an extension enter exactly clean (``condition_mode=
"clean"``, what training does) or, following the release (``"release"``, MASK2DIT.md §8), as
a posterior sample of the VAE plus ``add_noise`` at t = 0. Videos are (S*F, H, W, 3) uint8
(``output="float"``: float32 in [0, 1], what diffusers' ``output_type="np"`` returns); scene
i is frames [i*F, (i+1)*F); each scene is VAE-decoded on its own.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from m2dit_jax.diffusion import CogVideoXSchedule, initial_noise, sample_from_noise
from m2dit_jax.inference import codecs
from m2dit_jax.inference.script import SamplerOptions, SampleScript
from m2dit_jax.layout import CAUSAL_CONDITIONS, extension_mask
from m2dit_jax.rng import stream

CONDITION_MODES = ("clean", "release")
EXTENSION_MASKS = ("mask2dit", CAUSAL_CONDITIONS)
OUTPUTS = ("uint8", "float")
StepCallback = Callable[[int, int, np.ndarray], None]


def extension_key(seed: int | jax.Array, step: int) -> jax.Array:
    """The key of extension step ``step`` under ``seed``: the new scene's initial noise
    (``initial_noise(key, window shape)``, when not given explicitly) and, with
    ``condition_mode="release"``, the conditions' ``add_noise`` draw
    (``normal(stream(key, "condition_noise"), conditions' shape)``)."""
    return jax.random.fold_in(stream(seed, "extension"), step)


def posterior_key(seed: int | jax.Array) -> jax.Array:
    """The key of the release-mode posterior samples when an existing video is extended:
    scene i of the video draws ``normal(fold_in(key, i), its latent shape)`` (``VAEVideo``)."""
    return stream(stream(seed, "extension"), "condition_posterior")


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    """Pixel geometry of one scene and the number of scenes the model samples jointly."""

    num_scenes: int
    frames: int
    height: int
    width: int
    fps: int = 4


class SamplingPipeline:
    """Transformer + text side + video side -> multi-scene videos.

    ``model`` may be None with ``model_loader`` (a zero-argument callable) to load the
    transformer on first use. ``text_encoder`` / ``autoencoder`` are any encoder of
    ``m2dit_jax.inference.codecs`` (or the raw ``HashedWordEncoder`` /
    ``SpaceToDepthAutoencoder`` / ``T5TextEncoder`` / ``CogVideoXVAE``, wrapped here).
    ``extension_mask``: the attention of scene extension, "mask2dit" (mask 1, the release) or
    "causal_conditions"; None = what ``meta["cond_mask_mode"]`` records (else "mask2dit").
    """

    def __init__(
        self,
        model: Any,
        text_encoder: Any,
        autoencoder: Any,
        video: VideoSpec,
        *,
        schedule: CogVideoXSchedule | None = None,
        mesh: jax.sharding.Mesh | None = None,
        condition_mode: str = "clean",
        default_sampler: str = "ddim",
        progress: bool = False,
        model_loader: Callable[[], Any] | None = None,
        meta: dict | None = None,
        extension_mask: str | None = None,
    ):
        if model is None and model_loader is None:
            raise ValueError("give a model or a model_loader")
        if condition_mode not in CONDITION_MODES:
            raise ValueError(
                f"condition_mode must be one of {CONDITION_MODES}, got {condition_mode!r}"
            )
        if extension_mask is not None and extension_mask not in EXTENSION_MASKS:
            raise ValueError(
                f"extension_mask must be one of {EXTENSION_MASKS} (or None: what the model "
                f"records), got {extension_mask!r}"
            )
        self._model, self._model_loader = model, model_loader
        self.text_encoder = codecs.as_text_side(text_encoder)
        self.autoencoder = codecs.as_video_side(autoencoder)
        self.schedule = schedule if schedule is not None else CogVideoXSchedule.create()
        self.mesh = mesh
        self.condition_mode = condition_mode
        self.default_sampler = default_sampler
        self.progress = progress
        self.meta = dict(meta or {})
        # The extension attention: what the model was trained with (launch.export records
        # diffusion.cond_mask_mode in m2dit.json's / the bundle's "source"), unless given.
        recorded = self.meta.get("cond_mask_mode") or "mask2dit"
        self.extension_mask = extension_mask or recorded
        self.extension_mask_recorded = self.meta.get("cond_mask_mode")
        self._captions: dict[str, np.ndarray] = {}
        self._empty: np.ndarray | None = None
        self.set_video(**dataclasses.asdict(video))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_bundle(cls, bundle: Any, **kwargs: Any) -> SamplingPipeline:
        v = bundle.video
        spec = VideoSpec(v["num_scenes"], v["frames"], v["height"], v["width"], v.get("fps", 4))
        schedule = kwargs.pop("schedule", None)
        if schedule is None and bundle.meta.get("schedule"):
            schedule = CogVideoXSchedule.create(**bundle.meta["schedule"])
        kwargs.pop("tiling", None)  # pixel bundles have no VAE
        return cls(
            bundle.model,
            bundle.text_encoder,
            bundle.autoencoder,
            spec,
            schedule=schedule,
            meta={
                "format": "m2dit_bundle",
                "path": bundle.path,
                "cond_mask_mode": (bundle.meta.get("source") or {}).get("cond_mask_mode"),
            },
            **kwargs,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        dtype: str = "bfloat16",
        mesh: jax.sharding.Mesh | None = None,
        tiling: Any = None,
        attention_backend: str = "auto",
        scan_layers: bool | None = None,
        lazy: bool = True,
        lora: str | None = None,
        lora_scale: float = 1.0,
        **kwargs: Any,
    ) -> SamplingPipeline:
        """A diffusers CogVideoX pipeline folder (or an inference bundle) -> pipeline.

        Args:
          dtype: "bfloat16" (weights and compute; accelerators) or "float32" (parity, CPU).
            Ignored for bundles (their config says).
          mesh: transformer parameters are placed with their logical shardings as they are
            read; the VAE and T5 weights are replicated on it.
          tiling: a ``SpatialTiling`` for VAE encode/decode of large frames.
          attention_backend, scan_layers: transformer runtime settings (scan: default on for
            more than 4 layers, one compiled block).
          lazy: load the transformer and T5 on first use (T5 first, then it can be released
            before the transformer arrives); False loads everything now.
          lora, lora_scale: a diffusers-layout CogVideoX LoRA file (ours from ``launch.export
            --lora-only`` or a third party's; ``m2dit_jax.convert.lora``) merged into the
            transformer's weights at ``lora_scale`` times the file's own scale when it loads.
          kwargs: ``condition_mode``, ``progress``, ``extension_mask`` (see the class).
        """
        from m2dit_jax.inference import pipeline_folder as pf

        path = os.fspath(path)
        if lora:
            from m2dit_jax.convert.lora import merge_lora_into_model, read_lora_file

            lora_file = read_lora_file(lora)  # a missing / unreadable file fails before loading
        if not pf.is_pipeline_folder(path) and os.path.isfile(os.path.join(path, "config.json")):
            from m2dit_jax.inference.bundle import load_bundle

            bundle = load_bundle(path)
            if lora:
                merge_lora_into_model(bundle.model, lora_file, lora_scale)
            return cls.from_bundle(bundle, mesh=mesh, **kwargs)
        folder = pf.read_pipeline_folder(path)
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
        schedule, default_sampler = pf.schedule_from_scheduler_config(
            folder.scheduler_config, where=folder.part("scheduler")
        )
        meta = folder.m2dit or {}
        positions = meta.get("positions", "diffusers")
        tcfg = folder.transformer_config
        num_layers = int(tcfg.get("num_layers", 30))
        if scan_layers is None:
            scan_layers = num_layers > 4
        text_len = folder.text_len
        if int(tcfg.get("max_text_seq_length", 226)) != text_len:
            raise ValueError(
                f"{folder.part('transformer')}/config.json: max_text_seq_length "
                f"{tcfg.get('max_text_seq_length')} != text_len {text_len} of m2dit.json"
            )

        def load_transformer():
            from m2dit_jax.convert import load_diffusers_transformer

            overrides = dict(
                dtype=dtype,
                param_dtype=dtype,
                scan_layers=scan_layers,
                attention_backend=attention_backend,
            )
            params = inspect.signature(load_diffusers_transformer).parameters
            if "positions_convention" in params:
                overrides["positions_convention"] = positions
            else:
                overrides["sincos_temporal"] = "stretch" if positions == "release" else "continuous"
            try:
                model = load_diffusers_transformer(
                    folder.part("transformer"), mesh=mesh, **overrides
                )
            except ValueError as err:
                raise ValueError(f"{folder.part('transformer')}: {err}") from err
            if lora:
                merge_lora_into_model(model, lora_file, lora_scale)
            return model

        def load_text():
            from m2dit_jax.encoders.t5 import T5TextEncoder

            try:
                return T5TextEncoder.from_pretrained(
                    folder.path, text_len=text_len, dtype=jdtype, param_dtype=jdtype, mesh=mesh
                )
            except ValueError as err:
                raise ValueError(f"{folder.part('text_encoder')} / tokenizer: {err}") from err

        from m2dit_jax.encoders.vae import load_diffusers_vae

        try:
            vae = load_diffusers_vae(folder.part("vae"), dtype=jdtype, param_dtype=jdtype)
        except ValueError as err:
            raise ValueError(f"{folder.part('vae')}: {err}") from err
        text = codecs.T5Text(
            load_text, text_len=text_len, dim=int(folder.text_encoder_config.get("d_model", 4096))
        )
        if int(tcfg.get("text_embed_dim", 4096)) != text.dim:
            raise ValueError(
                f"{folder.part('text_encoder')}/config.json: d_model {text.dim} != the "
                f"transformer's text_embed_dim {tcfg.get('text_embed_dim')}"
            )
        if int(tcfg.get("in_channels", 16)) != vae.config.latent_channels:
            raise ValueError(
                f"{folder.part('vae')}/config.json: latent_channels "
                f"{vae.config.latent_channels} != the transformer's in_channels "
                f"{tcfg.get('in_channels')}"
            )
        ratio = vae.config.spatial_ratio
        spec = VideoSpec(
            num_scenes=int(meta.get("num_scenes", 1)),
            frames=int(meta.get("frames", tcfg.get("sample_frames", 49))),
            height=int(meta.get("height", int(tcfg.get("sample_height", 60)) * ratio)),
            width=int(meta.get("width", int(tcfg.get("sample_width", 90)) * ratio)),
            fps=int(meta.get("fps", pf.DEFAULT_FPS)),
        )
        pipe = cls(
            None,
            text,
            codecs.VAEVideo(vae, tiling=tiling, mesh=mesh),
            spec,
            schedule=schedule,
            mesh=mesh,
            default_sampler=default_sampler,
            model_loader=load_transformer,
            meta={
                "format": "diffusers_pipeline",
                "path": folder.path,
                "m2dit": meta,
                "positions": positions,
                "dtype": dtype,
                "cond_mask_mode": (meta.get("source") or {}).get("cond_mask_mode"),
            },
            **kwargs,
        )
        if not lazy:
            text.encoder  # noqa: B018 - loads it
            pipe.model  # noqa: B018
        return pipe

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._model_loader()
        return self._model

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    def set_video(self, **changes: Any) -> VideoSpec:
        """Changes the scene geometry (``frames``, ``height``, ``width``, ``num_scenes``,
        ``fps``) after checking it against the video side; returns the new spec."""
        current = getattr(self, "video", None)
        spec = dataclasses.replace(current, **changes) if current else VideoSpec(**changes)
        for key in ("num_scenes", "frames", "height", "width", "fps"):
            value = getattr(spec, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"video {key} must be a positive int, got {value!r}")
        self.latent_shape = tuple(
            self.autoencoder.latent_shape(spec.frames, spec.height, spec.width)
        )
        self.video = spec
        return spec

    # ------------------------------------------------------------------ scene lengths
    def latent_frames_of(self, frames: int, *, where: str = "scene") -> int:
        """Latent frames of a ``frames``-pixel-frame scene. The count must fit the
        autoencoder's frame rule and decode back to ``frames`` (CogVideoX VAE: 8k+1 frames,
        e.g. 1, 9, 17, 49: an even latent count decodes to 4 frames more than 4k+1)."""
        v = self.video
        try:
            latent = int(self.autoencoder.latent_shape(frames, v.height, v.width)[0])
        except ValueError as err:
            raise ValueError(f"{where}: {frames} frames do not fit the autoencoder: {err}") from err
        back = self.autoencoder.decoded_frames(latent)
        if back != frames:
            raise ValueError(
                f"{where}: {frames} frames do not fit the autoencoder: they encode to {latent} "
                f"latent frames, which decode to {back} frames (pick a length that round-trips, "
                "e.g. 8k+1 frames for the CogVideoX VAE)"
            )
        return latent

    def scene_pixel_frames(self, script: SampleScript) -> tuple[int, ...]:
        """Pixel frames of each scene of ``script``: its ``frames``, its ``seconds`` at the
        video's fps snapped to the nearest count the autoencoder accepts (ties: the shorter),
        or the model's default scene length."""
        out = []
        for i, scene in enumerate(script.scenes, start=1):
            where = f"scene {i} ({scene.caption!r})"
            if scene.frames is not None:
                self.latent_frames_of(scene.frames, where=where)
                out.append(int(scene.frames))
            elif scene.seconds is not None:
                wanted = max(1, round(scene.seconds * self.video.fps))
                for delta in range(0, 4 * self.latent_shape[0] + 8):
                    ok = [n for n in (wanted - delta, wanted + delta) if n >= 1 and self._fits(n)]
                    if ok:
                        out.append(ok[0])
                        break
                else:
                    raise ValueError(f"{where}: no frame count near {wanted} fits the autoencoder")
            else:
                out.append(self.video.frames)
        return tuple(out)

    def _fits(self, frames: int) -> bool:
        try:
            self.latent_frames_of(frames)
        except ValueError:
            return False
        return True

    def scene_latent_frames(self, script: SampleScript) -> tuple[int, ...] | None:
        """Latent frames of each scene of ``script``; None when every scene has the model's
        default length (the equal layout)."""
        if not script.has_lengths:
            return None
        counts = tuple(self.latent_frames_of(f) for f in self.scene_pixel_frames(script))
        return None if set(counts) == {self.latent_shape[0]} else counts

    # ------------------------------------------------------------------ text
    def prepare_captions(self, captions: Sequence[str | None]) -> None:
        """Encodes (and caches) every caption not seen yet, in one batch; None = the empty
        negative."""
        todo = sorted({c for c in captions if c is not None and c not in self._captions})
        if todo:
            for caption, embeds in zip(todo, self.text_encoder.encode(todo), strict=True):
                self._captions[caption] = embeds
        if any(c is None for c in captions) and self._empty is None:
            self._empty = self.text_encoder.empty()

    def release_text_encoder(self) -> None:
        """Frees the text encoder's weights (cached caption embeddings stay)."""
        self.text_encoder.release()

    def _embed(self, caption: str | None) -> np.ndarray:
        self.prepare_captions([caption])
        return self._empty if caption is None else self._captions[caption]

    def encode_captions(self, captions: Sequence[str] | Sequence[Sequence[str]]) -> jax.Array:
        """(S,) captions -> (1, S*T, D); a list of B caption lists -> (B, S*T, D)."""
        batch = [captions] if captions and isinstance(captions[0], str) else list(captions)
        counts = {len(c) for c in batch}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"every video needs the same non-zero number of captions: {counts}")
        self.prepare_captions([c for caps in batch for c in caps])
        rows = [np.concatenate([self._embed(c) for c in caps]) for caps in batch]
        return jnp.asarray(np.stack(rows))

    def encode_negatives(self, negatives: Sequence[str | None]) -> jax.Array:
        """Per-scene negative captions (None = the empty negative) -> (1, S*T, D)."""
        self.prepare_captions(list(negatives))
        return jnp.asarray(np.concatenate([self._embed(n) for n in negatives])[None])

    # ------------------------------------------------------------------ video
    def split_video(self, video: np.ndarray, scene_frames: Sequence[int] | None = None):
        """(S*F, H, W, 3) -> (S, F, H, W, 3), checking the model's frame size; with
        ``scene_frames`` (pixel frames per scene) a list of (F_i, H, W, 3) scenes."""
        v = self.video
        video = np.asarray(video)
        if video.ndim != 4 or video.shape[1:] != (v.height, v.width, 3):
            raise ValueError(
                f"video must be (frames, {v.height}, {v.width}, 3) for this model, "
                f"got {video.shape}"
            )
        if scene_frames is not None:
            counts = [int(f) for f in scene_frames]
            if min(counts) < 1 or sum(counts) != video.shape[0]:
                raise ValueError(
                    f"scene_frames {counts} do not add up to the video's {video.shape[0]} frames"
                )
            return np.split(video, np.cumsum(counts)[:-1])
        if video.shape[0] == 0 or video.shape[0] % v.frames:
            raise ValueError(
                f"video has {video.shape[0]} frames: not a whole number of {v.frames}-frame scenes"
            )
        return video.reshape(-1, v.frames, *video.shape[1:])

    def encode_video(
        self,
        video: np.ndarray,
        *,
        key: jax.Array | None = None,
        scene_frames: Sequence[int] | None = None,
    ) -> jax.Array:
        """(S*F, H, W, 3) uint8 -> latents (1, S*F', h, w, C), each scene encoded on its own;
        ``key``: a posterior sample instead of the mode (VAE only); ``scene_frames``: pixel
        frames per scene for scenes of their own lengths (scene i encoded with
        ``fold_in(key, i)``)."""
        if scene_frames is None:
            latents = self.autoencoder.encode(self.split_video(video), key)
            return jnp.asarray(latents.reshape(1, -1, *latents.shape[2:]))
        parts = []
        for i, scene in enumerate(self.split_video(video, scene_frames)):
            self.latent_frames_of(scene.shape[0], where=f"scene {i + 1}")
            k = None if key is None else jax.random.fold_in(key, i)
            parts.append(self.autoencoder.encode(scene[None], k)[0])
        return jnp.asarray(np.concatenate(parts)[None])

    def decode_latents(
        self,
        latents: jax.Array,
        *,
        output: str = "uint8",
        scene_frames: Sequence[int] | None = None,
    ) -> np.ndarray:
        """(B, S*F', h, w, C) -> (B, S*F, H, W, 3), scene by scene; ``output`` "uint8" or
        "float" (float32 in [0, 1]); ``scene_frames``: latent frames per scene for scenes of
        their own lengths (each decoded on its own)."""
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        lat = np.asarray(jax.device_get(latents), np.float32)
        if scene_frames is not None:
            counts = [int(f) for f in scene_frames]
            if lat.ndim != 5 or sum(counts) != lat.shape[1]:
                raise ValueError(f"latents {lat.shape} do not split into scenes of {counts}")
            scenes = np.split(lat, np.cumsum(counts)[:-1], axis=1)
            video = np.concatenate([self.autoencoder.decode(x) for x in scenes], axis=1)
            if output == "uint8":
                return codecs.unit_to_uint8(video)
            return codecs.unit_to_float01(video)
        b, f = lat.shape[0], self.latent_shape[0]
        if lat.ndim != 5 or lat.shape[1] % f:
            raise ValueError(f"latents {lat.shape} do not split into {f}-frame scenes")
        video = self.autoencoder.decode(lat.reshape(-1, f, *lat.shape[2:]))
        video = codecs.unit_to_uint8(video) if output == "uint8" else codecs.unit_to_float01(video)
        return video.reshape(b, -1, *video.shape[2:])

    # ------------------------------------------------------------------ sampling
    @property
    def causal_conditions(self) -> bool:
        """Whether extension runs the causal-condition attention mask."""
        return self.extension_mask == CAUSAL_CONDITIONS

    def _loop(
        self,
        sampler: SamplerOptions,
        *,
        guidance_schedule: Sequence[float] | None,
        callback: StepCallback | None,
        desc: str,
        **kwargs: Any,
    ) -> jax.Array:
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=sampler.steps - kwargs.get("start_step", 0), desc=desc, unit="step")
        try:
            return sample_from_noise(
                self.model,
                schedule=self.schedule,
                num_steps=sampler.steps,
                guidance_scale=sampler.guidance_scale,
                dynamic_cfg=sampler.dynamic_cfg,
                guidance_schedule=guidance_schedule,
                sampler=sampler.name,
                mesh=self.mesh,
                progress=(lambda: bar.update(1)) if bar is not None else None,
                callback=callback,
                **kwargs,
            )
        finally:
            if bar is not None:
                bar.close()

    def sample_latents(
        self,
        captions: Sequence[Sequence[str]],
        sampler: SamplerOptions,
        negatives: Sequence[str | None] | None = None,
        *,
        noise: Any = None,
        guidance_schedule: Sequence[float] | None = None,
        callback: StepCallback | None = None,
        scene_frames: Sequence[int] | None = None,
        start_step: int = 0,
    ) -> jax.Array:
        """B videos of S = num_scenes scenes sampled jointly -> latents (B, S*F', h, w, C).

        ``scene_frames``: the S scenes' latent frames when they differ in length (latents
        (B, F'_1+..+F'_S, h, w, C)); None = the model's scene length for every scene.
        ``noise``: explicit initial latents (B, S*F', h, w, C); default drawn from the seed.
        ``negatives``: S per-scene negative captions shared by the batch (None = empty).
        ``guidance_schedule``: one CFG scale per sampler step (instead of the sampler's
        ``guidance_scale`` / ``dynamic_cfg``). ``callback(step, timestep, latents)``: called
        after every denoising step with the latents (numpy; read-only).
        ``start_step`` > 0: partial denoising (SDEdit-style) — ``noise`` (required) holds the
        latents at ``samplers.step_timestep(self.schedule, sampler.steps, start_step)``, e.g.
        encoded videos noised with ``self.schedule.add_noise``; the sampler runs the rest.
        """
        if start_step and noise is None:
            raise ValueError(
                "start_step > 0 needs noise: the latents at that step's timestep (e.g. encoded "
                "videos noised with schedule.add_noise)"
            )
        s = self.video.num_scenes
        if any(len(c) != s for c in captions):
            raise ValueError(f"this model samples {s} scenes jointly; give {s} captions per video")
        text = self.encode_captions(captions)
        negative = jnp.broadcast_to(self.encode_negatives(negatives or [None] * s), text.shape)
        frames = s * self.latent_shape[0] if scene_frames is None else sum(scene_frames)
        shape = (len(captions), frames, *self.latent_shape[1:])
        if noise is None:
            noise = initial_noise(sampler.seed, shape)
        elif tuple(np.shape(noise)) != shape:
            raise ValueError(f"noise must be {shape} (B, S*F', h, w, C), got {np.shape(noise)}")
        return self._loop(
            sampler,
            text=text,
            negative=negative,
            noise=noise,
            num_scenes=s,
            seed=sampler.seed,
            guidance_schedule=guidance_schedule,
            callback=callback,
            desc=f"{s} scenes",
            scene_frames=None if scene_frames is None else tuple(scene_frames),
            start_step=start_step,
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
        noise: Any = None,
        cache_conditions: bool = False,
        guidance_schedule: Sequence[float] | None = None,
        callback: StepCallback | None = None,
        scene_frames: Sequence[int] | None = None,
        new_frames: Sequence[int] | None = None,
    ) -> jax.Array:
        """Appends K scenes to B videos' latents, one extension step (mask 2) per scene.

        ``scene_frames``: latent frames of the scenes in ``latents`` and ``new_frames`` of the
        K new scenes, for scenes of their own lengths (None = the model's scene length).
        ``previous``: per video, the captions of the scenes in ``latents``; ``new``: per video,
        K captions; ``negatives``: K negative captions shared by the batch (None = empty).
        ``noise``: the K new scenes' initial latents (B, K*F', h, w, C); default: step k draws
        ``initial_noise(extension_key(seed, seed_offset + k), window shape)``.
        ``cache_conditions``: the conditions' per-layer keys/values computed once per step
        instead of at every sampler step (exact only under the causal-condition mask, so it
        needs ``extension_mask == "causal_conditions"``; a ``ValueError`` otherwise).
        ``guidance_schedule`` / ``callback``: as in ``sample_latents``, for every extension.
        """
        if cache_conditions:
            self.check_cache_conditions()
        window = window or self.video.num_scenes
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(f"window must be an int >= 2 (conditions + new scene), got {window!r}")
        latents = jnp.asarray(latents, jnp.float32)
        num_new = {len(n) for n in new}
        if len(new) != latents.shape[0] or len(num_new) != 1:
            raise ValueError("give every video the same number of new captions")
        k_new = num_new.pop()
        negatives = list(negatives) if negatives is not None else [None] * k_new
        if len(negatives) != k_new:
            raise ValueError(f"{len(negatives)} negatives for {k_new} new scenes")
        f = self.latent_shape[0]
        new_counts = [f] * k_new if new_frames is None else [int(n) for n in new_frames]
        if len(new_counts) != k_new:
            raise ValueError(f"new_frames has {len(new_counts)} counts for {k_new} new scenes")
        if noise is not None:
            want = (latents.shape[0], sum(new_counts), *latents.shape[2:])
            if tuple(np.shape(noise)) != want:
                raise ValueError(
                    f"noise must be the {k_new} new scenes' initial latents {want} "
                    f"(B, K*F', h, w, C), got {np.shape(noise)}"
                )
            noise = jnp.asarray(noise, jnp.float32)
        self.prepare_captions([c for caps in [*previous, *new] for c in caps] + negatives)
        text = self.encode_captions(previous)
        t_len = self.text_encoder.text_len
        num_prior = text.shape[1] // t_len
        counts = [f] * num_prior if scene_frames is None else [int(n) for n in scene_frames]
        if len(counts) != num_prior or sum(counts) != latents.shape[1]:
            raise ValueError(
                f"latents hold {latents.shape[1]} latent frames but {num_prior} captions of "
                f"scenes with {counts} frames were given"
            )
        noise_at = 0
        for k in range(k_new):
            key = extension_key(sampler.seed, seed_offset + k)
            caption = self.encode_captions([[n[k]] for n in new])  # (B, T, D)
            num_prior = len(counts)
            num_cond = min(window - 1, num_prior)
            s = num_cond + 1
            window_frames = (*counts[num_prior - num_cond :], new_counts[k])
            cond = latents[:, sum(counts[: num_prior - num_cond]) :]
            if self.condition_mode == "release":  # add_noise at t = 0 (abar_0 < 1)
                eps = jax.random.normal(stream(key, "condition_noise"), cond.shape)
                t0 = jnp.zeros((cond.shape[0],), jnp.int32)
                cond = self.schedule.add_noise(cond, eps, t0)
            window_text = jnp.concatenate([text[:, (num_prior - num_cond) * t_len :], caption], 1)
            negative = jnp.broadcast_to(
                self.encode_negatives([negatives[k]] * s), window_text.shape
            )
            n_new = new_counts[k]
            shape = (latents.shape[0], sum(window_frames), *latents.shape[2:])
            if noise is None:
                x_init = initial_noise(key, shape)
            else:  # the conditions' part is replaced by their values before the first step
                own = noise[:, noise_at : noise_at + n_new]
                x_init = jnp.concatenate([jnp.zeros_like(cond), own], 1)
            noise_at += n_new
            ragged = len(set(window_frames)) > 1
            out = self._loop(
                sampler,
                text=window_text,
                negative=negative,
                noise=x_init,
                num_scenes=s,
                seed=key,
                generate_mask=tuple(bool(m) for m in extension_mask(s, num_cond)),
                condition_latents=jnp.concatenate(
                    [cond, jnp.zeros((cond.shape[0], n_new, *cond.shape[2:]), cond.dtype)], 1
                ),
                causal_conditions=num_cond if self.causal_conditions else 0,
                cache_conditions=cache_conditions,
                guidance_schedule=guidance_schedule,
                callback=callback,
                desc=f"extending: scene {num_prior + 1}",
                scene_frames=window_frames if ragged else None,
            )
            latents = jnp.concatenate([latents, out[:, sum(window_frames[:-1]) :]], axis=1)
            text = jnp.concatenate([text, caption], axis=1)
            counts.append(n_new)
        return latents

    def check_cache_conditions(self) -> None:
        """Raises a ``ValueError`` unless cached extension is exact for this pipeline (the
        causal-condition extension mask)."""
        if self.causal_conditions:
            return
        recorded = self.extension_mask_recorded or "nothing (mask 1, the release's)"
        raise ValueError(
            "cache_conditions (--cache-conditions) is exact only for a model trained with "
            "diffusion.cond_mask_mode='causal_conditions', sampled with that mask; this model "
            f"records {recorded} and extends with mask {self.extension_mask!r}. Under mask 1 "
            "the conditions attend to the noisy new scene, so caching them would change the "
            "result. Sample without caching, or pass extension_mask='causal_conditions' "
            "(--extension-mask causal_conditions) if the weights were trained that way."
        )

    def _script_captions(self, script: SampleScript) -> list[str | None]:
        return [*script.captions, *script.negatives]

    def generate(
        self,
        script: SampleScript,
        *,
        noise: Any = None,
        output: str = "uint8",
        cache_conditions: bool = False,
        guidance_schedule: Sequence[float] | None = None,
        callback: StepCallback | None = None,
    ) -> np.ndarray:
        """All scenes of ``script`` -> (S*F, H, W, 3) video.

        ``noise``: initial latents, either of the joint sample (1, S*F', h, w, C) or of every
        scene of the script (1, N*F', h, w, C: scenes past S are the extensions' new scenes).
        ``cache_conditions``, ``guidance_schedule``, ``callback``: see ``extend_latents``.
        Scenes with ``frames`` / ``seconds`` get their own lengths (``scene_pixel_frames``);
        the video then has their frames back to back.
        """
        s = self.video.num_scenes
        if len(script.scenes) < s:
            raise ValueError(
                f"this model samples {s} scenes jointly; the script has {len(script.scenes)}. "
                f"Give at least {s} scenes (more are added by scene extension)."
            )
        if cache_conditions:
            self.check_cache_conditions()
        f = self.latent_shape[0]
        n = len(script.scenes)
        lengths = self.scene_latent_frames(script)
        counts = list(lengths) if lengths is not None else [f] * n
        joint_frames = tuple(counts[:s]) if lengths is not None else None
        joint_noise = extra_noise = None
        if noise is not None:
            if np.ndim(noise) == 5 and np.shape(noise)[1] == sum(counts) and n > s:
                cut = sum(counts[:s])
                joint_noise, extra_noise = noise[:, :cut], noise[:, cut:]
            else:
                joint_noise = noise  # checked by sample_latents
        self.prepare_captions(self._script_captions(script))
        captions, negatives = script.captions, script.negatives
        latents = self.sample_latents(
            [captions[:s]],
            script.sampler,
            negatives[:s],
            noise=joint_noise,
            guidance_schedule=guidance_schedule,
            callback=callback,
            scene_frames=joint_frames,
        )
        if len(captions) > s:
            latents = self.extend_latents(
                latents,
                [captions[:s]],
                [captions[s:]],
                script.sampler,
                window=script.window,
                negatives=negatives[s:],
                seed_offset=1,
                noise=extra_noise,
                cache_conditions=cache_conditions,
                guidance_schedule=guidance_schedule,
                callback=callback,
                scene_frames=joint_frames,
                new_frames=None if lengths is None else counts[s:],
            )
        return self.decode_latents(latents, output=output, scene_frames=lengths)[0]

    def extend(
        self,
        video: np.ndarray,
        previous_captions: Sequence[str],
        script: SampleScript,
        *,
        output: str = "uint8",
        noise: Any = None,
        cache_conditions: bool = False,
        guidance_schedule: Sequence[float] | None = None,
        callback: StepCallback | None = None,
        previous_frames: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Appends ``script``'s scenes to ``video`` (whose scenes had ``previous_captions``).

        ``previous_frames``: pixel frames of each scene of ``video`` when they differ (None:
        equal scenes of the model's length); the script's ``frames`` / ``seconds`` set the
        new scenes' lengths.
        The previous scenes are encoded one by one (``condition_mode="release"``: a posterior
        sample, scene i from ``fold_in(posterior_key(seed), i)``); the output repeats them as
        decoded from those latents (before any ``add_noise``), then the new scenes.
        ``noise``: the new scenes' initial latents (1, K*F', h, w, C); ``cache_conditions``,
        ``guidance_schedule``, ``callback``: see ``extend_latents``.
        """
        scenes = self.split_video(video, previous_frames)
        if len(previous_captions) != len(scenes):
            raise ValueError(
                f"the video has {len(scenes)} scenes but {len(previous_captions)} captions were "
                "given for them"
            )
        if cache_conditions:
            self.check_cache_conditions()
        self.prepare_captions([*previous_captions, *self._script_captions(script)])
        key = None
        if self.condition_mode == "release":
            key = posterior_key(script.sampler.seed)
        prior = new = None
        if previous_frames is not None or script.has_lengths:
            prior = [self.latent_frames_of(x.shape[0]) for x in scenes]
            new = [self.latent_frames_of(x) for x in self.scene_pixel_frames(script)]
        latents = self.extend_latents(
            self.encode_video(video, key=key, scene_frames=previous_frames),
            [list(previous_captions)],
            [script.captions],
            script.sampler,
            window=script.window,
            negatives=script.negatives,
            noise=noise,
            cache_conditions=cache_conditions,
            guidance_schedule=guidance_schedule,
            callback=callback,
            scene_frames=prior,
            new_frames=new,
        )
        return self.decode_latents(
            latents, output=output, scene_frames=None if prior is None else prior + new
        )[0]
