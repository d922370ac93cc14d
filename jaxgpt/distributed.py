"""Multi-process start-up through JAX's own runtime (jax.distributed), and agreement checks.

How a process joins a job, first match wins:
1. explicit settings: --config.dist.coordinator/num_processes/process_id, else the environment
   variables JAXGPT_COORDINATOR / JAXGPT_NUM_PROCESSES / JAXGPT_PROCESS_ID;
2. a cluster JAX detects itself (TPU pod slice, SLURM allocation, Open MPI): initialize() with
   no arguments;
3. neither: a single process, with nothing to set up.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import jax
import numpy as np

from jaxgpt.config.run import DistConfig


def _detected_cluster(env: Mapping[str, str]) -> str | None:
    """Name of a multi-process cluster environment JAX can initialize from, if any."""
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "mpi"
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):  # TPUs under GKE
        return "tpu"
    # Cloud TPU VMs: JAX reads the slice from the metadata server; on a single-host slice
    # initialize() just yields one process.
    if env.get("TPU_ACCELERATOR_TYPE") or env.get("TPU_NAME") or os.path.exists("/dev/accel0"):
        return "tpu"
    return None


def init_arguments(cfg: DistConfig, env: Mapping[str, str] | None = None) -> dict | None:
    """jax.distributed.initialize keyword arguments, or None for a single process."""
    env = os.environ if env is None else env
    if not cfg.enabled:
        return None
    coordinator = cfg.coordinator or env.get("JAXGPT_COORDINATOR", "")
    timeouts = {
        "initialization_timeout": cfg.initialization_timeout_s,
        "heartbeat_timeout_seconds": cfg.heartbeat_timeout_s,
    }
    if coordinator:
        num = cfg.num_processes or int(env.get("JAXGPT_NUM_PROCESSES", "0"))
        pid = cfg.process_id if cfg.process_id >= 0 else int(env.get("JAXGPT_PROCESS_ID", "-1"))
        if num < 1 or not 0 <= pid < num:
            raise ValueError(
                f"dist.coordinator={coordinator!r} needs dist.num_processes >= 1 and "
                f"0 <= dist.process_id < num_processes (got {num} and {pid}); set them or "
                "JAXGPT_NUM_PROCESSES / JAXGPT_PROCESS_ID"
            )
        return {
            "coordinator_address": coordinator,
            "num_processes": num,
            "process_id": pid,
            **timeouts,
        }
    if _detected_cluster(env):
        return timeouts
    return None


def initialize(cfg: DistConfig) -> bool:
    """Join the job if there is one; returns whether this is a multi-process run."""
    args = init_arguments(cfg)
    if args is None:
        return False
    if not jax.distributed.is_initialized():
        jax.distributed.initialize(**args)
    return jax.process_count() > 1


def fingerprint(text: str) -> np.ndarray:
    """A short hash of text as int32s, for comparing across processes."""
    digest = hashlib.sha256(text.encode()).digest()[:16]
    return np.frombuffer(digest, dtype=np.int32).copy()


def check_same_everywhere(name: str, text: str) -> None:
    """Fail on every process if `text` (e.g. the resolved config) differs between processes."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    mine = fingerprint(text)
    everyone = np.asarray(multihost_utils.process_allgather(mine))
    differ = [i for i, row in enumerate(everyone) if not np.array_equal(row, everyone[0])]
    if differ:
        raise ValueError(
            f"the {name} differs between processes: processes {differ} disagree with process 0. "
            "Start every process with the same command and files."
        )


def any_process(flag: bool) -> bool:
    """True on every process if flag is true on any (e.g. one host received SIGTERM)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([int(flag)], np.int32))
    return bool(np.asarray(flags).any())


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
