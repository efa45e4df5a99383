"""Orbax checkpointing of the train state plus the data iterator's state.

One ``CheckpointManager`` under ``WORKDIR/checkpoints`` with two items per step:
``state`` (``StandardSave``; asynchronous, sharded, restorable onto any mesh shape) and
``data`` (the grain iterator state through ``grain.checkpoint.CheckpointSave``: one JSON file
per process).

``restore_latest`` tells the truth about what it finds, newest step first:
* a checkpoint whose *structure* (paths, shapes, dtypes, read from its metadata) differs from
  the current config's state raises ``CheckpointMismatch`` naming the differing paths, and
  moves nothing (the config changed: fix the config or use another workdir);
* a checkpoint that cannot be read (missing/truncated files, unreadable metadata) is skipped
  with a warning and, once an older one restores, moved to ``checkpoints_unrestorable/``;
* if checkpoints exist and none restores, ``NoRestorableCheckpoint`` lists each one's reason
  and moves nothing: a run never silently starts over.
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


# What a missing / truncated / corrupt checkpoint raises (orbax, tensorstore, grain), possibly
# wrapped by orbax in a plain Exception. Anything else (out of memory, a bug) propagates: it
# says nothing about the checkpoint's files.
UNREADABLE = (OSError, ValueError, KeyError, EOFError)


def _unreadable(error: BaseException) -> bool:
    """True when ``error`` or one of its causes is a file / decode error (``UNREADABLE``)."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, UNREADABLE):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _file_error_reason(attempt) -> tuple[Any, str]:
    """``(attempt(), "")``, or ``(None, reason)`` when it fails with a file / decode error.

    Any other failure propagates unchanged. The catch has to be broad because orbax re-raises
    tensorstore's file errors wrapped in a plain ``Exception``; ``_unreadable`` looks through
    the cause chain for one of ``UNREADABLE``.
    """
    try:
        return attempt(), ""
    except Exception as e:  # noqa: BLE001 - re-raised unless a file / decode error (above)
        if not _unreadable(e):
            raise
        return None, _reason(e)


class CheckpointMismatch(ValueError):
    """A checkpoint's tree structure, shapes or dtypes differ from the current train state."""


class NoRestorableCheckpoint(RuntimeError):
    """Checkpoints exist but none of them can be read."""


def _path_str(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _leaves_by_path(tree: Any, is_leaf=None) -> dict[str, Any]:
    import jax

    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return {_path_str(path): leaf for path, leaf in flat}


def structure_differences(checkpoint_meta: Any, target: Any, limit: int = 20) -> list[str]:
    """Lines ``path: checkpoint X vs model Y`` for every path, shape or dtype that differs
    between a checkpoint's array metadata tree and a target tree of ShapeDtypeStructs."""
    import numpy as np

    is_meta = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
    saved = _leaves_by_path(checkpoint_meta, is_leaf=is_meta)
    wanted = _leaves_by_path(target)
    lines = []
    # params first: the ema/ and opt_state/ copies of the same difference follow.
    order = lambda p: (not p.startswith("params/"), p)
    for path in sorted(set(saved) | set(wanted), key=order):
        if path not in wanted:
            lines.append(f"{path}: in the checkpoint {tuple(saved[path].shape)}, not in the model")
        elif path not in saved:
            lines.append(f"{path}: in the model {tuple(wanted[path].shape)}, not in the checkpoint")
        else:
            a, b = saved[path], wanted[path]
            if tuple(a.shape) != tuple(b.shape):
                lines.append(f"{path}: checkpoint {tuple(a.shape)} vs model {tuple(b.shape)}")
            elif np.dtype(a.dtype) != np.dtype(b.dtype):
                lines.append(f"{path}: checkpoint {np.dtype(a.dtype)} vs model {np.dtype(b.dtype)}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


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


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


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
        """Starts a (possibly asynchronous) save of ``state`` and the iterator state.

        ``data_iterator`` is the live iterator (its state is captured now) or an
        ``IteratorStateSnapshot`` taken when the step's batch was read (a loop that reads
        ahead saves the state of the batch it consumed, not of the one it prefetched).
        """
        args = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            snapshot = (
                data_iterator
                if isinstance(data_iterator, IteratorStateSnapshot)
                else IteratorStateSnapshot.capture(data_iterator)
            )
            args["data"] = grain_ckpt.CheckpointSave(snapshot)
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

    def state_metadata(self, step: int) -> Any:
        """The array metadata tree (shapes, dtypes) of step ``step``'s ``state`` item."""
        meta = self.manager.item_metadata(int(step))["state"]
        if meta is None:
            raise FileNotFoundError(f"step {step} has no readable state metadata")
        return getattr(meta, "tree", meta)

    def restore_latest(self, target: Any, data_iterator: Any | None) -> tuple[int | None, Any]:
        """(step, state) from the newest checkpoint that restores; (None, None) if there is
        no checkpoint at all. See the module docstring for what happens on each outcome.

        The data iterator is only touched by a restore that succeeds as a whole: its state is
        restored last, after the arrays.
        """
        steps = self.all_steps()
        unreadable: list[tuple[int, str]] = []
        for step in reversed(steps):
            meta, reason = _file_error_reason(lambda step=step: self.state_metadata(step))
            if meta is not None:
                differences = structure_differences(meta, target)
                if differences:
                    raise CheckpointMismatch(
                        f"the checkpoint at step {step} in {self.directory} does not match the "
                        "train state of the current config (nothing was moved or overwritten):\n  "
                        + "\n  ".join(differences)
                        + "\nRun with the config that wrote it (see config.json beside it), or "
                        "train the changed config in a new workdir (init_from can start it from "
                        "converted weights)."
                    )

                def restore(step=step):
                    state = self.restore(step, target, None)
                    if data_iterator is not None:  # last: only after the arrays restored
                        snapshot = IteratorStateSnapshot(data_iterator)
                        self.manager.restore(
                            step,
                            args=ocp.args.Composite(data=grain_ckpt.CheckpointRestore(snapshot)),
                        )
                    return state

                state, reason = _file_error_reason(restore)
            if not _everywhere(not reason):
                message = (
                    f"checkpoint at step {step} in {self.directory} is not restorable "
                    f"({reason or 'failed on another process'}); trying the previous checkpoint"
                )
                log.warning(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                unreadable.append((step, reason or "failed on another process"))
                continue
            self._quarantine([s for s, _ in unreadable])
            return step, state
        if unreadable:
            listing = "\n  ".join(f"step {s}: {r}" for s, r in unreadable)
            raise NoRestorableCheckpoint(
                f"{len(unreadable)} checkpoint(s) in {self.directory} and none restores "
                f"(nothing was moved):\n  {listing}\nTo start this run from scratch, move "
                f"{self.directory} aside yourself; to keep training, repair or restore a copy."
            )
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
