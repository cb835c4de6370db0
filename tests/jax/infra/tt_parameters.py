# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Marking a program's weights as parameters for the TT compiler.

The TT compiler treats every argument as an input that may change between calls, so it converts
each weight to its on-device layout (and a bias to float32) inside every step. An argument marked
as a parameter, by the plugin's `tt.mark_argument` custom call carrying
`ttcore.argument_type = "parameter"`, is constant across calls: those conversions move into
const-eval functions that run once and are cached. On every other platform the mark is the
identity and lowers to nothing (`jax.lax.platform_dependent`).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.experimental.xla_metadata import set_xla_metadata

MARK = "tt.mark_argument"


def mark_parameter(x: jax.Array, name: str) -> jax.Array:
    """`x`, marked for the TT compiler as the parameter `name`."""

    def on_tt(x: jax.Array) -> jax.Array:
        with set_xla_metadata(
            **{"ttcore.argument_type": "parameter", "ttir.name": name}
        ):
            return jax.ffi.ffi_call(MARK, jax.ShapeDtypeStruct(x.shape, x.dtype))(x)

    return jax.lax.platform_dependent(x, tt=on_tt, default=lambda x: x)


def mark_parameters(tree: Any) -> Any:
    """Every array of `tree` marked as a parameter, named by its path in the tree."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: mark_parameter(x, jax.tree_util.keystr(path)), tree
    )
