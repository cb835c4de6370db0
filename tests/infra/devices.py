"""Where computations run: the CPU golden and the device under test (CPU or Tenstorrent)."""

from __future__ import annotations

import os

import jax

CPU = "cpu"
TT = "tt"
PLATFORMS = (CPU, TT)


class DeviceUnavailableError(RuntimeError):
    """The requested platform has no devices in this process."""


def golden_device() -> jax.Device:
    """The device goldens run on: always the first CPU device, whatever is under test."""
    return jax.devices(CPU)[0]


def platform_devices(platform: str) -> list[jax.Device]:
    """All devices of `platform` ("cpu" or "tt"), in JAX's order."""
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}: choose one of {', '.join(PLATFORMS)}")
    try:
        return list(jax.devices(platform))
    except RuntimeError as err:
        hint = (
            "install the Tenstorrent PJRT plugin (pjrt-plugin-tt) on a machine with a Tenstorrent card"
            if platform == TT
            else "check the JAX installation"
        )
        raise DeviceUnavailableError(f"no {platform!r} devices in this process ({err}); {hint}") from err


def configure_jax(cpu_devices: int) -> None:
    """Set JAX up before its backends start: `cpu_devices` simulated CPU devices, exact rounding.

    XLA may keep low-precision intermediates in float32 where that is cheaper
    (xla_allow_excess_precision, on by default). Where it does depends on how the program was
    partitioned, so a mesh and a single device would round a bfloat16 model at different
    points. Turned off, every program rounds exactly where its source casts, as PyTorch does.
    An explicit JAX_NUM_CPU_DEVICES or xla_allow_excess_precision in the environment wins.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_allow_excess_precision" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_allow_excess_precision=false".strip()
    if "JAX_NUM_CPU_DEVICES" not in os.environ:
        jax.config.update("jax_num_cpu_devices", cpu_devices)
