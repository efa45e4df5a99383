"""demo: what `make demo` trains — two stages on ``configs/shapes_tiny.py``.

Stage 1 (``get_pretrain_config``, ``PRETRAIN_OVERRIDES``) pretrains the model on single-scene
clips, the analogue of the CogVideoX checkpoint Mask²DiT starts from; stage 2 (``get_config``,
``DEMO_OVERRIDES``) fine-tunes it on 3-scene clips with mask 1 and mask 2, as the paper does.

Command (2-core CPU, 9-15 minutes end to end by machine: both stages, export, sample, score)::

    python -m launch.demo --workdir runs/demo            # what `make demo` runs

Training alone (the same two stages, without sampling and scoring)::

    python -m launch.train --config configs/demo_pretrain.py --workdir runs/demo/pretrain
    python -m launch.train --config configs/demo.py --workdir runs/demo \\
        --config.init_from=runs/demo/pretrain

What it trains and produces: see ``configs/shapes_tiny.py`` (the task, the model) and
``launch/demo.py`` (the samples, ``contact_sheet.png`` and ``eval.json`` it writes).
"""

from __future__ import annotations

from typing import Any

from configs import shapes_tiny

# Stage 1: one scene per clip (40 tokens instead of 120, so ~3x the optimizer steps per
# second), no mask 2. Learning motion needs many optimizer steps, and a single scene learns
# it far faster per step than three (README "Making motion and shape visible: what was tried").
PRETRAIN_OVERRIDES: dict[str, Any] = {
    "name": "shapes_tiny_pretrain",
    "data.num_scenes": 1,
    "diffusion.p_cond": 0.0,
    "optim.learning_rate": 3e-3,
    "train.batch_size": 16,
    "train.num_steps": 6000,
    "train.checkpoint_every": 2000,
    "train.log_every": 100,
}

# Stage 2: p_cond = 0.25 so that a quarter of the samples train mask-2 scene extension (the
# target is the last scene) — without it `extend` would be untrained. ``init_from`` (stage 1's
# workdir) is set by launch/demo.py or on the command line.
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
    "train.num_steps": 1500,
    "train.checkpoint_every": 500,
    "train.log_every": 100,
}

# Classifier-free guidance scale `launch.demo` samples and extends with (1 = off).
DEMO_GUIDANCE_SCALE = 3.0


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
    for key, value in {**base, **(overrides or {})}.items():
        set_key(config, key, value)
    return config


def get_config(overrides: dict[str, Any] | None = None):
    """Stage 2: shapes_tiny + ``DEMO_OVERRIDES`` + ``overrides`` ({dotted key: value})."""
    return _with(DEMO_OVERRIDES, overrides)


def get_pretrain_config(overrides: dict[str, Any] | None = None):
    """Stage 1: shapes_tiny + ``PRETRAIN_OVERRIDES`` + ``overrides`` ({dotted key: value})."""
    return _with(PRETRAIN_OVERRIDES, overrides)
