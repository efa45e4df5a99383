"""The distributed trainer: config checks, sharded state, jitted step, orbax checkpoints,
metrics, preemption handling and multi-host start-up. Entry point: ``train_and_evaluate``."""

from m2dit_jax.train.config_checks import ConfigError, check_config, model_layout
from m2dit_jax.train.defaults import default_trainer_config
from m2dit_jax.train.evaluation import Evaluator
from m2dit_jax.train.program import TrainProgram, build_train_program
from m2dit_jax.train.trainer import TrainingDiverged, train_and_evaluate

__all__ = [
    "ConfigError",
    "Evaluator",
    "TrainProgram",
    "TrainingDiverged",
    "check_config",
    "default_trainer_config",
    "build_train_program",
    "model_layout",
    "train_and_evaluate",
]
