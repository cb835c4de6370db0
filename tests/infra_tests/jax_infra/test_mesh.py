# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

import jax
import pytest
from jax.sharding import AxisType

from tests.jax.infra.devices import DeviceUnavailableError, platform_devices
from tests.jax.infra.mesh import MESH_AXES, MeshError, MeshShape, make_mesh

pytestmark = pytest.mark.push


@pytest.mark.parametrize(
    ("text", "shape"),
    [("2x4", (2, 4)), ("1x8", (1, 8)), (" 8X4 ", (8, 4)), ("1x32", (1, 32))],
)
def test_parse(text, shape):
    parsed = MeshShape.parse(text)
    assert (parsed.batch, parsed.model) == shape
    assert parsed.size == shape[0] * shape[1]
    assert parsed.name == f"{shape[0]}x{shape[1]}"


@pytest.mark.parametrize("text", ["2x", "x4", "2*4", "2x4x1", "two", "", "-1x4"])
def test_malformed_shape(text):
    with pytest.raises(MeshError, match="malformed mesh .*write it as BATCHxMODEL"):
        MeshShape.parse(text)


@pytest.mark.parametrize("text", ["0x4", "2x0"])
def test_zero_sized_axis(text):
    with pytest.raises(MeshError, match="zero-sized axis"):
        MeshShape.parse(text)


def test_make_mesh_axes_and_types():
    mesh = make_mesh("2x4", platform_devices("cpu"))
    assert mesh.axis_names == MESH_AXES
    assert dict(mesh.shape) == {"batch": 2, "model": 4}
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    assert len(set(mesh.devices.flat)) == 8


def test_too_few_devices_says_how_to_get_more():
    devices = platform_devices("cpu")
    too_big = f"{len(devices)}x2"
    with pytest.raises(
        MeshError,
        match=rf"needs {2 * len(devices)} devices but {len(devices)} cpu devices exist.*JAX_NUM_CPU_DEVICES",
    ):
        make_mesh(too_big, devices)


def test_simulated_cpu_devices_cover_every_mesh():
    assert len(platform_devices("cpu")) >= 32


def test_unknown_platform():
    with pytest.raises(ValueError, match="unknown platform 'gpu'"):
        platform_devices("gpu")


def test_absent_tt_plugin_is_a_clear_error():
    try:
        jax.devices("tt")
    except RuntimeError:
        with pytest.raises(DeviceUnavailableError, match="pip install jax-tt-plugin"):
            platform_devices("tt")
    else:
        pytest.skip("the tt platform is available in this process")
