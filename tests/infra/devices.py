"""Where computations run: the CPU golden and the device under test (CPU or Tenstorrent)."""

from __future__ import annotations

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
