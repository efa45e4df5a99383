"""Preemption: SIGTERM/SIGINT become a request to checkpoint and stop at the next step.

All processes must agree on the step at which they stop (the checkpoint is a collective), so
with several processes the local flags are OR-ed across hosts every ``check_every`` steps (a
collective, so not every step); a single process reads its flag at every step. On clusters that
deliver preemption notices through JAX's coordination service (TPU) that signal is honoured too.
A second SIGINT while the first is pending falls through to the default handler (hard stop).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import jax
import numpy as np


class PreemptionGuard:
    """Context manager: ``guard.should_stop(step)`` is True on every process once any got a
    SIGTERM/SIGINT (or a coordination-service preemption notice)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool = True, *, check_every: int = 1):
        self.enabled = enabled
        self.check_every = max(int(check_every), 1)
        self._flag = threading.Event()
        self._previous: dict[int, object] = {}
        self.signal_name: str | None = None

    def __enter__(self) -> PreemptionGuard:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._flag.is_set() and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        self._flag.set()

    def request_stop(self, reason: str = "requested") -> None:
        self.signal_name = reason
        self._flag.set()

    @property
    def local_requested(self) -> bool:
        return self._flag.is_set()

    def should_stop(self, step: int) -> bool:
        """Collective when several processes run (on steps divisible by ``check_every``, else
        False): call it on every process at every step."""
        local = self._flag.is_set()
        if jax.process_count() == 1:
            return local
        if step % self.check_every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([int(local)], np.int32))
        stop = bool(np.asarray(flags).any())
        if not stop:
            try:
                stop = bool(multihost_utils.reached_preemption_sync_point(step))
            except (RuntimeError, AttributeError):  # no preemption sync manager here
                stop = False
        if stop and self.signal_name is None:
            self.signal_name = "peer process"
        return stop
