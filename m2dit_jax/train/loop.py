"""Pieces of the lean train loop: batches read ahead onto the device, metrics kept on the device.

The loop never waits on the device per step: metrics of each step stay device arrays in a
``MetricsWindow`` and are fetched once per ``train.log_every``; the next batch is read and
placed (sharded) while the current step runs (``BatchPrefetcher``); the host runs at most
``max_in_flight`` steps ahead of the device (``InFlight``), which bounds the batches held on
the device without stalling it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from m2dit_jax.train.checkpointing import IteratorStateSnapshot

# Metrics that are states, not per-step values: the window reports the last one.
_LAST_VALUE = ("learning_rate", "nonfinite_run", "nonfinite_total")


class BatchPrefetcher:
    """``next()`` -> (device batch, snapshot of the iterator state after reading it, seconds).

    ``to_device(host_batch)`` places a host batch (asynchronous ``device_put`` /
    ``make_array_from_process_local_data``); it is called as soon as a batch is read, so the
    transfer overlaps the running step. The snapshot is what a checkpoint taken after this
    batch's step must save (the live iterator is one batch further on).
    """

    def __init__(self, dataset: Any, to_host: Callable, to_device: Callable):
        self.dataset, self.to_host, self.to_device = dataset, to_host, to_device

    def next(self) -> tuple[dict[str, Any], IteratorStateSnapshot | None, float]:
        t0 = time.perf_counter()
        host = self.to_host(next(self.dataset))
        get_state = getattr(self.dataset, "get_state", None)
        snapshot = IteratorStateSnapshot(self.dataset, get_state()) if get_state else None
        batch = self.to_device(host)
        return batch, snapshot, time.perf_counter() - t0


class InFlight:
    """Bounds how many dispatched steps may be unfinished: ``add(token)`` waits for the oldest
    token once more than ``max_in_flight`` are pending (the device still has that many queued)."""

    def __init__(self, max_in_flight: int = 2):
        self.max_in_flight = int(max_in_flight)
        self.pending: collections.deque = collections.deque()

    def add(self, token: Any) -> None:
        self.pending.append(token)
        while len(self.pending) > self.max_in_flight:
            jax.block_until_ready(self.pending.popleft())


class MetricsWindow:
    """Device metrics of the steps since the last log point; ``fetch`` brings them to the host
    in one transfer and returns per-step host dicts."""

    def __init__(self):
        self.device: list[dict[str, jax.Array]] = []
        self.data_time = 0.0

    def __len__(self) -> int:
        return len(self.device)

    def add(self, metrics: dict[str, jax.Array], data_time: float) -> None:
        self.device.append(metrics)
        self.data_time += data_time

    def fetch(self) -> list[dict[str, np.ndarray]]:
        return jax.device_get(self.device)

    @staticmethod
    def summarize(rows: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        """Window means (last value for states; ``skipped_in_window`` counts skips)."""
        out: dict[str, Any] = {}
        for k in rows[0]:
            values = [np.asarray(r[k], np.float64) for r in rows]
            if k in _LAST_VALUE:
                out[k] = values[-1]
            elif k == "skipped":
                out["skipped_in_window"] = np.sum(values)
            else:
                out[k] = np.mean(np.stack(values), axis=0)
        return out
