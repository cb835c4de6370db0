# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Joining a multi-controller JAX run: several processes, one global set of devices.

Each process runs the same program; `jax.devices()` then lists every process's devices and a
mesh may span them. On CPU the collectives between processes go over gloo (TCP), so a
multi-process mesh runs on one machine over loopback as it would across hosts.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import jax

from tests.jax.infra.devices import configure_jax

DEFAULT_TIMEOUT = 300.0  # seconds to wait for every process to join


class ClusterError(ValueError):
    """A multi-process configuration that cannot work."""


def check_cluster(
    coordinator: str | None, num_processes: int, process_id: int, timeout: float
) -> None:
    """Refuse incomplete or malformed multi-process flags before anything starts (a malformed
    port crashes JAX's coordination service outright)."""
    if coordinator is None:
        if num_processes != 1 or process_id != 0:
            raise ClusterError(
                "--num-processes and --process-id need --coordinator HOST:PORT (process 0's address), "
                "the same in every process"
            )
        return
    host, colon, port = coordinator.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ClusterError(
            f"--coordinator must be HOST:PORT with a port in 1..65535, got {coordinator!r}"
        )
    if num_processes < 1:
        raise ClusterError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ClusterError(
            f"--process-id must be in [0, {num_processes}), got {process_id}"
        )
    if not (math.isfinite(timeout) and timeout > 0):
        raise ClusterError(
            f"--cluster-timeout must be a positive number of seconds, got {timeout}"
        )


def _give_up(message: str) -> None:
    # JAX's own deadline aborts the process with a C++ stack trace; this one ends it cleanly first.
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(2)


def join_cluster(
    coordinator: str,
    num_processes: int,
    process_id: int,
    local_cpu_devices: int,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Join as `process_id` of `num_processes`, waiting at most `timeout` seconds for the others
    (saying so, and ending with an error if they do not come); must run before JAX's backends.
    """
    check_cluster(coordinator, num_processes, process_id, timeout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    configure_jax(cpu_devices=local_cpu_devices)
    print(
        f"process {process_id} of {num_processes}: waiting up to {timeout:g} s for every process to join at "
        f"{coordinator}",
        file=sys.stderr,
        flush=True,
    )
    watchdog = threading.Timer(
        timeout,
        _give_up,
        [
            f"process {process_id}: not every one of the {num_processes} processes joined at {coordinator} within "
            f"{timeout:g} s: start each with the same --coordinator and --num-processes and its own --process-id "
            "(or raise --cluster-timeout)"
        ],
    )
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=int(timeout) + 60,
        )
    finally:
        watchdog.cancel()
