# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""A KV-cache write of one token per row, each row at its own slot, in place on TT.

The TT compiler recognizes an in-place cache update in a scatter only when every row writes the
same slot (a 1-element index). Rows at their own slots (continuous batching) reach TTNN's
`paged_update_cache`, which takes one index per row, through the plugin's `tt.update_cache`
custom call: the cache (B, K, S, H) aliased to the result, the tokens in the kernel's
(1, K, B, H) layout, and the (B,) slots. row_write.py places it per device under a mesh and keeps
it off other platforms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.xla_metadata import set_xla_metadata
from jax.sharding import PartitionSpec as P

from tests.infra.row_write import RowWrite, on_platform, per_device

UPDATE = "tt.update_cache"


def _update(cache: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
    """cache (B, K, S, H), new (B, K, 1, H), slots (B,) -> the cache, each row's token written."""
    tokens = jnp.transpose(new, (2, 1, 0, 3))  # (1, K, B, H)
    result = jax.ShapeDtypeStruct(cache.shape, cache.dtype)
    with set_xla_metadata(batch_offset="0"):
        return jax.ffi.ffi_call(UPDATE, result, input_output_aliases={0: 0})(
            cache, tokens, slots
        )


def update_rows(default: RowWrite, cache_spec: P) -> RowWrite:
    """A per-row write: TT's in-place update on TT, `default` elsewhere. The first entry of
    `cache_spec` (how a mesh splits the cache) splits the rows and so the slots."""
    return on_platform("tt", per_device(_update, cache_spec), default)
