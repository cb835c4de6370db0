"""Session set-up: the number of simulated CPU devices, and where the device under test runs."""

import os

import pytest

# JAX fixes the number of host devices when its CPU backend starts, so it is set here, when
# pytest imports this file and before any test module imports jax. 32 devices make every
# mesh up to 1x32 and 8x4 exist; an explicit JAX_NUM_CPU_DEVICES from the user wins.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "32")

from tests.infra.devices import PLATFORMS, DeviceUnavailableError, platform_devices  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        choices=PLATFORMS,
        default="cpu",
        help="where the device under test runs: cpu (simulated devices) or tt (Tenstorrent PJRT "
        "plugin); goldens always run on one CPU device",
    )


@pytest.fixture(scope="session")
def dut_platform(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--device")


@pytest.fixture(scope="session")
def dut_devices(dut_platform: str) -> list:
    """The devices of the platform under test; skips (with the reason) where it has none."""
    try:
        return platform_devices(dut_platform)
    except DeviceUnavailableError as err:
        pytest.skip(str(err))
