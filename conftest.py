"""Session set-up: the number of simulated CPU devices, and where the device under test runs."""

import pytest

from tests.infra.devices import PLATFORMS, DeviceUnavailableError, configure_jax, platform_devices
from tests.infra.mesh import MeshError, make_mesh

# Before any test starts a JAX backend: 32 simulated CPU devices make every mesh up to 1x32
# and 8x4 exist, and XLA rounds exactly where the model casts (see configure_jax).
configure_jax(cpu_devices=32)


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Benchmarks take minutes and measure speed, not correctness: they run only when selected
    with -m (e.g. `pytest -m benchmark`)."""
    if "benchmark" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="a benchmark: run with pytest -m benchmark")
    for item in items:
        if "benchmark" in item.keywords:
            item.add_marker(skip)


MESHES = ("2x4", "1x8", "1x32", "8x4")


@pytest.fixture(scope="session", params=MESHES, ids=[f"mesh_{m}" for m in MESHES])
def mesh(request: pytest.FixtureRequest, dut_devices: list):
    """Each tensor-parallel mesh (axes batch x model) over the devices under test."""
    try:
        return make_mesh(request.param, dut_devices)
    except MeshError as err:
        pytest.skip(str(err))
