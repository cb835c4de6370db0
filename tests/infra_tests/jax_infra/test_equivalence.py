# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.jax.infra.collectives import CollectivesError
from tests.jax.infra.devices import CPU, DeviceUnderTest, platform_devices
from tests.jax.infra.equivalence import (
    COMPILE_ONLY_PROPERTY,
    EquivalenceTester,
    JitWorkload,
)
from tests.jax.infra.golden_check import GoldenMismatch, Thresholds
from tests.jax.infra.mesh import make_mesh

pytestmark = pytest.mark.push

RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 64)).astype(np.float32)
W = RNG.standard_normal((64, 32)).astype(np.float32)


def matmul(x, w):
    return jnp.tanh(x @ w)


def cpu_dut(first: int = 0, compile_only: bool = False) -> DeviceUnderTest:
    return DeviceUnderTest(CPU, tuple(platform_devices(CPU)[first:]), compile_only)


def test_sharded_run_matches_golden_and_is_really_sharded():
    mesh = make_mesh("2x4", platform_devices("cpu"))
    tester = EquivalenceTester(Thresholds(atol=1e-5), cpu_dut())
    shardings = (
        NamedSharding(mesh, P("batch", None)),
        NamedSharding(mesh, P(None, "model")),
    )
    placed = jax.device_put((X, W), shardings)
    assert len(placed[1].sharding.device_set) == 8 and placed[1].addressable_shards[
        0
    ].data.shape == (64, 8)
    result = tester.test(JitWorkload(matmul, (X, W)), arg_shardings=shardings)
    assert result.comparison.max_abs_diff <= 1e-5
    assert result.collectives.found == {}  # column-parallel: the output stays split


def test_collectives_are_checked_against_the_plan():
    """A contraction split over `model` needs one all-reduce: planning none fails, planning it passes."""
    mesh = make_mesh("2x4", platform_devices("cpu"))
    shardings = (
        NamedSharding(mesh, P("batch", "model")),
        NamedSharding(mesh, P("model", None)),
    )
    tester = EquivalenceTester(Thresholds(atol=1e-4), cpu_dut())
    with pytest.raises(
        CollectivesError, match=r"cpu collectives \{'all_reduce': 1\}, planned \{\}"
    ):
        tester.test(JitWorkload(matmul, (X, W)), arg_shardings=shardings)
    result = tester.test(
        JitWorkload(matmul, (X, W)),
        arg_shardings=shardings,
        collectives={"all_reduce": 1},
    )
    assert result.collectives.found == {"all_reduce": 1} and result.comparison.passed


def test_compile_only_compares_nothing_and_says_so():
    """A compile-only device is never run: a wrong workload passes the compile check, and the
    result carries no comparison, only the collectives and the compile-only mark."""
    off = JitWorkload(lambda x, w: matmul(x, w) + 1.0, (X, W))
    result = EquivalenceTester(Thresholds(atol=0.0), cpu_dut(compile_only=True)).test(
        JitWorkload(matmul, (X, W)), off
    )
    assert result.comparison is None
    assert result.metrics()[COMPILE_ONLY_PROPERTY[0]] == COMPILE_ONLY_PROPERTY[1]


def test_wrong_device_under_test_is_caught():
    tester = EquivalenceTester(Thresholds(atol=1e-4), cpu_dut())
    off_by_a_bit = JitWorkload(lambda x, w: matmul(x, w) + 1e-3, (X, W))
    with pytest.raises(GoldenMismatch, match="max_abs_diff 1.0"):
        tester.test(JitWorkload(matmul, (X, W)), off_by_a_bit)


def test_golden_runs_on_the_first_cpu_device_and_dut_on_its_own(monkeypatch):
    placements = []
    device_put = jax.device_put

    def recording_device_put(tree, target):
        placements.append({getattr(t, "_device", t) for t in jax.tree.leaves(target)})
        return device_put(tree, target)

    monkeypatch.setattr(jax, "device_put", recording_device_put)
    tester = EquivalenceTester(Thresholds(atol=0.0), cpu_dut(first=5))
    tester.test(JitWorkload(matmul, (X, W)))
    assert placements == [{jax.devices("cpu")[5]}, {jax.devices("cpu")[0]}]
