"""Two JAX processes on loopback (gloo CPU collectives, 4 simulated devices each) train, save,
resume, and match a single-process run over the same 8-device mesh and the same data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_train_common import tiny_config

from m2dit_jax.data import make_dataset
from m2dit_jax.train import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, os.path.join({repo!r}, "tests"))
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from test_train_common import tiny_config
    from m2dit_jax.train import train_and_evaluate

    pid, port, workdir, stop_at, out = sys.argv[1:6]
    config = tiny_config(num_steps=4, stop_at_step=int(stop_at))
    config.mesh.update(dict(fsdp=-1, num_devices=0))
    config.distributed.update(dict(
        initialize="always", coordinator_address=f"127.0.0.1:{{port}}", num_processes=2,
        process_id=int(pid), cpu_collectives="gloo"))
    result = train_and_evaluate(config, workdir)
    assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
    with open(out, "w") as f:
        json.dump({{"losses": result["losses"], "start": result["start_step"],
                   "step": result["step"]}}, f)
    """
).format(repo=REPO)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(tmp_path, workdir, stop_at, tag):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    procs, outs = [], []
    for pid in range(2):
        out = str(tmp_path / f"{tag}_{pid}.json")
        outs.append(out)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(pid), str(port), workdir, str(stop_at), out],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=420)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return [json.load(open(o)) for o in outs]


class _ConcatenatedShards:
    """One process reading both processes' shards: rows of process 0, then of process 1."""

    def __init__(self, config, seed, batch_size, count=2):
        self.its = [
            make_dataset(
                config,
                seed=seed,
                process_index=i,
                process_count=count,
                batch_size=batch_size // count,
            )
            for i in range(count)
        ]

    def __next__(self):
        parts = [next(it) for it in self.its]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self):
        return [it.get_state() for it in self.its]

    def set_state(self, state):
        for it, s in zip(self.its, state):
            it.set_state(s)


@pytest.mark.slow
def test_two_processes_train_save_resume_and_match_one_process(tmp_path):
    workdir = str(tmp_path / "mh")
    first = _run_two_processes(tmp_path, workdir, 2, "first")
    assert [r["step"] for r in first] == [2, 2]
    saved = os.listdir(os.path.join(workdir, "checkpoints", "2", "data"))
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(saved)  # grain state per host
    second = _run_two_processes(tmp_path, workdir, 0, "second")
    assert [r["start"] for r in second] == [2, 2] and [r["step"] for r in second] == [4, 4]
    multi = first[0]["losses"] + second[0]["losses"]
    assert multi == first[1]["losses"] + second[1]["losses"]  # every process sees the same loss

    config = tiny_config(num_steps=4)
    config.mesh.update(dict(fsdp=-1, num_devices=0))
    factory = lambda data, *, seed, process_index, process_count, batch_size: _ConcatenatedShards(
        data, seed, batch_size
    )
    single = train_and_evaluate(config, str(tmp_path / "single"), dataset_factory=factory)
    np.testing.assert_allclose(multi, single["losses"], rtol=1e-6, atol=0)
