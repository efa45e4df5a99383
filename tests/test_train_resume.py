"""Exact resume, preemption (SIGTERM) checkpoints, corrupt-checkpoint fallback, non-finite steps."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_train_common import tiny_config

from m2dit_jax.data import make_dataset
from m2dit_jax.train import TrainingDiverged, train_and_evaluate


def _jsonl(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """6 steps in one go (steps 1-2 traced by the profiler): the reference losses."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    result = train_and_evaluate(tiny_config(profile_start_step=1, profile_num_steps=2), workdir)
    return workdir, result


def test_profiler_traces_the_chosen_steps(straight):
    workdir, _ = straight
    traces = [f for _, _, files in os.walk(os.path.join(workdir, "profile")) for f in files]
    assert any(f.endswith(".xplane.pb") for f in traces), traces


def test_resume_is_bit_exact(straight, tmp_path):
    ref_dir, ref = straight
    assert len(ref["losses"]) == 6 and np.isfinite(ref["losses"]).all()
    first = train_and_evaluate(tiny_config(stop_at_step=3), str(tmp_path))
    assert first["step"] == 3 and _steps(tmp_path)[-1] == 3
    second = train_and_evaluate(tiny_config(), str(tmp_path))
    assert second["start_step"] == 3 and second["step"] == 6
    assert first["losses"] + second["losses"] == ref["losses"]  # bit for bit
    grad_norms = [m["grad_norm"] for m in _jsonl(tmp_path)]
    assert grad_norms == [m["grad_norm"] for m in _jsonl(ref_dir)]


@pytest.mark.slow
def test_resume_is_bit_exact_with_two_data_workers(tmp_path):
    config = lambda **kw: _with_workers(tiny_config(num_steps=4, **kw))
    ref = train_and_evaluate(config(), str(tmp_path / "ref"))
    first = train_and_evaluate(config(stop_at_step=2), str(tmp_path / "run"))
    second = train_and_evaluate(config(), str(tmp_path / "run"))
    assert first["losses"] + second["losses"] == ref["losses"]


def _with_workers(config):
    config.data.num_workers = 2
    return config


def _signalling_factory(signal_at_batch: int, signum=signal.SIGTERM):
    """A make_dataset whose iterator sends ``signum`` to this process at batch k (0-based)."""

    class Wrapped:
        def __init__(self, it):
            self.it, self.count = it, 0

        def __next__(self):
            if self.count == signal_at_batch:
                os.kill(os.getpid(), signum)
            self.count += 1
            return next(self.it)

        def get_state(self):
            return self.it.get_state()

        def set_state(self, state):
            self.it.set_state(state)

        def skip_counts(self):
            return self.it.skip_counts()

    return lambda *a, **kw: Wrapped(make_dataset(*a, **kw))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_leaves_a_restorable_checkpoint(straight, tmp_path, signum):
    _, ref = straight
    config = tiny_config(checkpoint_every=100)  # only the preemption save
    result = train_and_evaluate(
        config, str(tmp_path), dataset_factory=_signalling_factory(2, signum)
    )
    # Batch 2 is read while step 2 runs (read-ahead): the signal stops the run after step 2,
    # and the checkpoint holds the iterator state of batch 1, not of the prefetched batch 2.
    assert result["preempted"] and result["step"] == 2
    assert _steps(tmp_path) == [2]
    resumed = train_and_evaluate(config, str(tmp_path))
    assert resumed["start_step"] == 2 and not resumed["preempted"]
    assert result["losses"] + resumed["losses"] == ref["losses"]


def _truncate_arrays(step_dir):
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            path = os.path.join(root, name)
            if "ocdbt.process" in root and os.path.getsize(path) > 64:
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 3)


def test_truncated_latest_checkpoint_falls_back_with_a_warning(straight, tmp_path):
    _, ref = straight
    workdir = str(tmp_path)
    train_and_evaluate(tiny_config(stop_at_step=4), workdir)  # checkpoints 2 and 4
    _truncate_arrays(os.path.join(workdir, "checkpoints", "4"))
    with pytest.warns(RuntimeWarning, match="step 4 .* not restorable"):
        resumed = train_and_evaluate(tiny_config(), workdir)
    assert resumed["start_step"] == 2
    assert resumed["losses"] == ref["losses"][2:]
    assert _steps(workdir) == [2, 4, 6]  # step 4 re-saved; the bad copy is kept aside
    assert os.listdir(os.path.join(workdir, "checkpoints_unrestorable"))[0].startswith("4.")


def _nan_factory(nan_from_batch: int):
    class Poisoned:
        def __init__(self, it):
            self.it, self.count = it, 0

        def __next__(self):
            batch = next(self.it)
            if self.count >= nan_from_batch:
                batch = dict(batch, latents=np.full_like(batch["latents"], np.nan))
            self.count += 1
            return batch

        def get_state(self):
            return self.it.get_state()

        def set_state(self, state):
            self.it.set_state(state)

    return lambda *a, **kw: Poisoned(make_dataset(*a, **kw))


def test_nonfinite_steps_are_skipped_then_the_run_stops_with_the_last_good_state(tmp_path):
    config = tiny_config(num_steps=10, max_consecutive_nonfinite=3, checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match="3 non-finite steps in a row"):
        train_and_evaluate(config, str(tmp_path), dataset_factory=_nan_factory(2))
    rows = _jsonl(tmp_path)
    assert [r["skipped_in_window"] for r in rows] == [0, 0, 1, 1, 1]
    assert [r["nonfinite_total"] for r in rows] == [0, 0, 1, 2, 3]
    assert _steps(tmp_path) == [2, 4, 5]
    restore = lambda s: ocp.StandardCheckpointer().restore(
        os.path.join(tmp_path, "checkpoints", str(s), "state")
    )
    good, last = restore(2), restore(5)
    assert int(last["step"]) == 5 and int(last["nonfinite"]["total"]) == 3
    for name in ("params", "ema", "opt_state"):
        for a, b in zip(
            __import__("jax").tree.leaves(good[name]), __import__("jax").tree.leaves(last[name])
        ):
            np.testing.assert_array_equal(a, b)
