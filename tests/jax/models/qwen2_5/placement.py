# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Where a generator's arrays live: one device, or rows split over a mesh's `batch` axis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tests.jax.infra.mesh import BATCH_AXIS


@dataclass(frozen=True)
class Placement:
    mesh: Mesh | None  # None: one device

    @property
    def batch_multiple(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape[BATCH_AXIS]

    @property
    def devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    def sharding(self, spec: P) -> jax.sharding.Sharding:
        if self.mesh is None:
            return jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return NamedSharding(self.mesh, spec)

    def row_axis(self, rows: int) -> str | None:
        """The mesh axis `rows` rows split over: `batch`, unless it does not divide them (one
        sequence being prefilled for a batch), which are then replicated."""
        return BATCH_AXIS if rows % self.batch_multiple == 0 else None

    def row_spec(self, shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
        """An argument of `shape` with rows split over `batch` (row_axis)."""
        spec = P(self.row_axis(shape[0]), *[None] * (len(shape) - 1))
        return jax.ShapeDtypeStruct(shape, dtype, sharding=self.sharding(spec))

    def rows(self, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
        """Host arrays (every process holds the same) placed with rows split over `batch`; each
        process contributes only its own devices' rows, so this also works across processes.
        """
        placed = []
        for x in arrays:
            sharding = self.row_spec(x.shape, x.dtype).sharding
            placed.append(
                jax.make_array_from_callback(
                    x.shape, sharding, lambda index, x=x: x[index]
                )
            )
        return tuple(placed)

    def within(self, thunk: Callable[[], Any]) -> Any:
        """`thunk()` under the mesh (activation constraints apply), or as is on one device."""
        if self.mesh is None:
            return thunk()
        with jax.set_mesh(self.mesh):
            return thunk()
