# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Attention as one XLA:CPU kernel: a decode step's (one query per row over a KV cache) and, on CPUs
with AMX, a bfloat16 prefill chunk's (several queries per row); grouped queries.

XLA:CPU computes a decode step's attention as two library products and a softmax between them:
the scores product repacks every layer's keys, the values product its values, each step, and all
three pass over every cache slot, the ones a row cannot see among them (README "Performance").
This kernel (`cpu_attention.cc`) reads each row's keys and values once, only at the slots its
bias leaves visible, and keeps the plain form's rounding points: scores rounded to the model dtype
and scaled in it, a float32 softmax rounded to it, float32 sums. It differs from the plain form
in summation order and in exp's last bit, no more.

A prefill chunk's attention (`cpu_prefill_attention.cc`, bfloat16 only) is compute-bound. XLA:CPU
computes its products with the matrix library's AMX kernels and the softmax's elementwise ops in
separate passes over every block's float32 scores. The kernel takes sixteen positions of a row
with all their query heads against the slots they see: both products on the CPU's matrix tiles
(AMX: bfloat16 pairs multiplied exactly, float32 sums, as the library's kernels) and the softmax
in one pass between them, with the same rounding points. It is chosen where XLA may use AMX
(`prefill_runs_here`).

Under a mesh each device attends with its own rows and KV heads (`shard_map`), which needs the
`model` axis to split the KV heads evenly; elsewhere, and on other platforms, the attention is
the caller's `default`.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from tests.infra.cpu_class import avx2_fma, bfloat16_instructions, x86_flags
from tests.infra.native_build import build

TARGET = "cpu_decode_attention"
PREFILL_TARGET = "cpu_prefill_attention"
# q (B, Hq, T, H), keys and values (B, K, S, H), bias (B, 1, T, S), scale -> (B, Hq, T, H).
Attention = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, float], jax.Array]
_PREFILL_FLAGS = (
    "-mavx512f",
    "-mavx512bw",
    "-mavx512vl",
    "-mamx-tile",
    "-mamx-bf16",
    "-mfma",
)


def runs_here() -> bool:
    """The decode kernel's instructions, AVX2 and FMA, are on this CPU (none off x86-64)."""
    return avx2_fma()


def prefill_runs_here() -> bool:
    """The prefill kernel's instructions (AMX, AVX-512) are on this CPU and XLA may use AMX too
    (not capped below AVX-512, as on an emulated AVX2-only CPU): the kernel replaces XLA's own AMX
    products, measured only against those (README "Performance")."""
    flags = x86_flags()
    xla = bfloat16_instructions(flags, os.environ.get("XLA_FLAGS", ""))
    return "amx_bf16" in xla and {"amx_tile", "avx512bw", "avx512vl", "fma"} <= flags


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


@functools.cache
def prepare_prefill() -> None:
    """Build and register the prefill kernel now (see prepare)."""
    library = build(
        Path(__file__).with_name("cpu_prefill_attention.cc"),
        _PREFILL_FLAGS,
        "CPU prefill attention",
        "a C++17 compiler with AVX-512 and AMX targets (g++ >= 11)",
    )
    kernel = ctypes.CDLL(str(library))
    jax.ffi.register_ffi_target(
        PREFILL_TARGET,
        jax.ffi.pycapsule(kernel.cpu_prefill_attention),
        platform="cpu",
    )


def attend(
    q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, scale: float
) -> jax.Array:
    """The decode kernel on the arrays this device holds (shapes as Attention, T = 1)."""
    prepare()
    return _call(TARGET, q, k, v, bias, scale)


def attend_prefill(
    q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, scale: float
) -> jax.Array:
    """The prefill kernel on the bfloat16 arrays this device holds (shapes as Attention)."""
    prepare_prefill()
    return _call(PREFILL_TARGET, q, k, v, bias, scale)


def _call(
    target: str,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    scale: float,
) -> jax.Array:
    # The scale as the plain form multiplies by it: a constant of the model dtype.
    rounded = np.float32(np.asarray(scale, dtype=q.dtype))
    result = jax.ShapeDtypeStruct(q.shape, q.dtype)
    return jax.ffi.ffi_call(target, result)(q, k, v, bias, scale=rounded)


def kernel_attention(
    default: Attention,
    q_spec: P,
    kv_spec: P,
    rows_axis: Callable[[int], str | None],
    kernel: Attention = attend,
) -> Attention:
    """Attention by `kernel` (attend or attend_prefill) on XLA:CPU, `default` elsewhere. `q_spec`
    and `kv_spec` are how a mesh splits the queries and the cache (heads on axis 1);
    `rows_axis(rows)` the mesh axis splitting that many rows, or None."""

    def on_cpu(q, k, v, bias, scale):
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            return kernel(q, k, v, bias, scale)
        split = _size(mesh, kv_spec[1])
        if q_spec[1] != kv_spec[1] or k.shape[1] % split:
            # Uneven KV-head shards do not map onto each device's query heads.
            return default(q, k, v, bias, scale)
        rows = rows_axis(q.shape[0])
        qs, kvs = P(rows, *q_spec[1:]), P(rows, *kv_spec[1:])
        specs = {"in_specs": (qs, kvs, kvs, P(rows)), "out_specs": qs}
        per_device = functools.partial(kernel, scale=scale)
        return jax.shard_map(per_device, **specs)(q, k, v, bias)

    def attention(q, k, v, bias, scale):
        branches = {"cpu": functools.partial(on_cpu, scale=scale)}
        branches["default"] = functools.partial(default, scale=scale)
        return jax.lax.platform_dependent(q, k, v, bias, **branches)

    return attention


def _size(mesh: jax.sharding.AbstractMesh, axis: str | None) -> int:
    return 1 if axis is None else mesh.shape[axis]
