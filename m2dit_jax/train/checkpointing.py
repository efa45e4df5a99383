"""Orbax checkpointing of the train state plus the data iterator's state.

One ``CheckpointManager`` under ``WORKDIR/checkpoints`` with two items per step:
``state`` (``StandardSave``; asynchronous, sharded, restorable onto any mesh shape) and
``data`` (the grain iterator state through ``grain.checkpoint.CheckpointSave``: one JSON file
per process). ``restore_latest`` walks back from the newest step and skips any checkpoint that
fails to restore (truncated / corrupt), with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from typing import Any

import grain.checkpoint as grain_ckpt
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class IteratorStateSnapshot:
    """A frozen copy of an iterator's state in the shape grain's checkpoint handler expects.

    grain's handler calls ``get_state()`` (bytes for non-``DatasetIterator`` objects) when it
    writes, which for an asynchronous save may be after the live iterator has moved on; a
    snapshot taken at save time pins the state to the saved step. On restore it receives the
    bytes and hands the decoded state to the live iterator.
    """

    def __init__(self, iterator: Any, state: Any = None):
        self._iterator = iterator
        self._state = state

    @classmethod
    def capture(cls, iterator: Any) -> IteratorStateSnapshot:
        return cls(iterator, iterator.get_state())

    def get_state(self) -> bytes:
        state = self._state
        if isinstance(state, bytes):
            payload = {"kind": "bytes", "value": state.decode("latin-1")}
        else:
            payload = {"kind": "json", "value": state}
        return json.dumps(payload).encode()

    def set_state(self, blob: bytes) -> None:
        payload = json.loads(blob.decode() if isinstance(blob, bytes) else blob)
        if payload["kind"] == "bytes":
            state = payload["value"].encode("latin-1")
        else:
            state = payload["value"]
        self._state = state
        self._iterator.set_state(state)

    def start_prefetch(self) -> None:  # called by grain's handler after set_state
        start = getattr(self._iterator, "start_prefetch", None)
        if callable(start):
            start()


def _everywhere(ok: bool) -> bool:
    """True iff ``ok`` holds on every process (all processes must pick the same step)."""
    import jax

    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([int(ok)], np.int32))
    return bool(np.asarray(flags).all())


class Checkpointer:
    """Saves/restores {state, data} every N steps; keeps the newest K."""

    def __init__(self, directory: str, *, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=int(keep),
            enable_async_checkpointing=bool(async_save),
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("state", "data"),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain_ckpt.CheckpointHandler(),
            },
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, data_iterator: Any | None, *, force: bool = False):
        """Starts a (possibly asynchronous) save of ``state`` and the iterator state."""
        args = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            args["data"] = grain_ckpt.CheckpointSave(IteratorStateSnapshot.capture(data_iterator))
        return self.manager.save(int(step), args=ocp.args.Composite(**args), force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(self, step: int, target: Any, data_iterator: Any | None) -> Any:
        """Restores step ``step`` onto ``target`` (ShapeDtypeStructs with shardings)."""
        args = {"state": ocp.args.StandardRestore(target)}
        if data_iterator is not None:
            args["data"] = grain_ckpt.CheckpointRestore(IteratorStateSnapshot(data_iterator))
        restored = self.manager.restore(int(step), args=ocp.args.Composite(**args))
        return restored["state"]

    def restore_latest(self, target: Any, data_iterator: Any | None) -> tuple[int | None, Any]:
        """(step, state) from the newest checkpoint that restores; (None, None) if none does.

        A checkpoint that fails (missing/truncated files) is reported and the previous one is
        tried. The data iterator is only touched by a restore that succeeds as a whole: its
        state is restored last, after the arrays.
        """
        bad: list[int] = []
        for step in reversed(self.all_steps()):
            state, reason = None, ""
            try:
                state = self.restore(step, target, None)
                if data_iterator is not None:
                    snapshot = IteratorStateSnapshot(data_iterator)
                    self.manager.restore(
                        step,
                        args=ocp.args.Composite(data=grain_ckpt.CheckpointRestore(snapshot)),
                    )
            except Exception as e:  # noqa: BLE001 - any failure means "not restorable"
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if not _everywhere(not reason):
                message = (
                    f"checkpoint at step {step} in {self.directory} is not restorable "
                    f"({reason or 'failed on another process'}); falling back to the previous "
                    "checkpoint"
                )
                log.warning(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                bad.append(step)
                continue
            self._quarantine(bad)
            return step, state
        self._quarantine(bad)
        return None, None

    def _quarantine(self, steps: list[int]) -> None:
        """Moves unrestorable step directories to ``<dir>_unrestorable/`` (kept, not deleted)
        so that the run can save those step numbers again."""
        if not steps:
            return
        import jax

        if jax.process_index() == 0:
            aside = self.directory + "_unrestorable"
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                src = os.path.join(self.directory, str(step))
                if os.path.exists(src):
                    shutil.move(src, os.path.join(aside, f"{step}.{int(time.time())}"))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("m2dit_checkpoint_quarantine")
        self.manager.reload()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
