"""The data config: every field ``make_dataset`` reads, with its default and meaning."""

from __future__ import annotations

import ml_collections

SOURCES = ("synthetic_shapes", "manifest", "tfds", "latents")
TEXT_ENCODERS = ("none", "hashed")
VIDEO_ENCODERS = ("none", "space_to_depth", "conv")
# Encoders built on the space-to-depth fold: frames come in multiples of patch_t.
FOLD_ENCODERS = ("space_to_depth", "conv")


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
      frames: pixel frames per scene (pixel sources; latents use what the shards hold);
        unused with ragged=True (scenes then have min_frames..max_frames frames).
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
      video_encoder: "none" | "space_to_depth" (``SpaceToDepthAutoencoder(patch_t, patch_s,
        detail_scale)``) -> adds ``latents`` (B, S*F/patch_t, H/patch_s, W/patch_s,
        3*patch_t*patch_s^2) (ragged: sum_i F_i/patch_t frames, each scene encoded on its own).
        "conv": ``ConvAutoencoder.load(autoencoder)`` (``m2dit_jax.encoders.conv_autoencoder``,
        the fold then a learned conv codec) -> ``latents`` (B, S*F/patch_t, H/(2 patch_s),
        W/(2 patch_s), C); patch_t / patch_s must equal the file's.
      autoencoder: video_encoder="conv" only: path of the autoencoder's .npz weights.
      detail_scale: space_to_depth only: 1.0 = the plain fold; s != 1 stores each block in a
        DCT basis with its detail coefficients times s (their SNR s^2 times higher at every
        timestep; see ``m2dit_jax.encoders.pixel``).
      ragged: scenes of their own lengths. False (default) = every scene has ``frames`` pixel
        frames (the batches of before). True = each scene's pixel frame count is an allowed
        count (below) drawn or derived per sample, and samples of equal layout are bucketed
        into one batch: synthetic_shapes and manifest stage 1 draw the batch's layout from
        (seed, batch index) (all its samples share it); manifest stage 2 derives each unit's
        layout from the shot times alone (``fps``) and latents shards from each record's
        ``scene_frames``; the pipeline then groups units by layout, picks each batch's layout
        from (seed, batch index) with probability proportional to the layout's share of the
        data, and fills it from that layout's own seeded, per-epoch reshuffled stream (so every
        process of a job uses the same layout at the same step). Not supported by ``tfds``.
      min_frames, max_frames: allowed pixel frames per ragged scene (inclusive; both must obey
        ``frame_rule``).
      frame_rule: which counts a ragged scene may have: "multiple" = multiples of ``patch_t``
        with video_encoder="space_to_depth" (any count otherwise); "4k+1" = 1, 5, 9, ...
        (CogVideoX VAE: 4k+1 pixel frames -> k+1 latent frames; for precompute). A count is
        always rounded down to the rule.
      fps: manifest with ragged=True, stage 2: each shot is sampled at this rate (frames at
        ``start + k / fps``); its frame count is floor(duration * fps), capped at max_frames
        (a random window of the shot), rounded down to the rule. A shot that yields fewer than
        min_frames is skipped and counted as ``too_short`` (with every sample using it).
        Required (> 0) for ragged stage 2; unused otherwise.
      token_budget: with ragged=True, the most pixel frames a sample's scenes may have
        together (0 = no limit): the longest scene (first on ties) is shortened to the next
        allowed count until the total fits. Video tokens = latent frames x tokens per frame
        (fixed by height/width and the patch sizes), so a frame budget is a token budget.
        Must be >= num_scenes * min_frames.
      frame_choices: with ragged=True, the only per-scene counts allowed (e.g. (2, 4, 6);
        empty = every count of the rule in [min_frames, max_frames]). Each distinct layout
        compiles its own train step, so a coarse set bounds them: at most
        len(frame_choices) ** num_scenes layouts (synthetic defaults: 5**3 = 125 without).
        Counts round down to the nearest choice; each must obey ``frame_rule`` and lie in
        [min_frames, max_frames], and min_frames must be one of them.

      pack_tokens: packed sequences (0 = off; needs ragged=True): the token budget of one
        sequence row. Each row then holds several samples, their scenes concatenated; all B
        rows of a batch share one *packing plan* (P sample layouts, drawn per batch from
        (seed, batch index) by first-fit over candidate layouts of the data's layout
        distribution: see ``m2dit_jax.data.packing``). A sample's tokens = S * text tokens +
        sum_i latent_frames_i * pack_frame_tokens (latent frames = pixel / patch_t with
        space_to_depth, (f - 1) // 4 + 1 with frame_rule "4k+1", the stored counts for
        source="latents"). One sample of the longest layout (S scenes of max_frames; for
        latents: the longest stored layout) must fit.
      pack_frame_tokens: model tokens per LATENT frame; required (> 0) when packing. CogVideoX
        (VAE 8x spatial + patch 2): (height / 8 / 2) * (width / 8 / 2), e.g. 30 * 45 = 1350
        at 480x720; space_to_depth: (height / patch_s / model patch) * (width / patch_s /
        model patch).
      pack_text_tokens: tokens of one caption block (0 = text_len).
      pack_plans: distinct packing plans (8 by default): the first ones first-fit draws, each
        batch then uses one of them (uniform from (seed, batch index)). Every plan compiles
        its own train step, so this bounds the compiles; 0 = a fresh plan per batch (best
        mix of layouts, but nearly every batch compiles anew).

    Packed batches have the keys of unpacked ones with the P samples' scenes concatenated in
    plan order (``video``/``latents`` frames, ``captions`` (B, P*S), ``text_embeds`` (B,
    P*S*T, D), ``text_mask``, ``scene_frames`` (B, P*S), per-scene ``attrs_*``), per-sample
    scalars stacked to (B, P) (``ids``: one id per packed sample, ``attrs_shape``, ...), and
    two more: ``sample_scenes`` (B, P) int32 (scenes per packed sample: S) and ``pack_fill``
    (B,) float32 (real tokens of the row / pack_tokens).

    Batch key ``scene_frames`` (B, S) int32, always present: frames of each scene on the frame
    axis of the batch's array (pixel frames of ``video``; latent frames once the video encoder
    made ``latents``, which then also adds ``video_scene_frames``, the pixel counts; the
    stored latent frames for source="latents"). All rows of a batch are equal.
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
    c.detail_scale = 1.0
    c.autoencoder = ""
    c.ragged = False
    c.min_frames = 2
    c.max_frames = 6
    c.frame_rule = "multiple"  # "multiple" (of patch_t with space_to_depth) | "4k+1"
    c.fps = 0.0
    c.token_budget = 0
    c.frame_choices = ()
    c.pack_tokens = 0
    c.pack_frame_tokens = 0
    c.pack_text_tokens = 0
    c.pack_plans = 8
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
    _validate_ragged(c, need)
    _validate_packing(c, need)
    detail_scale = float(c.get("detail_scale", 1.0))
    if c.video_encoder == "conv":
        need(bool(c.get("autoencoder", "")), "autoencoder", "is required for video_encoder='conv'")
    else:
        need(not c.get("autoencoder", ""), "autoencoder", "applies to video_encoder='conv' only")
    if c.video_encoder in FOLD_ENCODERS:
        need(int(c.patch_t) > 0, "patch_t", "must be a positive int")
        if not c.get("ragged", False):
            need(c.frames % c.patch_t == 0, "patch_t", "must divide frames")
        for side in ("height", "width"):
            need(int(c.patch_s) > 0 and c[side] % c.patch_s == 0, "patch_s", f"must divide {side}")
        need(detail_scale > 0, "detail_scale", "must be > 0")
        need(
            detail_scale == 1.0 or c.video_encoder == "space_to_depth",
            "detail_scale",
            "applies to video_encoder='space_to_depth' only",
        )
        need(
            detail_scale == 1.0 or int(c.patch_t) * int(c.patch_s) ** 2 > 1,
            "detail_scale",
            "needs blocks of more than one pixel (patch_t / patch_s > 1)",
        )
    else:
        need(detail_scale == 1.0, "detail_scale", "applies to video_encoder='space_to_depth' only")


def _validate_ragged(c, need) -> None:
    from m2dit_jax.data.frame_sampling import FRAME_RULES, FrameRule

    # Configs saved before ragged scenes existed lack these fields: they mean ragged=False.
    if "ragged" not in c:
        return
    need(isinstance(c.ragged, bool), "ragged", "must be True or False")
    if not c.ragged:
        need(
            int(c.get("token_budget", 0)) == 0,
            "token_budget",
            "shortens ragged scenes: needs ragged=True",
        )
        return
    for field in ("min_frames", "max_frames", "frame_rule", "fps", "token_budget"):
        if field not in c:
            raise ValueError(f"data config field {field!r} is missing (see default_data_config)")
    need(c.frame_rule in FRAME_RULES, "frame_rule", f"must be one of {FRAME_RULES}")
    need(float(c.fps) >= 0, "fps", "must be >= 0 (0 = unused)")
    need(int(c.token_budget) >= 0, "token_budget", "must be >= 0 (0 = no limit)")
    need(
        c.source != "tfds",
        "ragged",
        "is not supported by source='tfds' (use a manifest, or precompute latents shards)",
    )
    need(int(c.min_frames) > 0, "min_frames", "must be a positive int")
    need(int(c.max_frames) >= int(c.min_frames), "max_frames", "must be >= min_frames")
    if c.video_encoder in FOLD_ENCODERS:
        need(c.frame_rule == "multiple", "frame_rule", f"must be 'multiple' for {c.video_encoder}")
        need(int(c.patch_t) > 0, "patch_t", "must be a positive int")
    rule = FrameRule.from_config(c)
    what = "of the form 4k+1" if rule.rule == "4k+1" else f"a multiple of {rule.multiple} (patch_t)"
    plain = FrameRule(rule.rule, rule.multiple, rule.min_frames, rule.max_frames)
    for field in ("min_frames", "max_frames"):
        need(plain.obeys(int(c[field])), field, f"must obey frame_rule={c.frame_rule!r}: {what}")
    choices = tuple(int(f) for f in (c.get("frame_choices", ()) or ()))
    if choices:
        bad = [
            f for f in choices if not plain.obeys(f) or not rule.min_frames <= f <= rule.max_frames
        ]
        need(not bad, "frame_choices", f"{bad} do not obey frame_rule / [min_frames, max_frames]")
        need(rule.min_frames in choices, "frame_choices", "must include min_frames")
    budget = int(c.token_budget)
    need(
        budget == 0 or budget >= int(c.num_scenes) * int(c.min_frames),
        "token_budget",
        f"must be 0 or >= num_scenes * min_frames = {int(c.num_scenes) * int(c.min_frames)}",
    )
    if c.source == "manifest" and c.stage == 2:
        need(float(c.fps) > 0, "fps", "ragged stage 2 samples each shot at fps: must be > 0")


def _validate_packing(c, need) -> None:
    # Configs saved before packing existed lack these fields: they mean no packing.
    if "pack_tokens" not in c:
        return
    for field in ("pack_tokens", "pack_frame_tokens", "pack_text_tokens", "pack_plans"):
        if field not in c:
            raise ValueError(f"data config field {field!r} is missing (see default_data_config)")
        need(int(c[field]) >= 0, field, "must be >= 0")
    if int(c.pack_tokens) == 0:
        return
    need(bool(c.get("ragged", False)), "pack_tokens", "packs ragged samples: needs ragged=True")
    need(int(c.pack_frame_tokens) > 0, "pack_frame_tokens", "must be > 0 when packing")
    if c.source == "latents":
        return  # the stored layouts are checked against the budget when the source is read
    from m2dit_jax.data.packing import PackSpec

    spec = PackSpec.from_config(c)
    longest = spec.padded_tokens()
    need(
        longest <= int(c.pack_tokens),
        "pack_tokens",
        f"cannot hold one sample of the longest layout ({int(c.num_scenes)} scenes of "
        f"max_frames={int(c.max_frames)}: {longest} tokens)",
    )
