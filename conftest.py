# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Session set-up: the number of simulated CPU devices, and where the device under test runs."""

import os
import sys

import pytest

from tests.infra.devices import (
    CPU,
    PLATFORMS,
    TT,
    DeviceUnavailableError,
    DeviceUnderTest,
    configure_jax,
    platform_devices,
)
from tests.infra.equivalence import COMPILE_ONLY_PROPERTY, HOST_SIDE_PROPERTY
from tests.infra.mesh import MeshError, make_mesh
from tests.infra.tt_plugin import (
    COMPILE_ONLY_ENV,
    TTPluginError,
    enable_compile_only,
    has_card,
    plugin_version,
    start_backend,
)

# Why the device under test is unavailable, when it is (set in pytest_configure).
_unavailable: str | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        choices=PLATFORMS,
        default=CPU,
        help="where the device under test runs: cpu (simulated devices) or tt (Tenstorrent PJRT "
        "plugin); goldens always run on one CPU device",
    )
    parser.addoption(
        "--tt-compile-only",
        action="store_true",
        help="with --device tt and no card: compile every device-under-test workload with the TT compiler "
        "(a mock system descriptor is made once per plugin version) and check its collectives; numerics are "
        "not compared",
    )
    parser.addoption(
        "--cpu-kernels",
        action="store_true",
        help="also run the opt-in CPU acceleration package's tests (qwen2_5/cpu_acceleration: "
        "C++ kernels built with the host's compiler); the golden never uses them",
    )


def _progress(line: str) -> None:
    print(line, file=sys.__stderr__, flush=True)


def pytest_configure(config: pytest.Config) -> None:
    """Choose JAX's backends before any test starts one: 32 simulated CPU devices make every mesh
    up to 1x32 and 8x4 exist, XLA rounds exactly where the model casts (see configure_jax), and
    the TT backend joins only when asked for and usable."""
    global _unavailable
    platform, compile_only = config.getoption("--device"), config.getoption(
        "--tt-compile-only"
    )
    if compile_only and platform != TT:
        raise pytest.UsageError(
            "--tt-compile-only compiles for the TT plugin: use it with --device tt"
        )
    if platform == TT and os.environ.get(COMPILE_ONLY_ENV) and not compile_only:
        raise pytest.UsageError(
            f"{COMPILE_ONLY_ENV} is set, so the TT plugin returns zero-filled buffers and every comparison would "
            "fail: add --tt-compile-only, or unset it on a machine with a card"
        )
    if platform == TT:
        if plugin_version() is None:
            _unavailable = "the TT PJRT plugin is not installed: pip install -r requirements-tt.txt"
        elif compile_only:
            try:
                enable_compile_only(_progress)
            except TTPluginError as err:
                raise pytest.UsageError(str(err)) from err
        elif not has_card():
            _unavailable = "no Tenstorrent card here (/dev/tenstorrent): add --tt-compile-only to compile for one"
    configure_jax(cpu_devices=32, platform=platform if _unavailable is None else CPU)
    if platform == TT and _unavailable is None:
        start_backend()


@pytest.fixture(scope="session")
def dut(pytestconfig: pytest.Config) -> DeviceUnderTest:
    """The platform under test and its devices; skips (with the reason) where it has none."""
    platform = pytestconfig.getoption("--device")
    if _unavailable is not None:
        pytest.skip(_unavailable)
    try:
        devices = platform_devices(platform)
    except DeviceUnavailableError as err:
        pytest.skip(str(err))
    return DeviceUnderTest(
        platform,
        tuple(devices),
        compile_only=pytestconfig.getoption("--tt-compile-only"),
    )


def _params(item: pytest.Item) -> dict:
    callspec = getattr(item, "callspec", None)
    return {} if callspec is None else callspec.params


def _tier_by_case(item: pytest.Item) -> None:
    """Tiers of single cases of a parametrized test: `push_where(**params)` puts the cases whose
    parameters (fixture parameters such as `mesh` included) equal all of those in `push`;
    `nightly_unless(**params)` moves every case to `nightly` but those with one of those values
    (a tuple: any of its values)."""
    params = _params(item)

    def matches(key: str, value) -> bool:  # a tuple of values: any of them
        return (
            params.get(key) in value
            if isinstance(value, tuple)
            else params.get(key) == value
        )

    for marker in item.iter_markers("push_where"):
        if all(matches(key, value) for key, value in marker.kwargs.items()):
            item.add_marker(pytest.mark.push)
    for marker in item.iter_markers("nightly_unless"):
        if not any(matches(key, value) for key, value in marker.kwargs.items()):
            item.add_marker(pytest.mark.nightly)


@pytest.hookimpl(tryfirst=True)  # before -m selects by markers
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Give single cases their tier (_tier_by_case), then deselect what this run is not for, so
    that a skip always means something is missing: benchmarks (minutes of speed measurement)
    unless selected with -m (e.g. `pytest -m benchmark`), and under --device tt every test
    without a device under test (it ran in the CPU run already)."""
    benchmarks = "benchmark" in (config.getoption("-m") or "")
    on_tt = config.getoption("--device") == TT
    keep, dropped = [], []
    for item in items:
        _tier_by_case(item)
        cpu_only = on_tt and "dut" not in getattr(item, "fixturenames", ())
        (
            dropped
            if cpu_only or ("benchmark" in item.keywords and not benchmarks)
            else keep
        ).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_terminal_summary(
    terminalreporter, exitstatus: int, config: pytest.Config
) -> None:
    """Say plainly what a compile-only run did and did not check."""
    if not config.getoption("--tt-compile-only"):
        return
    passed = terminalreporter.stats.get("passed", [])
    compiled, host_side = (
        sum(any(tuple(p) == prop for p in report.user_properties) for report in passed)
        for prop in (COMPILE_ONLY_PROPERTY, HOST_SIDE_PROPERTY)
    )
    terminalreporter.write_sep(
        "=",
        f"TT compile-only: {compiled} of {len(passed)} passed tests compiled their device-under-test workloads "
        f"with the TT plugin and checked the TTNN collectives, {host_side} checked the host side only; numerics "
        f"were not compared (the plugin returns zeros)",
    )


MESHES = ("2x4", "1x8", "1x32", "8x4")


@pytest.fixture(scope="session", params=MESHES, ids=[f"mesh_{m}" for m in MESHES])
def mesh(request: pytest.FixtureRequest, dut: DeviceUnderTest):
    """Each tensor-parallel mesh (axes batch x model) over the devices under test."""
    try:
        return make_mesh(request.param, dut.devices)
    except MeshError as err:
        pytest.skip(str(err))
