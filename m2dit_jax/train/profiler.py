"""Profiler trace of chosen steps (``jax.profiler``), viewable in TensorBoard / Perfetto."""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)


class StepProfiler:
    """Traces steps [start, start + num_steps) into ``WORKDIR/profile`` (start < 0: never)."""

    def __init__(self, workdir: str, start: int, num_steps: int):
        self.directory = os.path.join(workdir, "profile")
        self.start, self.stop = int(start), int(start) + max(int(num_steps), 1)
        self.active = False

    def before_step(self, step: int) -> None:
        if self.start >= 0 and step == self.start and not self.active:
            jax.profiler.start_trace(self.directory)
            self.active = True
            log.info(
                "profiler: tracing steps %d..%d into %s", self.start, self.stop - 1, self.directory
            )

    def after_step(self, step: int, sync: object = None) -> None:
        """``step`` is the number of steps done; ``sync`` is blocked on before stopping."""
        if self.active and step >= self.stop:
            if sync is not None:
                jax.block_until_ready(sync)
            jax.profiler.stop_trace()
            self.active = False

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
