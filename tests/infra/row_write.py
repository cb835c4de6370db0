# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""A per-row KV-cache write's contract, and how a platform's in-place kernel takes its place.

Both kernels (cpu_cache.py on XLA:CPU, tt_cache.py on TT) are custom calls with no sharding rule
of their own: under a mesh each device writes the rows and KV heads it holds (`shard_map`). On
every other platform the write is the caller's `default` (`jax.lax.platform_dependent`), so a
program lowered for one platform holds no other platform's call.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.sharding import PartitionSpec as P

# cache (B, K, S, H), new (B, K, 1, H), slots (B,) -> the cache, each row's token at its slot.
RowWrite = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
RowsAxis = Callable[[int], str | None]


def per_device(
    kernel: RowWrite, cache_spec: P, rows_axis: RowsAxis | None = None
) -> RowWrite:
    """`kernel` on the arrays each device holds. `cache_spec` is how a mesh splits the cache;
    `rows_axis(rows)` the mesh axis splitting that many rows (None: every device holds them
    all), by default the spec's own first entry."""

    def write(cache: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
        if jax.sharding.get_abstract_mesh().empty:
            return kernel(cache, new, slots)
        rows = cache_spec[0] if rows_axis is None else rows_axis(cache.shape[0])
        spec = P(rows, *cache_spec[1:])
        specs = {"in_specs": (spec, spec, P(rows)), "out_specs": spec}
        return jax.shard_map(kernel, **specs)(cache, new, slots)

    return write


def on_platform(platform: str, kernel: RowWrite, default: RowWrite) -> RowWrite:
    """`kernel` where the program runs on `platform`, `default` everywhere else."""

    def write(cache: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
        branches = {platform: kernel, "default": default}
        return jax.lax.platform_dependent(cache, new, slots, **branches)

    return write
