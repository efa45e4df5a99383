"""The Mask²DiT release's training recipe (MASK2DIT.md §4), shared by the 2B/5B configs.

AdamW (0.9, 0.999), lr 1e-5 constant after 100 warm-up steps, weight decay 0.03, eps 1e-10,
bf16 compute with f32 master weights, full remat, global batch 8; 3 scenes of 49 frames at
480x720 (13 x 60 x 90 latents, 226 T5 tokens per caption): 53,328 tokens per sample.
Stage 1 (pretrain): unrelated single-scene clips, p_cond 0. Stage 2 (SFT): consecutive shots
of one video, p_cond 0.5 with the last scene as the target.
Data: precomputed latent shards (``launch/precompute`` of the encoders issue ->
``m2dit_jax.data.latents_format``), path given on the command line.
"""

from __future__ import annotations

from m2dit_jax.data import default_data_config
from m2dit_jax.model import get_model_config
from m2dit_jax.train.defaults import default_trainer_config


def release_config(model_name: str, *, stage: int, name: str):
    """model_name: "cogvideox_2b" | "cogvideox_5b"; stage 1 (pretrain) or 2 (SFT)."""
    config = default_trainer_config()
    config.name = name
    config.seed = 0
    config.init_from = ""  # stage-1 workdir or a CogVideoX pipeline folder; on the command line

    config.model = get_model_config(
        model_name, dtype="bfloat16", param_dtype="float32", remat="full", scan_layers=True
    )
    config.model.attention_backend = "auto"  # splash on TPU, mask-free split on GPU

    config.data = default_data_config()
    config.data.source = "latents"
    config.data.path = ""  # latent shard directory / glob; set on the command line
    config.data.num_scenes = 3
    config.data.stage = stage
    config.data.num_workers = 4
    config.data.prefetch_buffer_size = 2

    config.diffusion.snr_shift_scale = 1.0 if model_name == "cogvideox_5b" else 3.0
    config.diffusion.p_cond = 0.5 if stage == 2 else 0.0  # mask 2 is sampled by the objective
    config.diffusion.target_scene = "last"

    config.optim.learning_rate = 1e-5
    config.optim.warmup_steps = 100
    config.optim.schedule = "constant"
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-10
    config.optim.weight_decay = 0.03
    config.optim.clip_norm = 1.0
    config.optim.ema_decay = 0.9999
    config.optim.grad_accum_steps = 1

    # One sample per data-parallel rank (the release: 1 per GPU x 8 GPUs, ZeRO-2); FSDP shards
    # params, moments and EMA over every device. Raise mesh.context for longer clips.
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.mesh.context = 1
    config.mesh.tensor = 1

    config.train.num_steps = 10_000 if stage == 1 else 5_000
    config.train.batch_size = 8
    config.train.log_every = 10
    config.train.checkpoint_every = 250
    config.train.keep_checkpoints = 3
    config.eval.batches = 0
    config.train.max_consecutive_nonfinite = 20
    config.train.compilation_cache_dir = ""
    return config
