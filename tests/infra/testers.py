"""Testers: run a workload on the CPU single-device golden and on the device under test, compare.

The golden always runs on one CPU device. The device under test (DUT) is one device of the
chosen platform, or a mesh when the caller gives shardings for the arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from tests.infra.comparison import ComparisonConfig, ComparisonResult, assert_equivalent
from tests.infra.devices import golden_device


@dataclass(frozen=True)
class Workload:
    """A jittable function and its positional arguments (pytrees of arrays)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def run_on_device(workload: Workload, device: jax.Device) -> Any:
    """Run `workload` with every argument committed to `device`; outputs come back as numpy."""
    args = jax.device_put(workload.args, device)
    return _to_numpy(jax.jit(workload.fn)(*args))


def run_sharded(workload: Workload, arg_shardings: Any) -> Any:
    """Run `workload` with arguments placed by `arg_shardings` (NamedShardings, a pytree prefix of
    the args), under their mesh so that sharding constraints inside the workload apply."""
    mesh = jax.tree.leaves(arg_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))[0].mesh
    args = jax.device_put(workload.args, arg_shardings)
    with jax.set_mesh(mesh):
        return _to_numpy(jax.jit(workload.fn)(*args))


class EquivalenceTester:
    """Compares the device under test with the CPU single-device golden."""

    def __init__(self, config: ComparisonConfig, dut_devices: Sequence[jax.Device]) -> None:
        self.config = config
        self.dut_devices = list(dut_devices)

    def run_golden(self, workload: Workload) -> Any:
        return run_on_device(workload, golden_device())

    def run_dut(self, workload: Workload, arg_shardings: Any = None) -> Any:
        if arg_shardings is None:
            return run_on_device(workload, self.dut_devices[0])
        return run_sharded(workload, arg_shardings)

    def test(
        self,
        golden: Workload,
        dut: Workload | None = None,
        *,
        arg_shardings: Any = None,
        mask: np.ndarray | None = None,
    ) -> ComparisonResult:
        """Run both sides (the DUT runs `golden` itself when `dut` is None) and assert equivalence."""
        expected = self.run_golden(golden)
        actual = self.run_dut(dut or golden, arg_shardings)
        return assert_equivalent(expected, actual, self.config, mask)
