# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Testers: run a workload on the CPU single-device golden and on the device under test, compare.

The golden always runs on one CPU device. The device under test (DUT) is one device of the
chosen platform, or a mesh when the caller gives shardings for the arguments. Every DUT
workload is compiled explicitly and its collectives checked against the plan the caller states
(none, unless stated); a compile-only DUT stops there: its outputs would be zeros, so nothing
numeric is compared or claimed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from tests.jax.infra.collectives import CollectivesCheck, check_collectives
from tests.jax.infra.devices import DeviceUnderTest, golden_device
from tests.jax.infra.golden_check import CheckResult, Thresholds, assert_equivalent

# Recorded (pytest record_property) by every test whose DUT only compiled: numerics not compared.
COMPILE_ONLY_PROPERTY = ("numerics", "not compared: compile-only")
# Recorded by a test that runs under --device tt but compiles no workload by design (it checks
# placement or the host process): the TT run's summary counts it apart from the compiled ones.
HOST_SIDE_PROPERTY = ("numerics", "not compared: host side only")


@dataclass(frozen=True)
class JitWorkload:
    """A jittable function and its positional arguments (pytrees of arrays)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def run_on_device(workload: JitWorkload, device: jax.Device) -> Any:
    """Run `workload` with every argument committed to `device`; outputs come back as numpy."""
    args = jax.device_put(workload.args, device)
    return _to_numpy(jax.jit(workload.fn)(*args))


def _mesh_of(arg_shardings: Any) -> jax.sharding.Mesh | None:
    leaves = jax.tree.leaves(
        arg_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
    )
    return next(
        (s.mesh for s in leaves if isinstance(s, jax.sharding.NamedSharding)), None
    )


@dataclass(frozen=True)
class EquivalenceResult:
    collectives: CollectivesCheck
    comparison: CheckResult | None  # None when the DUT only compiles

    def metrics(self) -> dict[str, Any]:
        numbers = (
            self.comparison.metrics()
            if self.comparison
            else dict([COMPILE_ONLY_PROPERTY])
        )
        return {**self.collectives.metrics(), **numbers}


class EquivalenceTester:
    """Compares the device under test with a golden (the CPU single-device run, or given arrays)."""

    def __init__(self, config: Thresholds, dut: DeviceUnderTest) -> None:
        self.config = config
        self.dut = dut

    def run_golden(self, workload: JitWorkload) -> Any:
        return run_on_device(workload, golden_device())

    def test(
        self,
        golden: JitWorkload,
        dut: JitWorkload | None = None,
        *,
        arg_shardings: Any = None,
        mask: np.ndarray | None = None,
        collectives: Mapping[str, int] | None = None,
    ) -> EquivalenceResult:
        """Run both sides (the DUT runs `golden` itself when `dut` is None) and assert equivalence."""
        return self.test_against(
            lambda: self.run_golden(golden),
            dut or golden,
            arg_shardings=arg_shardings,
            mask=mask,
            collectives=collectives,
        )

    def test_against(
        self,
        expected: Callable[[], Any],
        workload: JitWorkload,
        *,
        arg_shardings: Any = None,
        mask: np.ndarray | None = None,
        collectives: Mapping[str, int] | None = None,
    ) -> EquivalenceResult:
        """Compile `workload` on the DUT (arguments placed by `arg_shardings`, NamedShardings as a
        pytree prefix of the args, else on the DUT's first device), check its collectives against
        `collectives`, run it and compare with `expected()` (called only when there is an output
        to compare it with)."""
        if arg_shardings is None:
            arg_shardings = jax.tree.map(
                lambda _: jax.sharding.SingleDeviceSharding(self.dut.devices[0]),
                workload.args,
            )
        mesh = _mesh_of(arg_shardings)
        if self.dut.compile_only:
            # Shapes and placements are all a compile needs; the DUT would hold no data anyway.
            shardings = jax.tree.broadcast(arg_shardings, workload.args)
            args = jax.tree.map(
                lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                workload.args,
                shardings,
            )
        else:
            args = jax.device_put(workload.args, arg_shardings)
        with jax.set_mesh(mesh) if mesh is not None else nullcontext():
            lowered = jax.jit(workload.fn).lower(*args)
        compiled, check = check_collectives(
            lowered, self.dut.platform, collectives or {}
        )
        if self.dut.compile_only:
            return EquivalenceResult(check, None)
        actual = _to_numpy(compiled(*args))
        return EquivalenceResult(
            check, assert_equivalent(expected(), actual, self.config, mask)
        )
