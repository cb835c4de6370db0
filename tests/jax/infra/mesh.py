# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Device meshes with axes ("batch", "model"), written as "BxM" (e.g. "2x4")."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import jax
from jax.sharding import AxisType, Mesh

BATCH_AXIS = "batch"
MODEL_AXIS = "model"
MESH_AXES = (BATCH_AXIS, MODEL_AXIS)

_SHAPE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


class MeshError(ValueError):
    """A mesh that cannot be built: malformed shape, zero size or too few devices."""


@dataclass(frozen=True)
class MeshShape:
    """The size of the `batch` (data) axis and of the `model` (tensor-parallel) axis."""

    batch: int
    model: int

    def __post_init__(self) -> None:
        if self.batch < 1 or self.model < 1:
            raise MeshError(
                f"mesh {self.batch}x{self.model} has a zero-sized axis: both sizes must be >= 1"
            )

    @classmethod
    def parse(cls, text: str) -> MeshShape:
        match = _SHAPE_RE.match(text)
        if match is None:
            raise MeshError(
                f"malformed mesh {text!r}: write it as BATCHxMODEL, e.g. 2x4 or 1x8"
            )
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def size(self) -> int:
        return self.batch * self.model

    @property
    def name(self) -> str:
        return f"{self.batch}x{self.model}"

    def __str__(self) -> str:
        return self.name


def make_mesh(shape: MeshShape | str, devices: Sequence[jax.Device]) -> Mesh:
    """A ("batch", "model") mesh over the first `shape.size` of `devices`."""
    if isinstance(shape, str):
        shape = MeshShape.parse(shape)
    if shape.size > len(devices):
        platform = devices[0].platform if devices else "any"
        hint = (
            f"; simulate more CPU devices with JAX_NUM_CPU_DEVICES={shape.size} (or more) set before JAX starts"
            if platform == "cpu"
            else ""
        )
        raise MeshError(
            f"mesh {shape} needs {shape.size} devices but {len(devices)} {platform} devices exist{hint}"
        )
    # Auto axis types on purpose: the model states the sharding of every weight and of the
    # activations that matter, and the XLA partitioner propagates the rest. Explicit axes
    # would make every intermediate (e.g. the head reshapes) carry a sharding in its type.
    # The collectives this produces are checked in the compiled HLO, not assumed.
    return jax.make_mesh(
        (shape.batch, shape.model),
        MESH_AXES,
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=list(devices[: shape.size]),
    )
