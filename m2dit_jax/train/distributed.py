"""Multi-host start-up and host-local -> global batch assembly.

``initialize(config.distributed)`` calls ``jax.distributed.initialize`` when the environment
describes a cluster:
  * explicit: ``coordinator_address``/``num_processes``/``process_id`` in the config, or the
    ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` variables
    (GKE JobSet / any launcher);
  * SLURM (``srun``): jax reads ``SLURM_*`` itself;
  * Cloud TPU VM pods and GKE TPU slices: jax reads the TPU metadata itself (no arguments);
  * Open MPI (``mpirun``): jax reads ``OMPI_MCA_orte_hnp_uri``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)


def cluster_environment(cfg: Any) -> str | None:
    """The kind of multi-process environment present, or None for a single process."""
    if cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "explicit"
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in os.environ:
        return "openmpi"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    if os.path.exists("/dev/accel0") and os.environ.get("TPU_SKIP_MDS_QUERY") is None:
        return "tpu"  # a Cloud TPU VM: jax asks the metadata server (works for 1 host too)
    return None


def _explicit_args(cfg: Any) -> dict[str, Any]:
    address = cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num = int(cfg.num_processes) or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
    pid = int(cfg.process_id)
    if pid < 0:
        pid = int(os.environ.get("JAX_PROCESS_ID", os.environ.get("JOB_COMPLETION_INDEX", "-1")))
    missing = [
        name
        for name, bad in (
            ("distributed.coordinator_address / JAX_COORDINATOR_ADDRESS", not address),
            ("distributed.num_processes / JAX_NUM_PROCESSES", num <= 0),
            ("distributed.process_id / JAX_PROCESS_ID", pid < 0),
        )
        if bad
    ]
    if missing:
        raise ValueError(f"multi-host start-up needs {', '.join(missing)}")
    return dict(coordinator_address=address, num_processes=num, process_id=pid)


def initialize(cfg: Any) -> bool:
    """Starts JAX's distributed runtime if the config/environment asks for it.

    Must run before anything touches a JAX backend. Returns True if initialised here.
    """
    if cfg.cpu_collectives:
        try:
            jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
        except (AttributeError, KeyError, ValueError) as e:  # option renamed in another jax
            log.warning("could not select CPU collectives %r: %s", cfg.cpu_collectives, e)
    if cfg.initialize == "never" or jax.distributed.is_initialized():
        return False
    env = cluster_environment(cfg)
    if env is None and cfg.initialize == "auto":
        return False
    if env == "explicit" or (cfg.initialize == "always" and env is None):
        kwargs = _explicit_args(cfg)
    else:
        kwargs = {}
    log.info("jax.distributed.initialize (%s) %s", env or "explicit", kwargs)
    jax.distributed.initialize(**kwargs)
    log.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def local_batch_size(global_batch: int) -> int:
    count = jax.process_count()
    if global_batch % count:
        raise ValueError(f"train.batch_size={global_batch} is not divisible by {count} processes")
    return global_batch // count


def to_global(local_batch: dict[str, np.ndarray], shardings: dict[str, Any]) -> dict[str, Any]:
    """Host-local rows -> global jax.Arrays (rows of process p follow those of p-1)."""
    out = {}
    for k, v in local_batch.items():
        sharding = shardings[k]
        if jax.process_count() == 1:
            out[k] = jax.device_put(v, sharding)
        else:
            out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(v))
    return out
