"""The Mask²DiT token layout and its two masks.

A sample of S scenes is one sequence ``[T_1 .. T_S | V_1 .. V_S]``: every caption block first,
then every scene's video tokens (frame, h, w order, w fastest). ``SceneLayout`` is the single
source of truth for where each token lives; attention kernels, the model and the data pipeline
all read positions from it.

Mask 1 (attention):  allowed(q, k) = same_scene(q, k) OR (is_video(q) AND is_video(k)).
Mask 2 (conditioning): a per-sample bool vector over scenes, True = generated (noisy),
False = clean condition (t = 0). In the method it acts on noise, timesteps and the loss, never
on attention. Our extension ``mask_mode="causal_conditions"`` (with ``num_conditions=K``: the
first K scenes are conditions) also restricts attention: condition queries see only condition
keys (mask 1 among the conditions), generated queries see everything mask 1 allows. Condition
tokens then never depend on the generated scene, so their keys/values can be computed once per
extension and cached across sampler steps (``m2dit_jax.diffusion.generation.extend``).

Scenes of their own lengths: ``frames=(F_1, .., F_S)``. Packed sequences: ``samples=(S_1, ..,
S_P)`` splits the S scenes into P independent samples (scene order, S_1 + .. + S_P = S) in one
row: the token order stays [all caption blocks | all video], tokens of different samples never
attend to each other (mask 1 holds inside each sample) and temporal positions restart at every
sample (``frame_positions``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

# Above this many tokens a dense (L, L) mask is refused: use a kernel backend instead.
DENSE_MASK_LIMIT = 16_384

# Attention patterns a layout can describe. "mask2dit" is mask 1 (the method); the other two
# exist for the paper's ablation: "full" = no mask (every caption and scene sees everything),
# "independent" = each scene sees only its own caption and its own video.
MASK_MODES = ("mask2dit", "full", "independent")
# Mask 1 plus causal conditions: needs ``num_conditions >= 1`` (the first scenes are the
# clean conditions of mask 2). Chosen per call where mask 2 has conditions, never globally.
CAUSAL_CONDITIONS = "causal_conditions"
LAYOUT_MASK_MODES = MASK_MODES + (CAUSAL_CONDITIONS,)


@dataclasses.dataclass(frozen=True)
class SceneLayout:
    """Token layout of one multi-scene sample.

    Args:
      num_scenes: S, the number of scenes (captions and clips).
      text_len: real caption tokens per scene (CogVideoX: 226).
      frames: latent frames per scene (after temporal patching): one int for equal scenes, or
        a tuple of S ints for scenes of their own lengths ("ragged", e.g. ``(13, 4, 9)``). A
        tuple of equal values is stored as the int, so the equal layout is one object.
      grid_h: video tokens per frame along height (latent H / patch).
      grid_w: video tokens per frame along width (latent W / patch).
      text_pad_to: each caption block is padded up to a multiple of this (kernel block
        alignment). Padding tokens are never attended to; a padding query attends only to its
        own scene's real text so that no softmax row is empty.
      mask_mode: "mask2dit" (mask 1, the default); for ablations "full" / "independent";
        "causal_conditions": mask 1, except that the first ``num_conditions`` scenes (the
        clean conditions of mask 2) attend only to condition tokens.
      num_conditions: K, the leading condition scenes of "causal_conditions" (1 <= K < S);
        must be 0 (the default) in every other mode, so existing layouts are unchanged.
      samples: packed sequences: scenes per packed sample (S_1, .., S_P), summing to S; None
        (the default, also what ``(S,)`` becomes) = one sample.
    """

    num_scenes: int
    text_len: int
    frames: int | tuple[int, ...]
    grid_h: int
    grid_w: int
    text_pad_to: int = 1
    mask_mode: str = "mask2dit"
    num_conditions: int = 0
    samples: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.mask_mode not in LAYOUT_MASK_MODES:
            raise ValueError(
                f"SceneLayout.mask_mode must be one of {LAYOUT_MASK_MODES}, got {self.mask_mode!r}"
            )
        self._normalise_frames()
        for name in ("num_scenes", "text_len", "grid_h", "grid_w", "text_pad_to"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"SceneLayout.{name} must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"SceneLayout.{name} must be positive, got {value}")
        k = self.num_conditions
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"SceneLayout.num_conditions must be an int, got {k!r}")
        if self.mask_mode == CAUSAL_CONDITIONS:
            if not 1 <= k < self.num_scenes:
                raise ValueError(
                    f"mask_mode='causal_conditions' needs 1 <= num_conditions < num_scenes="
                    f"{self.num_scenes} (the leading condition scenes), got {k}"
                )
        elif k != 0:
            raise ValueError(
                f"num_conditions={k} is only meaningful with mask_mode='causal_conditions' "
                f"(got mask_mode={self.mask_mode!r}); mask 2 alone does not change attention"
            )
        self._normalise_samples()

    def _normalise_samples(self) -> None:
        samples = self.samples
        if samples is None:
            return
        values = tuple(samples) if isinstance(samples, (list, tuple, np.ndarray)) else None
        if values is None or any(
            isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0 for n in values
        ):
            raise ValueError(
                f"SceneLayout.samples must be a tuple of positive ints, got {samples!r}"
            )
        if sum(values) != self.num_scenes:
            raise ValueError(
                f"SceneLayout.samples {values} must add up to num_scenes={self.num_scenes}"
            )
        values = tuple(int(n) for n in values)
        if len(values) > 1 and self.mask_mode == CAUSAL_CONDITIONS:
            raise ValueError(
                "mask_mode='causal_conditions' describes one sample's scene extension; it does "
                "not apply to packed samples (samples=...)"
            )
        object.__setattr__(self, "samples", None if len(values) == 1 else values)

    def _normalise_frames(self) -> None:
        frames = self.frames
        if isinstance(frames, (list, tuple, np.ndarray)):
            values = tuple(frames)
            for f in values:
                if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f <= 0:
                    raise ValueError(
                        f"SceneLayout.frames must hold positive ints (latent frames per scene), "
                        f"got {frames!r}"
                    )
            if not isinstance(self.num_scenes, bool) and len(values) != self.num_scenes:
                raise ValueError(
                    f"SceneLayout.frames has {len(values)} per-scene counts {values} but "
                    f"num_scenes={self.num_scenes}"
                )
            values = tuple(int(f) for f in values)
            frames = values[0] if len(set(values)) == 1 else values
        elif isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames <= 0:
            raise ValueError(
                f"SceneLayout.frames must be a positive int or a tuple, got {frames!r}"
            )
        else:
            frames = int(frames)
        object.__setattr__(self, "frames", frames)

    # ------------------------------------------------------------------ packed samples
    @property
    def is_packed(self) -> bool:
        """True when the row holds more than one sample (``samples`` is a tuple)."""
        return self.samples is not None

    @property
    def sample_sizes(self) -> tuple[int, ...]:
        """Scenes of each packed sample, (P,) ints ((S,) for one sample)."""
        return self.samples if self.is_packed else (self.num_scenes,)

    @property
    def sample_starts(self) -> tuple[int, ...]:
        """First scene of each packed sample, (P,) ints."""
        return tuple(int(x) for x in np.cumsum((0,) + self.sample_sizes[:-1]))

    def scene_sample(self) -> np.ndarray:
        """(S,) int32 packed sample of every scene."""
        return np.repeat(np.arange(len(self.sample_sizes)), self.sample_sizes).astype(np.int32)

    def sample_layout(self, j: int) -> SceneLayout:
        """The j-th packed sample's own (unpacked) layout."""
        start, n = self.sample_starts[j], self.sample_sizes[j]
        frames = self.scene_frames[start : start + n]
        return SceneLayout(
            n, self.text_len, frames, self.grid_h, self.grid_w, self.text_pad_to, self.mask_mode
        )

    def frame_positions(self) -> np.ndarray:
        """(total_frames,) int32 temporal position of every latent frame: its index inside its
        own packed sample (the global frame index when the row holds one sample)."""
        frames = np.asarray(self.scene_frames)
        out = []
        for start, n in zip(self.sample_starts, self.sample_sizes):
            out.append(np.arange(int(frames[start : start + n].sum())))
        return np.concatenate(out).astype(np.int32)

    # ------------------------------------------------------------------ sizes
    @property
    def is_ragged(self) -> bool:
        """True when scenes have different frame counts (``frames`` is a tuple)."""
        return isinstance(self.frames, tuple)

    @property
    def scene_frames(self) -> tuple[int, ...]:
        """Latent frames of each scene, (S,) ints."""
        if self.is_ragged:
            return self.frames
        return (self.frames,) * self.num_scenes

    @property
    def total_frames(self) -> int:
        """Latent frames of all scenes together (the model's latent frame axis)."""
        return sum(self.scene_frames)

    @property
    def video_lens(self) -> tuple[int, ...]:
        """Video tokens of each scene, (S,) ints."""
        return tuple(f * self.tokens_per_frame for f in self.scene_frames)

    @property
    def video_starts(self) -> tuple[int, ...]:
        """Index of each scene's first video token, (S,) ints."""
        starts, at = [], self.text_total
        for n in self.video_lens:
            starts.append(at)
            at += n
        return tuple(starts)

    @property
    def frame_starts(self) -> tuple[int, ...]:
        """Index of each scene's first latent frame on the concatenated frame axis, (S,)."""
        return tuple(int(x) for x in np.cumsum((0,) + self.scene_frames[:-1]))

    @property
    def text_block(self) -> int:
        """Tokens per caption block, padding included."""
        return -(-self.text_len // self.text_pad_to) * self.text_pad_to

    @property
    def text_padding(self) -> int:
        """Padding tokens at the end of each caption block."""
        return self.text_block - self.text_len

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def video_len(self) -> int:
        """Video tokens per scene (equal scenes only: ragged layouts have ``video_lens``)."""
        if self.is_ragged:
            raise ValueError(
                f"this layout's scenes have different frame counts {self.frames}: there is no "
                "single video_len; use video_lens / video_slice(i)"
            )
        return self.frames * self.grid_h * self.grid_w

    @property
    def text_total(self) -> int:
        """All caption tokens (padding included); video starts at this index."""
        return self.num_scenes * self.text_block

    @property
    def video_total(self) -> int:
        return self.total_frames * self.tokens_per_frame

    @property
    def seq_len(self) -> int:
        return self.text_total + self.video_total

    # ------------------------------------------------------------------ slices
    def _check_scene(self, i: int) -> None:
        if not 0 <= i < self.num_scenes:
            raise ValueError(f"scene index {i} out of range for num_scenes={self.num_scenes}")

    def text_slice(self, i: int) -> slice:
        """Real caption tokens of scene i (padding excluded)."""
        self._check_scene(i)
        start = i * self.text_block
        return slice(start, start + self.text_len)

    def text_block_slice(self, i: int) -> slice:
        """Caption block of scene i including its padding."""
        self._check_scene(i)
        start = i * self.text_block
        return slice(start, start + self.text_block)

    def video_slice(self, i: int) -> slice:
        """Video tokens of scene i."""
        self._check_scene(i)
        start = self.video_starts[i]
        return slice(start, start + self.video_lens[i])

    # ------------------------------------------------------------------ per-token arrays
    def scene_ids(self) -> np.ndarray:
        """(seq_len,) int32 scene index of every token."""
        return self.token_scene(np.arange(self.seq_len)).astype(np.int32)

    def is_video(self) -> np.ndarray:
        """(seq_len,) bool, True for video tokens."""
        return self.token_is_video(np.arange(self.seq_len))

    def is_padding(self) -> np.ndarray:
        """(seq_len,) bool, True for caption padding tokens."""
        return self.token_is_padding(np.arange(self.seq_len))

    def frame_ids(self) -> np.ndarray:
        """(seq_len,) int32 global latent-frame index (0..total_frames-1) of video tokens, -1
        for text.

        Temporal positions run continuously across scenes (no reset at a cut).
        """
        idx = np.arange(self.seq_len)
        frame = (idx - self.text_total) // self.tokens_per_frame
        return np.where(self.token_is_video(idx), frame, -1).astype(np.int32)

    # ------------------------------------------------------------------ index predicates
    # Written with operators only (no np.where) so they work on NumPy arrays, jnp arrays and
    # inside Pallas kernels alike: the splash backend evaluates `allowed` on token indices.
    def token_is_video(self, idx: Any) -> Any:
        return idx >= self.text_total

    def token_scene(self, idx: Any) -> Any:
        video = self.token_is_video(idx)
        if self.is_ragged:  # count the scene starts at or before idx (S is small)
            video_scene = 0
            for start in self.video_starts[1:]:
                video_scene = video_scene + (idx >= start) * 1
        else:
            video_scene = (idx - self.text_total) // self.video_len
        text_scene = idx // self.text_block
        return video * video_scene + (1 - video) * text_scene

    def token_sample(self, idx: Any) -> Any:
        """Packed sample of each token (0 everywhere for one sample)."""
        scene = self.token_scene(idx)
        sample = 0
        for start in self.sample_starts[1:]:
            sample = sample + (scene >= start) * 1
        return sample

    def token_is_padding(self, idx: Any) -> Any:
        return (~self.token_is_video(idx)) & ((idx % self.text_block) >= self.text_len)

    def allowed(self, q_idx: Any, k_idx: Any) -> Any:
        """Mask 1 evaluated on (broadcastable) query/key token indices; True = may attend.

        Follows ``mask_mode`` ("full" / "independent" only for ablations; "causal_conditions":
        condition queries additionally need a condition key).
        """
        q_video = self.token_is_video(q_idx)
        k_video = self.token_is_video(k_idx)
        same_scene = self.token_scene(q_idx) == self.token_scene(k_idx)
        q_pad = self.token_is_padding(q_idx)
        k_pad = self.token_is_padding(k_idx)
        if self.mask_mode == "full":
            rule = same_scene | ~q_pad
        elif self.mask_mode == "independent":
            rule = same_scene
        else:
            rule = same_scene | (q_video & k_video)
            if self.mask_mode == CAUSAL_CONDITIONS:
                k_cond = self.num_conditions
                rule = rule & (
                    (self.token_scene(q_idx) >= k_cond) | (self.token_scene(k_idx) < k_cond)
                )
        if self.is_packed:
            rule = rule & (self.token_sample(q_idx) == self.token_sample(k_idx))
        return rule & ~k_pad & ~(q_pad & k_video)

    def dense_mask(self) -> np.ndarray:
        """(seq_len, seq_len) bool mask 1, True = query row may attend to key column.

        Only for tests and small sequences: refuses more than DENSE_MASK_LIMIT tokens.
        """
        if self.seq_len > DENSE_MASK_LIMIT:
            raise ValueError(
                f"dense_mask() refuses seq_len={self.seq_len} > {DENSE_MASK_LIMIT}: an L x L mask "
                "at this size is too large. Use masked_attention(..., backend='split' or "
                "'splash'), which evaluate mask 1 without materialising it."
            )
        idx = np.arange(self.seq_len)
        return np.asarray(self.allowed(idx[:, None], idx[None, :]), dtype=bool)

    def blocked_fraction(self) -> float:
        """Fraction of (query, key) pairs that mask 1 blocks, computed without an L x L array."""
        if self.mask_mode != "mask2dit":
            raise ValueError("blocked_fraction() is defined for mask_mode='mask2dit' only")
        t, real_t = self.text_block, self.text_len
        lens = self.video_lens
        # video keys a video query sees: all video of its own sample
        sample_video = [
            sum(lens[start : start + n]) for start, n in zip(self.sample_starts, self.sample_sizes)
        ]
        # Allowed pairs counted per query kind; padding keys are never allowed.
        text_rows = video_rows = 0
        for scene, v in enumerate(lens):
            text_rows += t * (real_t + v)  # own real text + own video (pad rows: own text only)
            text_rows -= self.text_padding * v
            video_rows += v * (real_t + sample_video[self.scene_sample()[scene]])
        return 1.0 - (text_rows + video_rows) / float(self.seq_len) ** 2

    @classmethod
    def from_latents(
        cls,
        num_scenes: int,
        text_len: int,
        latent_frames: int | tuple[int, ...],
        latent_h: int,
        latent_w: int,
        patch_size: int = 2,
        patch_t: int = 1,
        text_pad_to: int = 1,
        mask_mode: str = "mask2dit",
        num_conditions: int = 0,
    ) -> SceneLayout:
        """Layout for per-scene latents of shape (latent_frames, latent_h, latent_w, C);
        ``latent_frames`` may be a tuple of S per-scene counts (ragged scenes)."""
        ragged = isinstance(latent_frames, (list, tuple))
        per_scene = tuple(latent_frames) if ragged else (latent_frames,)
        for f in per_scene:
            if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f <= 0 or f % patch_t:
                raise ValueError(
                    f"latent_frames={latent_frames} must be positive multiples of the patch "
                    f"{patch_t}"
                )
        for name, size, p in (
            ("latent_h", latent_h, patch_size),
            ("latent_w", latent_w, patch_size),
        ):
            if size <= 0 or size % p:
                raise ValueError(f"{name}={size} must be a positive multiple of the patch {p}")
        return cls(
            num_scenes,
            text_len,
            tuple(f // patch_t for f in per_scene) if ragged else latent_frames // patch_t,
            latent_h // patch_size,
            latent_w // patch_size,
            text_pad_to,
            mask_mode,
            num_conditions,
        )


# ---------------------------------------------------------------------- mask 2
def check_generate_mask(mask: Any, num_scenes: int) -> np.ndarray:
    """Validates mask 2 and returns it as bool numpy of shape (S,) or (B, S).

    True = the scene is generated (noisy, trained on), False = a clean condition at t = 0.
    Every sample needs at least one generated scene.
    """
    arr = np.asarray(mask)
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"generate mask must be boolean or 0/1, got values {np.unique(arr)}")
        arr = arr.astype(bool)
    if arr.ndim not in (1, 2) or arr.shape[-1] != num_scenes:
        raise ValueError(
            f"generate mask must have shape (num_scenes,) or (batch, num_scenes) with "
            f"num_scenes={num_scenes}, got shape {arr.shape}"
        )
    if not arr.any(axis=-1).all():
        raise ValueError("generate mask has a sample with no generated scene (all False)")
    return arr


def extension_mask(num_scenes: int, num_conditions: int) -> np.ndarray:
    """Mask 2 for scene extension: the first ``num_conditions`` scenes are clean conditions."""
    if not 0 <= num_conditions < num_scenes:
        raise ValueError(f"num_conditions={num_conditions} must be in [0, num_scenes={num_scenes})")
    return np.arange(num_scenes) >= num_conditions


def scene_timesteps(timesteps: Any, generate_mask: Any) -> Any:
    """Per-scene timesteps (B, S): the sample's t for generated scenes, 0 for conditions.

    Args:
      timesteps: (B,) one timestep per sample (jnp or numpy).
      generate_mask: (B, S) or (S,) bool mask 2.
    """
    gen = generate_mask
    if gen.ndim == 1:
        gen = gen[None, :]
    return timesteps[:, None] * gen.astype(timesteps.dtype)
