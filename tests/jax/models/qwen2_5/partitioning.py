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

import math
from collections.abc import Sequence

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


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
    """Pin the sharding of an activation when running under a mesh (`jax.set_mesh`); else a no-op."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes))


def batch_split() -> int:
    """How many ways the mesh's `batch` axis splits a batch (1 without a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else dict(mesh.shape).get(LOGICAL_RULES["batch"], 1)


def rows_per_device(x: jax.Array) -> int:
    """Rows of activations (N, features) or (B, T, features) that each device holds: the first
    axis is split over the mesh's `batch` axis when running under a mesh."""
    return max(x.shape[0] // batch_split(), 1) * math.prod(x.shape[1:-1])
