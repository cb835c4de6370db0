# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The TT plugin helpers that need no plugin: detection, the descriptor cache, clear errors; and
that JAX's default backend is the CPU whatever is installed (goldens never compute zeros).
"""

import jax
import jax.numpy as jnp
import pytest
import yaml

from tests.jax.infra import tt_plugin
from tests.jax.infra.devices import CPU, DeviceUnderTest
from tests.jax.infra.equivalence import HOST_SIDE_PROPERTY

pytestmark = pytest.mark.push


def test_every_ordinary_computation_runs_on_the_cpu(
    dut: DeviceUnderTest, record_property
):
    """With the TT plugin installed and even under --device tt, JAX's default backend stays the
    CPU: only explicit devices and meshes reach the device under test."""
    record_property(*HOST_SIDE_PROPERTY)
    assert jax.default_backend() == CPU
    assert {d.platform for d in jnp.ones(3).devices()} == {CPU}
    assert jax.config.jax_platforms == (
        CPU if dut.platform == CPU else f"{CPU},{dut.platform}"
    )


def test_a_cpu_only_process_does_not_load_the_tt_plugin(
    dut: DeviceUnderTest, record_property
):
    """Loading libtt.so unpacks ~417 MB into $TMPDIR and races with other processes doing the same:
    only a process whose device under test is TT loads it."""
    record_property(*HOST_SIDE_PROPERTY)
    with open("/proc/self/maps") as maps:
        assert any("libtt.so" in line for line in maps) == (dut.platform != CPU)


def test_missing_plugin_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(tt_plugin, "installed_plugin", lambda: None)
    with pytest.raises(
        tt_plugin.TTPluginError, match="pip install -r requirements-tt.txt"
    ):
        tt_plugin.system_descriptor(print)


@pytest.mark.parametrize(
    ("installed", "found"),
    [
        ({"jax-tt-plugin": "0.1.3"}, "jax-tt-plugin-0.1.3"),
        ({"pjrt-plugin-tt": "0.8.0"}, "pjrt-plugin-tt-0.8.0"),  # tt-xla's own build
        ({}, None),
    ],
)
def test_the_registry_plugin_and_tt_xla_s_own_are_found(monkeypatch, installed, found):
    def version(name: str) -> str:
        if name not in installed:
            raise tt_plugin.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(tt_plugin.metadata, "version", version)
    assert tt_plugin.installed_plugin() == found


def test_descriptor_is_cached_per_plugin_version(monkeypatch, tmp_path):
    monkeypatch.setenv("TT_XLA_TESTS_CACHE", str(tmp_path))
    monkeypatch.setattr(tt_plugin, "installed_plugin", lambda: "jax-tt-plugin-9.9.9")
    cached = tmp_path / "jax-tt-plugin-9.9.9" / "blackhole_galaxy.ttsys"
    cached.parent.mkdir()
    cached.write_bytes(b"descriptor")
    made = []
    monkeypatch.setattr(tt_plugin, "_write_descriptor", lambda *args: made.append(args))
    assert tt_plugin.system_descriptor(print) == cached and made == []
    monkeypatch.setattr(tt_plugin, "installed_plugin", lambda: "jax-tt-plugin-10.0.0")
    with pytest.raises(
        FileNotFoundError
    ):  # a new version makes its own (here: the stub writes nothing)
        tt_plugin.system_descriptor(print).read_bytes()
    assert (
        len(made) == 1
        and made[0][0] == tmp_path / "jax-tt-plugin-10.0.0" / "blackhole_galaxy.ttsys"
    )


def test_a_failing_plugin_start_reports_its_output(monkeypatch, tmp_path):
    """The child that opens the mock cluster fails here (no plugin importable as jax's `tt`, or a
    stub): the error carries its exit code and last lines, and nothing lands in the cache.
    """
    monkeypatch.setenv("TT_XLA_TESTS_CACHE", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.setattr(tt_plugin.sys, "executable", "false")
    with pytest.raises(tt_plugin.TTPluginError, match=r"failed \(exit 1\)"):
        tt_plugin._write_descriptor(
            tmp_path / "v" / "d.ttsys", "0.0", lambda line: None
        )
    assert not (tmp_path / "v").exists()


def test_a_given_descriptor_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv(tt_plugin.COMPILE_ONLY_ENV, str(tmp_path / "missing.ttsys"))
    with pytest.raises(tt_plugin.TTPluginError, match="is not a file: unset it"):
        tt_plugin.enable_compile_only(print)


def test_the_mock_cluster_has_the_32_chips_every_mesh_needs():
    arch = yaml.safe_load(tt_plugin.MOCK_CLUSTER.read_text())["arch"]
    assert sorted(arch) == list(range(32)) and set(arch.values()) == {"blackhole"}
