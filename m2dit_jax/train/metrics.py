"""Training metrics: TensorBoard event files (tensorboardX, no TensorFlow), a JSONL file and a
tqdm progress bar with ETA — written by process 0 only.

Also the throughput arithmetic: video tokens/s and model FLOPs utilisation (MFU) against the
device's peak FLOP rate.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

# Dense peak FLOP/s per device in bf16 (vendor numbers), by substrings of device_kind.
PEAK_TFLOPS = (
    ("v6", 918.0),  # TPU v6e (Trillium)
    ("v5 lite", 197.0),  # TPU v5e reports "TPU v5 lite" (checked before plain "v5")
    ("v5e", 197.0),
    ("v5p", 459.0),
    ("tpu v5", 459.0),  # TPU v5p reports "TPU v5"
    ("v4", 275.0),
    ("h200", 989.0),
    ("h100", 989.0),
    ("gh200", 989.0),
    ("b200", 2250.0),
    ("a100", 312.0),
    ("l4", 121.0),
)


def measured_cpu_tflops(size: int = 1024, repeats: int = 3) -> float:
    """Achieved f32 matmul rate of one CPU device (TFLOP/s): the MFU reference on CPU."""
    import jax.numpy as jnp

    x = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best / 1e12


def peak_tflops_per_device(override: float = 0.0, device: Any = None) -> tuple[float, str]:
    """(TFLOP/s, how it was obtained) for MFU: the override, the vendor table, or measured."""
    if override and override > 0:
        return float(override), "config"
    device = device or jax.devices()[0]
    kind = str(getattr(device, "device_kind", "")).lower()
    for key, tflops in PEAK_TFLOPS:
        if key in kind:
            return tflops, f"table ({device.device_kind})"
    if device.platform == "cpu":
        return measured_cpu_tflops(), "measured f32 matmul (cpu)"
    return 0.0, f"unknown device kind {kind!r}: set train.peak_tflops_per_device"


def throughput(
    step_time_s: float,
    global_batch: int,
    video_tokens_per_sample: int,
    flops_per_sample: float,
    num_devices: int,
    peak_tflops: float,
) -> dict[str, float]:
    """steps/s, video tokens/s (global), achieved TFLOP/s per device and MFU (0..1)."""
    if step_time_s <= 0:
        return {}
    flops = flops_per_sample * global_batch / step_time_s
    out = {
        "steps_per_s": 1.0 / step_time_s,
        "video_tokens_per_s": video_tokens_per_sample * global_batch / step_time_s,
        "tflops_per_device": flops / num_devices / 1e12,
    }
    if peak_tflops > 0:
        out["mfu"] = flops / num_devices / (peak_tflops * 1e12)
    return out


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flattens metrics to named floats: vectors become name/0, name/1, ..."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        arr = np.asarray(v)
        if arr.ndim == 0:
            out[k] = float(arr)
        else:
            for i, x in enumerate(arr.reshape(-1)):
                out[f"{k}/{i}"] = float(x)
    return out


class MetricsWriter:
    """Writes scalars to ``WORKDIR/tb`` (TensorBoard) and ``WORKDIR/metrics.jsonl``."""

    def __init__(
        self,
        workdir: str,
        *,
        tensorboard: bool = True,
        jsonl: bool = True,
        enabled: bool | None = None,
    ):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tb"))
        if jsonl:
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        scalars = _scalars(metrics)
        if not self.enabled:
            return scalars
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
        return scalars

    def write_text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(tag, text, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


class ProgressBar:
    """A tqdm bar over [start, total) steps with ETA and the latest loss; no-op if disabled."""

    def __init__(self, start: int, total: int, *, enabled: bool):
        self._bar = None
        if enabled and jax.process_index() == 0:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=start, unit="step", dynamic_ncols=True, smoothing=0.1
            )

    def update(self, n: int = 1, **postfix: float) -> None:
        if self._bar is None:
            return
        self._bar.update(n)
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message)
        elif jax.process_index() == 0:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
