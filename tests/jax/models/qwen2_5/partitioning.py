# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Logical axes and the rules that map them onto the ("batch", "model") mesh.

Every parameter carries logical axis names (as `axes` metadata) and the forward pass
constrains the activations that decide the communication pattern. The rules below are
Megatron tensor parallelism: heads, KV heads, the MLP width and the vocabulary are split
over `model`; the hidden (embed) axis is never split, so the residual stream is replicated
over `model` and only partial sums need communicating.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import jax
from jax.sharding import PartitionSpec as P

LOGICAL_RULES: dict[str, str | None] = {
    "batch": "batch",
    "embed": None,
    "q_heads": "model",  # query heads (x head_dim) of q_proj / o_proj
    "kv_heads": "model",  # KV heads (x head_dim) of k_proj / v_proj, and the KV cache
    "mlp": "model",
    "vocab": "model",
}

Axes = Sequence[str | None]


def logical_to_spec(axes: Axes) -> P:
    """Logical names -> a PartitionSpec on the mesh (None stays unsplit)."""
    return P(*(None if name is None else LOGICAL_RULES[name] for name in axes))


# False while tracing a batch whose rows the `batch` axis does not divide (one sequence being
# prefilled for a batch's cache): its rows, and so its token rows, are replicated over `batch`.
_ROWS_SPLIT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "rows_split", default=True
)


@contextlib.contextmanager
def batch_of(rows: int) -> Iterator[None]:
    """Trace a batch of `rows` rows: split over `batch` when it divides them, else replicated."""
    token = _ROWS_SPLIT.set(rows % _batch_axis_size() == 0)
    try:
        yield
    finally:
        _ROWS_SPLIT.reset(token)


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
    """Pin the sharding of an activation when running under a mesh (`jax.set_mesh`); else a no-op.
    Rows are replicated over `batch` where it does not split them (batch_of)."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    if "batch" in axes and row_axis(x.shape[list(axes).index("batch")]) is None:
        axes = [None if name == "batch" else name for name in axes]
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes))


def _batch_axis_size() -> int:
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else dict(mesh.shape).get(LOGICAL_RULES["batch"], 1)


def batch_split() -> int:
    """How many ways the mesh's `batch` axis splits the batch being traced (1 without a mesh)."""
    return _batch_axis_size() if _ROWS_SPLIT.get() else 1


def row_axis(rows: int) -> str | None:
    """The mesh axis that `rows` rows of the batch being traced split over, or None (replicated)."""
    split = batch_split()
    return LOGICAL_RULES["batch"] if split > 1 and rows % split == 0 else None


def rows_per_device(x: jax.Array) -> int:
    """Rows of activations (N, features) or (B, T, features) that each device holds: the first
    axis is split over the mesh's `batch` axis when running under a mesh."""
    return max(x.shape[0] // batch_split(), 1) * math.prod(x.shape[1:-1])
