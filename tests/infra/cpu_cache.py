# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""A KV-cache write of one token per row, each row at its own slot, in place on XLA:CPU.

XLA:CPU updates a bfloat16 cache in place in neither form a program can express: an update slice
per row (or a scatter) copies the whole cache, a select over the cache reads and writes all of
it. Either costs a pass over every layer's cache per decode step (README "Performance"). This
custom call writes the rows' tokens into the cache's own buffer (`cpu_cache.cc`, the cache
aliased to the result), as TT's `paged_update_cache` does on TT (tt_cache.py); row_write.py places it per device under a mesh and keeps it off other platforms.
Built with the host's C++ compiler (native_build) and registered for XLA:CPU only.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import jax
from jax.sharding import PartitionSpec as P

from tests.infra.native_build import build
from tests.infra.row_write import RowsAxis, RowWrite, on_platform, per_device

TARGET = "cpu_cache_write_rows"


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


def in_place_rows(default: RowWrite, cache_spec: P, rows_axis: RowsAxis) -> RowWrite:
    """A per-row write: the kernel on XLA:CPU, `default` elsewhere (row_write.per_device)."""
    return on_platform(
        "cpu", per_device(write_in_place, cache_spec, rows_axis), default
    )
