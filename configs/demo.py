"""demo: what `make demo` trains — ``configs/shapes_tiny.py`` plus ``DEMO_OVERRIDES``.

Command (2-core CPU, ~15 minutes end to end: train, export, sample, extend, score)::

    python -m launch.demo --workdir runs/demo            # what `make demo` runs

Training alone (the same run, without sampling and scoring)::

    python -m launch.train --config configs/demo.py --workdir runs/demo

What it trains and produces: see ``configs/shapes_tiny.py`` (the task, the model) and
``launch/demo.py`` (the samples, ``contact_sheet.png`` and ``eval.json`` it writes).
"""

from __future__ import annotations

from typing import Any

from configs import shapes_tiny

# p_cond = 0.25 so that a quarter of the samples train mask-2 scene extension (the target is the
# last scene) — without it `extend` would be untrained; the step count sets the time budget.
# Batch 16 x 4000 steps at lr 3e-3: the cleanest samples the issue-18 search found in 15
# minutes (README "Making motion and shape visible: what was tried").
DEMO_OVERRIDES: dict[str, Any] = {
    "diffusion.p_cond": 0.25,
    "optim.learning_rate": 3e-3,
    "train.batch_size": 16,
    "train.num_steps": 4000,
    "train.checkpoint_every": 1000,
    "train.log_every": 100,
}


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


def get_config(overrides: dict[str, Any] | None = None):
    """shapes_tiny + ``DEMO_OVERRIDES`` + ``overrides`` ({dotted key: value})."""
    config = shapes_tiny.get_config()
    for key, value in {**DEMO_OVERRIDES, **(overrides or {})}.items():
        set_key(config, key, value)
    return config
