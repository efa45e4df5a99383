"""Train the demo's pixel codec (stage 0): space-to-depth fold + a small conv autoencoder.

    python -m launch.train_autoencoder --config configs/demo_pretrain.py \
        --out runs/demo/autoencoder.npz [--set steps=1000 --set hidden=64 ...]

Renders single scenes of the config's ``synthetic_shapes`` training scripts (its frames,
height, width, holdout_fraction; never a held-out script) and trains
``m2dit_jax.encoders.conv_autoencoder.train_conv_autoencoder`` with ``configs.demo.AUTOENCODER``
(``--set`` overrides a setting) on the config's ``patch_t`` / ``patch_s`` fold. Writes the
weights file that ``data.autoencoder`` (video_encoder="conv") names; an existing file is an
error (delete it to retrain). ``make demo`` runs the same code as its stage 0.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).")
_OUT = flags.DEFINE_string("out", None, "Where to write the autoencoder's .npz weights.")
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE over configs.demo.AUTOENCODER.")
flags.mark_flags_as_required(["config", "out"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from configs.demo import AUTOENCODER
    from launch.demo import parse_override
    from m2dit_jax.encoders.conv_autoencoder import train_shapes_codec

    settings = dict(AUTOENCODER)
    for text in _SET.value:
        key, value = parse_override(text)
        if key not in AUTOENCODER:
            raise app.UsageError(f"unknown --set key {key!r}; known: {sorted(AUTOENCODER)}")
        settings[key] = value
    config = _CONFIG.value
    if os.path.exists(_OUT.value):
        print(f"error: {_OUT.value} exists; delete it to train a new codec", file=sys.stderr)
        sys.exit(2)
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    try:
        report = train_shapes_codec(
            _OUT.value, config.data, settings, seed=int(config.seed), log=print
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(
        f"wrote {_OUT.value}: reconstruction MSE {report['loss']:.4f} in {report['train_s']:.0f}s"
    )


if __name__ == "__main__":
    app.run(main)
