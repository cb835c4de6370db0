# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""A KV-cache write of one token per row, each row at its own slot, in place on TT.

The TT compiler recognizes an in-place cache update in a scatter only when every row writes the
same slot (a 1-element index). Rows at their own slots (continuous batching) reach TTNN's
`paged_update_cache`, which takes one index per row, through the plugin's `tt.update_cache`
custom call: the cache (B, K, S, H) aliased to the result, the tokens in the kernel's
(1, K, B, H) layout, and the (B,) slots. The call has no sharding rule of its own: under a mesh each
device writes the rows and KV heads it holds (`shard_map`). On every other platform the write is the
caller's default (`jax.lax.platform_dependent`), so a program lowered for another platform holds
no TT call.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental.xla_metadata import set_xla_metadata
from jax.sharding import PartitionSpec as P

UPDATE = "tt.update_cache"
# cache (B, K, S, H), new (B, K, 1, H), slots (B,) -> the cache, each row's token at its slot.
RowWrite = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _update(cache: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
    """cache (B, K, S, H), new (B, K, 1, H), slots (B,) -> the cache, each row's token written."""
    tokens = jnp.transpose(new, (2, 1, 0, 3))  # (1, K, B, H)
    result = jax.ShapeDtypeStruct(cache.shape, cache.dtype)
    with set_xla_metadata(batch_offset="0"):
        return jax.ffi.ffi_call(UPDATE, result, input_output_aliases={0: 0})(
            cache, tokens, slots
        )


def _per_device(cache_spec: P) -> RowWrite:
    """The update on the arrays each device holds; `cache_spec` is how a mesh splits the cache,
    its first entry the rows (and so the slots)."""

    def write(cache: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
        if jax.sharding.get_abstract_mesh().empty:
            return _update(cache, new, slots)
        specs = {
            "in_specs": (cache_spec, cache_spec, P(cache_spec[0])),
            "out_specs": cache_spec,
        }
        return jax.shard_map(_update, **specs)(cache, new, slots)

    return write


def update_rows(default: RowWrite, cache_spec: P) -> RowWrite:
    """A per-row write: TT's in-place update on TT, `default` everywhere else."""
    tt = _per_device(cache_spec)

    def write(cache: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
        branches = {"tt": tt, "default": default}
        return jax.lax.platform_dependent(cache, new, slots, **branches)

    return write
