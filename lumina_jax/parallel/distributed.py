"""Multi-host start-up: `jax.distributed.initialize` when the environment asks for it.

Explicit settings win (arguments, or the variables `JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` that `launch/local.sh` and the cluster launchers
export). Otherwise a SLURM job with several tasks or a multi-host TPU VM is detected
and JAX's own cluster detection fills in the details. A single process does nothing.
"""

from __future__ import annotations

import os

import jax


def requested(env=os.environ) -> bool:
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return True
    return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """Initialise the distributed runtime if asked to; returns whether it did."""
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if not (coordinator_address or requested(env)):
        return False
    # CPU devices of different processes talk through gloo (accelerators are unaffected).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True
