"""The distributed trainer: config checks, sharded state, jitted step, orbax checkpoints,
metrics, preemption handling and multi-host start-up. Entry point: ``train_and_evaluate``."""

from m2dit_jax.train.config_checks import ConfigError, check_config, model_layout
from m2dit_jax.train.defaults import default_trainer_config
from m2dit_jax.train.trainer import TrainingDiverged, evaluate, train_and_evaluate

__all__ = [
    "ConfigError",
    "TrainingDiverged",
    "check_config",
    "default_trainer_config",
    "evaluate",
    "model_layout",
    "train_and_evaluate",
]
