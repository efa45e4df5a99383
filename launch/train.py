"""Train a Mask²DiT from a config file.

    python -m launch.train --config configs/shapes_tiny.py --workdir runs/shapes_tiny \
        [--config.train.num_steps=2000 --config.mesh.fsdp=8 ...]

Re-running the same command resumes from the newest checkpoint in --workdir; a checkpoint
that does not match the config (exit 4) or a workdir whose checkpoints are all unreadable
(exit 5) stops the run with the reason and moves nothing. Also
installed as the ``m2dit-train`` console script. On a cluster, every process runs the same
command (see launch/recipes/); multi-host start-up comes from the environment or
``--config.distributed.*``.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax chatter
    from m2dit_jax.train.checkpointing import CheckpointMismatch, NoRestorableCheckpoint
    from m2dit_jax.train.config_checks import ConfigError
    from m2dit_jax.train.trainer import TrainingDiverged, train_and_evaluate

    exit_codes = (
        (ConfigError, 2),
        (TrainingDiverged, 3),
        (CheckpointMismatch, 4),
        (NoRestorableCheckpoint, 5),
    )
    try:
        result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except tuple(error for error, _ in exit_codes) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(next(code for error, code in exit_codes if isinstance(e, error)))
    import jax

    if jax.process_index() == 0:
        status = "preempted, checkpoint saved" if result["preempted"] else "done"
        evals = " ".join(f"{k}={v:.4f}" for k, v in result["eval"].items())
        print(
            f"{status}: step {result['step']}, compile {result['compile_s']:.1f}s, "
            f"{result['mean_step_time_s'] * 1e3:.1f} ms/step {evals}".rstrip()
        )


def _parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with unknown ``--config.*`` keys reported as a usage error."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        print(f"error: unknown config key in {bad}: {e}", file=sys.stderr)
        sys.exit(2)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    """Console-script entry point (``m2dit-train``)."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
