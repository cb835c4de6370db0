# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The one place where the package bridges library versions: tt-xla's pins (jax 0.7.1, flax
0.10.4, transformers 5.5.1) and the current releases (requirements-dev.txt). Everything else
is written against the current API."""

from __future__ import annotations

from flax import nnx

# A list of submodules: flax >= 0.11 wants nnx.List; 0.10 takes a plain list as a pytree of them.
ModuleList = getattr(nnx, "List", list)


def value_of(variable) -> object:
    """The array (or shape) an entry of nnx.to_flat_state holds: a Variable read with get_value()
    from flax 0.11 (where `.value` is deprecated), a VariableState's `.value` in flax 0.10.
    """
    get = getattr(variable, "get_value", None)
    return get() if get is not None else variable.value
