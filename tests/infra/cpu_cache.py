# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""A KV-cache write of one token per row, each row at its own slot, in place on XLA:CPU.

XLA:CPU updates a bfloat16 cache in place in neither form a program can express: an update slice
per row (or a scatter) copies the whole cache, a select over the cache reads and writes all of
it. Either costs a pass over every layer's cache per decode step (README "Performance"). This custom call writes the rows' tokens into the cache's own buffer
(`cpu_cache.cc`, the cache aliased to the result), as TT's `paged_update_cache` does on TT
(tt_cache.py). Under a mesh each device writes its own rows and KV heads (`shard_map`): the call
has no sharding rule of its own. Built with the host's C++ compiler (native_build) and registered
for XLA:CPU only; other platforms take the caller's `default` (`jax.lax.platform_dependent`).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from pathlib import Path

import jax
from jax.sharding import PartitionSpec as P

from tests.infra.native_build import build

TARGET = "cpu_cache_write_rows"
RowWrite = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@functools.cache
def prepare() -> None:
    """Build and register the kernel now, so a missing compiler is reported before any work."""
    library = build(
        Path(__file__).with_suffix(".cc"), (), "CPU cache write", "a C++17 compiler"
    )
    kernel = ctypes.CDLL(str(library))
    jax.ffi.register_ffi_target(
        TARGET, jax.ffi.pycapsule(kernel.cpu_cache_write_rows), platform="cpu"
    )


def write_in_place(cache: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
    """cache (B, K, S, H), new (B, K, 1, H), slots (B,) -> the cache, each row's token written, on
    the arrays this device holds."""
    prepare()
    result = jax.ShapeDtypeStruct(cache.shape, cache.dtype)
    return jax.ffi.ffi_call(TARGET, result, input_output_aliases={0: 0})(
        cache, new, slots.astype("int32")
    )


def in_place_rows(
    default: RowWrite, cache_spec: P, rows_axis: Callable[[int], str | None]
) -> RowWrite:
    """A per-row write: the kernel on XLA:CPU, `default` elsewhere. `cache_spec` is how a mesh
    splits the cache; `rows_axis(rows)` the mesh axis splitting that many rows, or None where
    every device holds them all."""

    def on_cpu(cache: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
        if jax.sharding.get_abstract_mesh().empty:
            return write_in_place(cache, new, slots)
        rows = rows_axis(cache.shape[0])
        spec = P(rows, *cache_spec[1:])
        return jax.shard_map(
            write_in_place, in_specs=(spec, spec, P(rows)), out_specs=spec
        )(cache, new, slots)

    def write(cache: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
        return jax.lax.platform_dependent(
            cache, new, slots, cpu=on_cpu, default=default
        )

    return write
