"""Distributed start-up: this process joins the others of a multi-process run (docs/accelerators.md)."""

from __future__ import annotations

import os

import jax


def _multi_process_cluster() -> bool:
    """True under a launcher that started several processes and that JAX auto-detects."""
    env = os.environ
    # Set per process by `mpirun` and `srun` (not by a bare `sbatch` script, which is one process).
    counts = (env.get("OMPI_COMM_WORLD_SIZE"), env.get("SLURM_STEP_NUM_TASKS"))
    if any(c is not None and c.isdigit() and int(c) > 1 for c in counts):
        return True
    # Multi-host TPU slices on GKE list their workers here.
    return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def maybe_initialize_distributed(force: bool = False) -> bool:
    """Calls `jax.distributed.initialize()` when this is one process of several.

    Call it first thing, before any other JAX call. Explicit setup: set
    JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID on every process. Otherwise jobs launched by `mpirun`
    (Open MPI) or `srun` (Slurm) with more than one task, and multi-host GKE
    TPU jobs, are detected and JAX finds the rest itself; `force=True` asks JAX
    to auto-detect in any other environment it supports (e.g. a Cloud TPU VM
    pod). Anything else (one host, a laptop, Colab) is a no-op. Returns
    whether JAX runs distributed.
    """
    if jax.distributed.is_initialized():
        return True
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        num, pid = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
        jax.distributed.initialize(address, num_processes=None if num is None else int(num),
                                   process_id=None if pid is None else int(pid))
        return True
    if force or _multi_process_cluster():
        jax.distributed.initialize()
        return True
    return False
