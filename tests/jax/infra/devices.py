# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Where computations run: the CPU golden and the device under test (CPU or Tenstorrent)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import jax

from tests.jax.infra import tt_plugin

CPU = "cpu"
TT = "tt"
PLATFORMS = (CPU, TT)


class DeviceUnavailableError(RuntimeError):
    """The requested platform has no devices in this process."""


@dataclass(frozen=True)
class DeviceUnderTest:
    """The platform under test and its devices.

    compile_only: the platform compiles programs but holds no data (the TT plugin without a card
    returns zero-filled buffers), so a workload is checked by compiling it, never by its output.
    """

    platform: str
    devices: tuple[jax.Device, ...]
    compile_only: bool = False


def _query(devices: Callable[[], list], platform: str) -> list:
    """`devices()` of `platform`. A session that lists a platform it cannot start (tt-xla's lists
    `cpu,tt`, whether or not a card or plugin is there) fails JAX's first backend query about
    *that* platform; JAX keeps the backends that did start, so a query for another is asked again.
    """
    try:
        return devices()
    except RuntimeError as err:
        if f"backend '{platform}'" in str(err):
            raise
        return devices()


def golden_device() -> jax.Device:
    """The device goldens run on: always the first CPU device, whatever is under test."""
    return _query(lambda: jax.local_devices(backend=CPU), CPU)[0]


def platform_devices(platform: str) -> list[jax.Device]:
    """All devices of `platform` ("cpu" or "tt"), in JAX's order."""
    if platform not in PLATFORMS:
        raise ValueError(
            f"unknown platform {platform!r}: choose one of {', '.join(PLATFORMS)}"
        )
    try:
        return list(_query(lambda: jax.devices(platform), platform))
    except RuntimeError as err:
        hint = (
            "install the Tenstorrent PJRT plugin (pip install jax-tt-plugin); without a Tenstorrent card, "
            "compile only (TT_COMPILE_ONLY_SYSTEM_DESC)"
            if platform == TT
            else "check the JAX installation"
        )
        raise DeviceUnavailableError(
            f"no {platform!r} devices in this process ({err}); {hint}"
        ) from err


def configure_jax(cpu_devices: int, platform: str = CPU) -> None:
    """Set JAX up before its backends start: the backends, `cpu_devices` simulated CPU devices,
    exact rounding.

    Backends: only the CPU, or the CPU *first* and then `platform`. An installed PJRT plugin
    otherwise joins every process: without its hardware the first device query fails, and with
    a compile-only descriptor it becomes JAX's default backend, so ordinary `jnp` code (and a
    golden) would silently compute zeros. With the CPU first, it stays JAX's default and a
    device under test is only ever reached through explicit devices or meshes. A CPU-only
    process does not even load the TT plugin (tt_plugin.keep_out_of_this_process).

    XLA may keep low-precision intermediates in float32 where that is cheaper
    (xla_allow_excess_precision, on by default). Where it does depends on how the program was
    partitioned, so a mesh and a single device would round a bfloat16 model at different
    points. Turned off, every program rounds exactly where its source casts, as PyTorch does.

    An explicit JAX_NUM_CPU_DEVICES or xla_allow_excess_precision in the environment wins.
    """
    if platform not in PLATFORMS:
        raise ValueError(
            f"unknown platform {platform!r}: choose one of {', '.join(PLATFORMS)}"
        )
    jax.config.update("jax_platforms", CPU if platform == CPU else f"{CPU},{platform}")
    if platform == CPU:
        tt_plugin.keep_out_of_this_process()
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_allow_excess_precision" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_allow_excess_precision=false".strip()
    if "JAX_NUM_CPU_DEVICES" not in os.environ:
        jax.config.update("jax_num_cpu_devices", cpu_devices)
