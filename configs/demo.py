"""demo: what `make demo` trains — a learned pixel codec, then two stages on shapes_tiny.

Stage 0 (``AUTOENCODER``) trains the demo's stand-in for CogVideoX's VAE: the space-to-depth
fold plus a small conv codec (``m2dit_jax.encoders.conv_autoencoder``) whose decoder draws the
objects' outlines, so the DiT works on (2 x 4 x 4 x 16)-latent scenes (``CODEC_OVERRIDES``).
Stage 1 (``get_pretrain_config``, ``PRETRAIN_OVERRIDES``) pretrains the model on single-scene
clips, the analogue of the CogVideoX checkpoint Mask²DiT starts from; stage 2 (``get_config``,
``DEMO_OVERRIDES``) fine-tunes it on 3-scene clips with mask 1 and mask 2, as the paper does.

Command (2-core CPU, ~15 minutes end to end: three stages, export, sample, score; 14 min 35 s
on the 2026-12-07 VM)::

    python -m launch.demo --workdir runs/demo            # what `make demo` runs

Training alone (the same three stages, without sampling and scoring)::

    python -m launch.train_autoencoder --config configs/demo_pretrain.py \\
        --out runs/demo/autoencoder.npz
    python -m launch.train --config configs/demo_pretrain.py --workdir runs/demo/pretrain \\
        --config.data.autoencoder=runs/demo/autoencoder.npz
    python -m launch.train --config configs/demo.py --workdir runs/demo \\
        --config.init_from=runs/demo/pretrain --config.data.autoencoder=runs/demo/autoencoder.npz

What it trains and produces: see ``configs/shapes_tiny.py`` (the task, the model) and
``launch/demo.py`` (the samples, ``contact_sheet.png`` and ``eval.json`` it writes).
"""

from __future__ import annotations

from typing import Any

from configs import shapes_tiny

# Stage 0: the learned pixel codec (``train_conv_autoencoder`` keyword arguments). The decoder
# is trained on latents with noise up to ``latent_noise`` added, so that a DiT sample near the
# right code decodes to a clean square / circle / plus (README "what was tried"). Hidden 64
# (half the time per step of 96) on 16,384 clips at lr 3e-3: the codec alone keeps the shape of
# 83% / 65% of training-split / held-out scenes at 4,000 steps (hidden 96 on 4,096 clips:
# 93% / 66% in twice the time; benchmarks/codec_fidelity.py); 3,500 steps fit the demo in 15
# minutes.
AUTOENCODER: dict[str, Any] = {
    "channels": 16,
    "hidden": 64,
    "steps": 3500,
    "batch_size": 64,
    "learning_rate": 3e-3,
    "latent_noise": 0.5,
    "num_clips": 16384,
}

# Both stages read the codec's latents: the fold's 8x8 grid halved to 4x4, 16 channels, one
# token per latent pixel (patch 1) -> the same 32 video tokens per scene as patch 2 on the fold.
# ``data.autoencoder`` (the weights file) is set by launch/demo.py or on the command line.
CODEC_OVERRIDES: dict[str, Any] = {
    "data.video_encoder": "conv",
    "model.in_channels": AUTOENCODER["channels"],
    "model.out_channels": AUTOENCODER["channels"],
    "model.patch_size": 1,
    "model.sample_height": 4,
    "model.sample_width": 4,
}

# The demos before the codec (2026-12-07): patch 2 straight on the lossless fold (24 channels,
# 8x8 grid). ``--set`` these (both stages) to reproduce the earlier tables of the README.
PLAIN_FOLD_OVERRIDES: dict[str, Any] = {
    "data.video_encoder": "space_to_depth",
    "model.in_channels": 24,
    "model.out_channels": 24,
    "model.patch_size": 2,
    "model.sample_height": 8,
    "model.sample_width": 8,
}

# Stage 1: one scene per clip (40 tokens instead of 120, so ~3x the optimizer steps per
# second), no mask 2. Learning motion needs many optimizer steps, and a single scene learns
# it far faster per step than three (README "Making motion and shape visible: what was tried").
# On the codec the motion word is learned by step 2,000; the shape keeps improving with steps
# (single-scene samples of one 6,000-step run: shape 53 / 66 / 79% at steps 2,000 / 4,000 /
# 6,000), so 5,000 steps is what the 15-minute budget buys.
PRETRAIN_OVERRIDES: dict[str, Any] = {
    "name": "shapes_tiny_pretrain",
    "data.num_scenes": 1,
    "diffusion.p_cond": 0.0,
    "optim.learning_rate": 3e-3,
    "train.batch_size": 16,
    "train.num_steps": 5000,
    "train.checkpoint_every": 2000,
    "train.log_every": 100,
}

# Stage 2: p_cond = 0.25 so that a quarter of the samples train mask-2 scene extension (the
# target is the last scene) — without it `extend` would be untrained. 1,000 steps to fit 15
# minutes: 1,500 cost ~125 s more and, on the earlier 2,000-step codec, gave a few points more
# shape and background (README "what was tried"). ``init_from`` (stage 1's workdir) is set by
# launch/demo.py or on the command line.
#
# Caption dropout (each scene's caption zeroed with p = 0.1) trains the empty caption that
# classifier-free guidance (DEMO_GUIDANCE_SCALE) guides against; SNR shift 3 (CogVideoX-2B's)
# moves training and sampling towards high noise, where a 16x16 px object's position and motion
# are decided. Stage 1 has neither: with them it learns the motion word later — seed 0 not
# within its 6,000 steps (motion 29% after stage 2), seeds 1-3 did; without them seeds 0-2 all
# learn it (motion 98.6 / 97.9 / 81.9%, README "what was tried").
DEMO_OVERRIDES: dict[str, Any] = {
    "diffusion.p_cond": 0.25,
    "diffusion.caption_dropout": 0.1,
    "diffusion.snr_shift_scale": 3.0,
    "optim.learning_rate": 3e-3,
    "train.batch_size": 16,
    "train.num_steps": 1000,
    "train.checkpoint_every": 500,
    "train.log_every": 100,
}

# Classifier-free guidance scale `launch.demo` samples and extends with (1 = off). On the codec,
# more guidance draws the captioned shape more often but costs clean scenes and background
# (CFG 1 / 1.25 / 1.5 / 3: shape 60 / 64 / 68 / 71%, clean 99 / 99 / 95 / 88%): 1.25 keeps both.
DEMO_GUIDANCE_SCALE = 1.25


def set_key(config, dotted: str, value: Any) -> None:
    """``config[a][b][c] = value`` for ``dotted="a.b.c"``; an unknown key is a ValueError."""
    node = config
    *parents, leaf = dotted.split(".")
    for name in parents:
        if name not in node:
            raise ValueError(f"unknown config key {dotted!r}")
        node = node[name]
    if leaf not in node:
        raise ValueError(f"unknown config key {dotted!r}")
    node[leaf] = value


def _with(base: dict[str, Any], overrides: dict[str, Any] | None):
    config = shapes_tiny.get_config()
    for key, value in {**CODEC_OVERRIDES, **base, **(overrides or {})}.items():
        set_key(config, key, value)
    return config


def get_config(overrides: dict[str, Any] | None = None):
    """Stage 2: shapes_tiny + ``CODEC_OVERRIDES`` + ``DEMO_OVERRIDES`` + ``overrides``
    ({dotted key: value})."""
    return _with(DEMO_OVERRIDES, overrides)


def get_pretrain_config(overrides: dict[str, Any] | None = None):
    """Stage 1: shapes_tiny + ``CODEC_OVERRIDES`` + ``PRETRAIN_OVERRIDES`` + ``overrides``."""
    return _with(PRETRAIN_OVERRIDES, overrides)
