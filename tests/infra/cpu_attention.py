# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Decode attention (one query per row over a KV cache, grouped queries) as one XLA:CPU kernel.

XLA:CPU computes a decode step's attention as two library products and a softmax between them:
the scores product repacks every layer's keys, the values product its values, each step, and all
three pass over every cache slot, the ones a row cannot see among them (README "Performance").
This kernel (`cpu_attention.cc`) reads each row's keys and values once, only at the slots its
bias leaves visible, and keeps the plain form's rounding points: scores rounded to the model dtype
and scaled in it, a float32 softmax rounded to it, float32 sums. It differs from the plain form
in summation order and in exp's last bit, no more. Under a mesh each device attends with its own
rows and KV heads (`shard_map`), which needs the `model` axis to split the KV heads evenly;
elsewhere, and on other platforms, the attention is the caller's `default`.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from tests.infra.cpu_class import avx2_fma
from tests.infra.native_build import build

TARGET = "cpu_decode_attention"
# q (B, Hq, 1, H), keys and values (B, K, S, H), bias (B, 1, 1, S), scale -> (B, Hq, 1, H).
DecodeAttention = Callable[
    [jax.Array, jax.Array, jax.Array, jax.Array, float], jax.Array
]


def runs_here() -> bool:
    """The kernel's instructions, AVX2 and FMA, are on this CPU (none off x86-64)."""
    return avx2_fma()


@functools.cache
def prepare() -> None:
    """Build and register the kernel now, so a missing compiler is reported before any work."""
    library = build(
        Path(__file__).with_suffix(".cc"),
        ("-mavx2", "-mfma"),
        "CPU decode attention",
        "a C++17 compiler with AVX2 and FMA targets",
    )
    kernel = ctypes.CDLL(str(library))
    jax.ffi.register_ffi_target(
        TARGET, jax.ffi.pycapsule(kernel.cpu_decode_attention), platform="cpu"
    )


def attend(
    q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, scale: float
) -> jax.Array:
    """The kernel on the arrays this device holds (shapes as DecodeAttention)."""
    prepare()
    # The scale as the plain form multiplies by it: a constant of the model dtype.
    rounded = np.float32(np.asarray(scale, dtype=q.dtype))
    result = jax.ShapeDtypeStruct(q.shape, q.dtype)
    return jax.ffi.ffi_call(TARGET, result)(q, k, v, bias, scale=rounded)


def kernel_attention(
    default: DecodeAttention,
    q_spec: P,
    kv_spec: P,
    rows_axis: Callable[[int], str | None],
) -> DecodeAttention:
    """Decode attention by the kernel on XLA:CPU, `default` elsewhere. `q_spec` and `kv_spec` are
    how a mesh splits the queries and the cache (heads on axis 1); `rows_axis(rows)` the mesh axis
    splitting that many rows, or None."""

    def on_cpu(q, k, v, bias, scale):
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            return attend(q, k, v, bias, scale)
        split = _size(mesh, kv_spec[1])
        if q_spec[1] != kv_spec[1] or k.shape[1] % split:
            # Uneven KV-head shards do not map onto each device's query heads.
            return default(q, k, v, bias, scale)
        rows = rows_axis(q.shape[0])
        qs, kvs = P(rows, *q_spec[1:]), P(rows, *kv_spec[1:])
        specs = {"in_specs": (qs, kvs, kvs, P(rows)), "out_specs": qs}
        per_device = functools.partial(attend, scale=scale)
        return jax.shard_map(per_device, **specs)(q, k, v, bias)

    def attention(q, k, v, bias, scale):
        branches = {"cpu": functools.partial(on_cpu, scale=scale)}
        branches["default"] = functools.partial(default, scale=scale)
        return jax.lax.platform_dependent(q, k, v, bias, **branches)

    return attention


def _size(mesh: jax.sharding.AbstractMesh, axis: str | None) -> int:
    return 1 if axis is None else mesh.shape[axis]
