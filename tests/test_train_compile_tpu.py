"""The TPU compiler's view on this CPU machine: the train step compiled for a v5p-8 topology.

Runs in subprocesses with libtpu from ``.venv/libtpu`` (``make aot``; ``make test`` installs
it). Skipped only when libtpu is absent outside CI; under ``CI=true`` a missing libtpu fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from m2dit_jax.train import aot

ROOT = aot.REPO_ROOT

if not aot.libtpu_installed() and os.environ.get("CI", "").lower() not in ("true", "1"):
    pytest.skip(f"libtpu is not installed ({aot.INSTALL_HINT})", allow_module_level=True)


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    assert aot.libtpu_installed(), f"CI needs libtpu in {aot.libtpu_dir()}: {aot.INSTALL_HINT}"
    env = aot.libtpu_env()
    env.pop("XLA_FLAGS", None)  # no simulated CPU devices in the TPU-compiling process
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_tiny_train_step_compiles_for_v5p_8_with_splash(tmp_path):
    out = tmp_path / "report.json"
    overrides = dict(
        num_layers=1,
        head_dim=64,
        attention_backend="auto",  # -> splash: the abstract mesh's devices are TPUs
        dtype="bfloat16",
        remat="full",
        scan_layers=True,
    )
    proc = _run(
        ["-m", "launch.compile", "--config", "configs/shapes_tiny.py", "--topology", "v5p-8"]
        + [f"--config.model.{k}={v}" for k, v in overrides.items()]
        + ["--config.train.batch_size=8", "--json", str(out)]
    )
    r = json.loads(out.read_text())
    assert r["topology"] == "v5p-8" and r["num_chips"] == 4
    assert r["mesh"] == dict(data=1, fsdp=4, context=1, tensor=1)
    assert r["uses_mosaic"], "the splash (Mosaic) kernel is not in the lowered program"
    for key in ("argument_bytes", "output_bytes", "temp_bytes", "code_bytes", "peak_bytes"):
        assert r[key] > 0, key
    assert r["fits"] and r["hbm_bytes"] == 95 * aot.GIB and not r["error"]
    assert "Mosaic kernel in program: yes" in proc.stdout and "fits" in proc.stdout


_HYBRID = """
import json
from m2dit_jax.sharding import make_mesh
from m2dit_jax.train import aot
devices = aot.topology_devices("v5p-8", num_slices=2)
mesh = make_mesh(dict(data=2, fsdp=4), devices, dcn=dict(data=2))
slices = [sorted({d.slice_index for d in mesh.devices[i].reshape(-1)}) for i in range(2)]
try:
    make_mesh(dict(fsdp=8), devices)
    error = ""
except ValueError as e:
    error = str(e)
print(json.dumps(dict(shape=dict(mesh.shape), slices=slices, error=error)))
"""


def test_two_slices_make_a_hybrid_mesh_with_one_slice_per_dcn_row():
    result = json.loads(_run(["-c", _HYBRID], timeout=120).stdout.strip().splitlines()[-1])
    assert result["shape"] == dict(data=2, fsdp=4, context=1, tensor=1)
    assert result["slices"] == [[0], [1]]
    assert "span 2 TPU slices" in result["error"] and "mesh.dcn_data" in result["error"]


def test_offload_remat_moves_the_layer_inputs_to_host_memory_on_tpu(tmp_path):
    # remat "offload_input": the scanned blocks' inputs live in pinned host memory; the TPU
    # compiler accepts it and reports them as host temporaries, off the chip's HBM.
    reports = {}
    for remat in ("full", "offload_input"):
        out = tmp_path / f"{remat}.json"
        overrides = dict(num_layers=2, head_dim=64, attention_backend="auto", dtype="bfloat16")
        _run(
            ["-m", "launch.compile", "--config", "configs/shapes_tiny.py", "--topology", "v6e-8"]
            + [f"--config.model.{k}={v}" for k, v in overrides.items()]
            + ["--config.model.scan_layers=True", f"--config.model.remat={remat}"]
            + ["--config.train.batch_size=8", "--json", str(out)]
        )
        reports[remat] = json.loads(out.read_text())
    full, offload = reports["full"], reports["offload_input"]
    # (a tiny model's HBM temporaries do not shrink: the transfers need staging buffers)
    assert full["host_temp_bytes"] == 0 and offload["host_temp_bytes"] > 0
    assert offload["param_bytes_per_device"] * 8 >= offload["param_bytes_total"]
