"""Joining a multi-controller JAX run: several processes, one global set of devices.

Each process runs the same program; `jax.devices()` then lists every process's devices and a
mesh may span them. On CPU the collectives between processes go over gloo (TCP), so a
multi-process mesh runs on one machine over loopback as it would across hosts.
"""

from __future__ import annotations

import jax

from tests.infra.devices import configure_jax


class ClusterError(ValueError):
    """A multi-process configuration that cannot work."""


def join_cluster(coordinator: str, num_processes: int, process_id: int, local_cpu_devices: int) -> None:
    """Join as `process_id` of `num_processes`; must run before JAX starts its backends."""
    if num_processes < 1:
        raise ClusterError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ClusterError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    if ":" not in coordinator:
        raise ClusterError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    configure_jax(cpu_devices=local_cpu_devices)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
