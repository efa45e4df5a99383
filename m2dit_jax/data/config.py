"""The data config: every field ``make_dataset`` reads, with its default and meaning."""

from __future__ import annotations

import ml_collections

SOURCES = ("synthetic_shapes", "manifest", "tfds", "latents")
TEXT_ENCODERS = ("none", "hashed")
VIDEO_ENCODERS = ("none", "space_to_depth")


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults = the CPU demo: synthetic_shapes, 3 scenes x 4 frames of 16x16 px.

    Fields:
      source: "synthetic_shapes" (procedural, no files) | "manifest" (JSONL of videos, decoded
        with PyAV) | "tfds" (ArrayRecord built by ``launch/build_tfds.py``) | "latents"
        (ArrayRecord shards of precomputed VAE latents + text embeddings).
      path: manifest .jsonl file (manifest); TFDS data_dir (tfds); shard directory, glob or
        file (latents). Unused by synthetic_shapes.
      tfds_name, tfds_split: registered TFDS builder name and split for source="tfds".
      num_scenes: S, scenes per sample.
      frames: pixel frames per scene (pixel sources; latents use what the shards hold).
      height, width: pixel frame size per scene (resize short side, then centre crop).
      stage: 1 = S unrelated single-scene clips, stride ``stage1_stride`` from a random start
        inside the middle ``middle_fraction`` of the clip; 2 = S consecutive shots of one
        multi-shot video at the largest stride in ``stage2_strides`` that fits.
      num_workers: grain worker processes (0 = load in the main process).
      strict: raise ValueError on bad input instead of skipping and counting it.
      shuffle: seeded shuffle, reshuffled every epoch.
      num_epochs: passes over the data; 0 = repeat forever.
      prefetch_buffer_size: batches read ahead per worker / in the main process.
      max_retries: consecutive bad inputs tolerated for one sample before giving up.
      stage1_stride, stage2_strides, middle_fraction: frame sampling (see ``stage``).
      synthetic_split: "train" (scripts outside the held-out fraction) or "heldout" (only the
        held-out scripts: the evaluation split).
      num_samples, holdout_fraction, synthetic_seed, object_size, step: synthetic_shapes epoch
        length, the share of scripts held out of training, the content seed (fixed data,
        independent of the shuffle seed), object size in px (0 = half the short side) and
        motion in px/frame (0 = as large as fits).
      text_encoder: "none" | "hashed" (``HashedWordEncoder(text_len, text_dim, text_seed)``)
        -> adds ``text_embeds`` (B, S*T, D) float32 and ``text_mask`` (B, S*T) bool.
      video_encoder: "none" | "space_to_depth" (``SpaceToDepthAutoencoder(patch_t, patch_s)``)
        -> adds ``latents`` (B, S*F/patch_t, H/patch_s, W/patch_s, 3*patch_t*patch_s^2).
    """
    c = ml_collections.ConfigDict()
    c.source = "synthetic_shapes"
    c.path = ""
    c.tfds_name = "m2dit_scenes"
    c.tfds_split = "train"
    c.num_scenes = 3
    c.frames = 4
    c.height = 16
    c.width = 16
    c.stage = 1
    c.num_workers = 0
    c.strict = False
    c.shuffle = True
    c.num_epochs = 0
    c.prefetch_buffer_size = 2
    c.max_retries = 32
    c.stage1_stride = 3
    c.stage2_strides = (3, 2, 1)
    c.middle_fraction = 0.9
    c.num_samples = 65_536
    c.holdout_fraction = 0.1
    c.synthetic_seed = 0
    c.synthetic_split = "train"  # "train" | "heldout": which scripts synthetic_shapes draws
    c.object_size = 0
    c.step = 0
    c.text_encoder = "none"
    c.text_len = 8
    c.text_dim = 32
    c.text_seed = 0
    c.video_encoder = "none"
    c.patch_t = 1
    c.patch_s = 1
    return c


def validate_data_config(c) -> None:
    """Raise ValueError naming the first bad field."""

    def need(ok: bool, field: str, message: str):
        if not ok:
            raise ValueError(f"data config field {field!r}: {message} (got {c.get(field)!r})")

    need(c.source in SOURCES, "source", f"must be one of {SOURCES}")
    for field in ("num_scenes", "frames", "height", "width", "stage1_stride", "max_retries"):
        need(int(c[field]) > 0, field, "must be a positive int")
    need(c.stage in (1, 2), "stage", "must be 1 or 2")
    need(c.synthetic_split in ("train", "heldout"), "synthetic_split", "must be train|heldout")
    if "p_cond" in c:
        raise ValueError(
            "data config field 'p_cond' was removed: mask 2 is sampled in one place, the "
            "objective — set diffusion.p_cond (and diffusion.target_scene) instead"
        )
    need(int(c.num_workers) >= 0, "num_workers", "must be >= 0")
    need(int(c.num_epochs) >= 0, "num_epochs", "must be >= 0 (0 = forever)")
    need(0.0 < float(c.middle_fraction) <= 1.0, "middle_fraction", "must be in (0, 1]")
    need(
        len(c.stage2_strides) > 0 and all(int(s) > 0 for s in c.stage2_strides),
        "stage2_strides",
        "must be a non-empty list of positive ints",
    )
    need(c.text_encoder in TEXT_ENCODERS, "text_encoder", f"must be one of {TEXT_ENCODERS}")
    need(c.video_encoder in VIDEO_ENCODERS, "video_encoder", f"must be one of {VIDEO_ENCODERS}")
    if c.source in ("manifest", "tfds", "latents"):
        need(bool(c.path), "path", f"is required for source={c.source!r}")
    if c.source == "latents":
        need(c.text_encoder == "none", "text_encoder", "latents shards already hold text embeds")
        need(c.video_encoder == "none", "video_encoder", "latents shards are already encoded")
    if c.video_encoder == "space_to_depth":
        need(int(c.patch_t) > 0 and c.frames % c.patch_t == 0, "patch_t", "must divide frames")
        for side in ("height", "width"):
            need(int(c.patch_s) > 0 and c[side] % c.patch_s == 0, "patch_s", f"must divide {side}")
