# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The package's pytest plugin (the root conftest loads it): its options, markers, the device
under test and the mesh fixtures, tiers of single cases, and the session's JAX set-up.

It coexists with tt-xla's own harness (tests/conftest.py): its hooks touch only the items of the
folders a conftest registers (`register_tests`), and JAX is set up only in a session that runs
some of them. In tt-xla's session, tt-xla's fixture then configures JAX its own way (platforms
`cpu,tt`, 8 CPU devices, x64), and the tests run under that.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.jax.infra.devices import (
    CPU,
    PLATFORMS,
    TT,
    DeviceUnavailableError,
    DeviceUnderTest,
    configure_jax,
    platform_devices,
)
from tests.jax.infra.equivalence import COMPILE_ONLY_PROPERTY, HOST_SIDE_PROPERTY
from tests.jax.infra.mesh import MeshError, make_mesh
from tests.jax.infra.tt_plugin import (
    COMPILE_ONLY_ENV,
    INSTALL,
    TTPluginError,
    enable_compile_only,
    has_card,
    installed_plugin,
    start_backend,
)

# Markers tt-xla's pytest.ini lacks, registered here so that they are known in its sessions too.
MARKERS = (
    "push_where(**params): the cases of a parametrized test whose parameters equal these are in the push tier",
    "nightly_unless(**params): the cases of a parametrized test are nightly unless a parameter equals one of these",
    "benchmark: speed and memory measurements (pytest-benchmark); deselected unless -m names them",
    "multihost: several processes joined into one mesh",
    "record_test_properties(**properties): tt-xla's test properties (its conftest validates and reports them)",
)
MESHES = ("2x4", "1x8", "1x32", "8x4")
_FOLDERS = pytest.StashKey[list]()  # the folders whose items are this package's
_UNAVAILABLE = pytest.StashKey[str]()  # why the device under test is unavailable


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jax-tensor-parallel", "the JAX tensor-parallel tests")
    group.addoption(
        "--device",
        choices=PLATFORMS,
        default=CPU,
        help="where the device under test runs: cpu (simulated devices) or tt (Tenstorrent PJRT "
        "plugin); goldens always run on one CPU device",
    )
    group.addoption(
        "--tt-compile-only",
        action="store_true",
        help="with --device tt and no card: compile every device-under-test workload with the TT "
        "compiler (a mock system descriptor is made once per plugin version); numerics are not "
        "compared",
    )
    group.addoption(
        "--cpu-kernels",
        action="store_true",
        help="also run the opt-in CPU acceleration package's tests (C++ kernels built with the "
        "host's compiler); the golden never uses them",
    )


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    config.stash.setdefault(_FOLDERS, [])
    if config.getoption("--tt-compile-only") and config.getoption("--device") != TT:
        raise pytest.UsageError(
            "--tt-compile-only compiles for the TT plugin: use it with --device tt"
        )
    if config.getoption("--device") == TT and os.environ.get(COMPILE_ONLY_ENV):
        if not config.getoption("--tt-compile-only"):
            raise pytest.UsageError(
                f"{COMPILE_ONLY_ENV} is set, so the TT plugin returns zero-filled buffers and "
                "every comparison would fail: add --tt-compile-only, or unset it on a machine "
                "with a card"
            )


def register_tests(config: pytest.Config, folder: Path) -> None:
    """Make the items under `folder` this plugin's (a conftest of the package calls it)."""
    config.stash.setdefault(_FOLDERS, []).append(folder.resolve())


def _ours(config: pytest.Config, item: pytest.Item) -> bool:
    return any(item.path.is_relative_to(f) for f in config.stash[_FOLDERS])


def _progress(line: str) -> None:
    print(line, file=sys.__stderr__, flush=True)


def _set_up_jax(config: pytest.Config) -> None:
    """JAX's backends before any test starts one: 32 simulated CPU devices make every mesh up to
    1x32 and 8x4 exist, XLA rounds exactly where the model casts (devices.configure_jax), and the
    TT backend joins only when asked for and usable."""
    platform, unavailable = config.getoption("--device"), None
    if platform == TT:
        if installed_plugin() is None:
            unavailable = f"the TT PJRT plugin is not installed: {INSTALL}"
        elif config.getoption("--tt-compile-only"):
            try:
                enable_compile_only(_progress)
            except TTPluginError as err:
                raise pytest.UsageError(str(err)) from err
        elif not has_card():
            unavailable = "no Tenstorrent card here (/dev/tenstorrent): add --tt-compile-only to compile for one"
    configure_jax(cpu_devices=32, platform=platform if unavailable is None else CPU)
    config.stash[_UNAVAILABLE] = unavailable


def pytest_collection_finish(session: pytest.Session) -> None:
    """Set JAX up only for a session that runs some of the package's tests."""
    if any(_ours(session.config, item) for item in session.items):
        _set_up_jax(session.config)


@pytest.fixture(scope="session")
def dut(pytestconfig: pytest.Config) -> DeviceUnderTest:
    """The platform under test and its devices; skips (with the reason) where it has none."""
    unavailable = pytestconfig.stash.get(_UNAVAILABLE, None)
    if unavailable is not None:
        pytest.skip(unavailable)
    platform = pytestconfig.getoption("--device")
    try:
        if platform == TT:
            start_backend()
        devices = platform_devices(platform)
    except (DeviceUnavailableError, RuntimeError) as err:
        pytest.skip(str(err))
    compile_only = pytestconfig.getoption("--tt-compile-only")
    return DeviceUnderTest(platform, tuple(devices), compile_only=compile_only)


@pytest.fixture(scope="session", params=MESHES, ids=[f"mesh_{m}" for m in MESHES])
def mesh(request: pytest.FixtureRequest, dut: DeviceUnderTest):
    """Each tensor-parallel mesh (axes batch x model) over the devices under test; where the
    session has too few devices (tt-xla's makes 8 CPU devices), skipped saying how many it needs.
    """
    try:
        return make_mesh(request.param, dut.devices)
    except MeshError as err:
        why = "a session of the package's own tests asks JAX for 32; tt-xla's harness makes 8"
        pytest.skip(f"{err} ({why})")


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
        if isinstance(value, tuple):
            return params.get(key) in value
        return params.get(key) == value

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
    """Of the package's items only: give single cases their tier (_tier_by_case), then deselect
    what this run is not for, so that a skip always means something is missing: benchmarks
    unless -m names them, and under --device tt every test without a device under test (it ran
    in the CPU run already)."""
    benchmarks = "benchmark" in (config.getoption("-m") or "")
    on_tt = config.getoption("--device") == TT
    dropped = []
    for item in items:
        if not _ours(config, item):
            continue
        _tier_by_case(item)
        cpu_only = on_tt and "dut" not in getattr(item, "fixturenames", ())
        if cpu_only or (item.get_closest_marker("benchmark") and not benchmarks):
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = set(map(id, dropped))
        items[:] = [item for item in items if id(item) not in gone]


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
        f"TT compile-only: {compiled} of {len(passed)} passed tests compiled their device-under-test "
        f"workloads with the TT plugin and checked the TTNN collectives, {host_side} checked the "
        "host side only; numerics were not compared (the plugin returns zeros)",
    )
