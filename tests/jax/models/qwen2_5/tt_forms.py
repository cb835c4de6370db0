# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The model's kernels for Tenstorrent's compiler: the forms its TT-MLIR passes fuse.

- attention as the named composite `tenstorrent.scaled_dot_product_attention` (TTNN's fused
  attention, its decode kernel at two or more rows per device); the decomposition is the plain
  attention, so any other compiler computes exactly the golden's;
- a decode token per row written in place at the row's own slot by the plugin's
  `tt.update_cache` custom call (TTNN's `paged_update_cache`), the plain write off TT;
- decode rows rotated in the (T, B, heads, H) view TT's batched rotary kernel takes;
- weights marked as parameters, so their layout conversions run once as const-eval.

docs/tt_graph.md has the op inventory these forms reach (36 TTNN ops per 7B decoder layer).
"""

from __future__ import annotations

from tests.jax.infra.devices import TT
from tests.jax.infra.tt_cache import update_rows
from tests.jax.models.qwen2_5.model import KV_AXES, PLAIN, Kernels, write_rows
from tests.jax.models.qwen2_5.partitioning import logical_to_spec

TT_FORMS = Kernels(
    row_write=update_rows(write_rows, logical_to_spec(KV_AXES)),
    named_attention=True,
    rotary_rows_view=True,
    marked_parameters=True,
)


def kernels_for(platform: str) -> Kernels:
    """The kernels a model on `platform` computes with: TT's forms on TT, else the plain ones."""
    return TT_FORMS if platform == TT else PLAIN
