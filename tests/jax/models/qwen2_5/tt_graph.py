# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The TTNN graphs the TT compiler makes of a generation step, op by op, against the decode goal.

A step's program is compiled twice with shape-only weights, for one decoder layer and for the
model's (at least two): every layer compiles to the same ops, so their difference over the extra
layers is one layer's ops exactly (a remainder is reported as a problem). The goal is TT's own
hand-written LLM decode, about two dozen ops per layer: here at most GOAL_OPS_PER_LAYER, of which
at most GOAL_DATA_MOVEMENT_PER_LAYER only move or re-format data, with the KV cache updated in
place (two `paged_update_cache` per layer) and nothing scattered generically or run on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax.numpy as jnp
from jax.sharding import Mesh

from tests.jax.infra.ttnn_ops import (
    DATA_MOVEMENT,
    Inventory,
    compile_to_ttnn,
    inventory,
)
from tests.jax.models.qwen2_5.config import Qwen2Config
from tests.jax.models.qwen2_5.generation import Generator
from tests.jax.models.qwen2_5.steps import DECODE, PREFILL
from tests.jax.models.qwen2_5.tensor_parallel import abstract_model
from tests.jax.models.qwen2_5.tt_forms import TT_FORMS

GOAL_OPS_PER_LAYER = 40
GOAL_DATA_MOVEMENT_PER_LAYER = 15
CACHE_UPDATE = "ttnn.paged_update_cache"
KINDS = (PREFILL, DECODE)


@dataclass(frozen=True)
class StepGraph:
    """One step's TTNN program: the whole of it, and one decoder layer's ops."""

    kind: str
    layers: int
    whole: Inventory
    per_layer: dict[str, int]
    remainder: dict[
        str, int
    ]  # ops that did not split evenly over the extra layers (none expected)

    @property
    def ops_per_layer(self) -> int:
        return sum(self.per_layer.values())

    @property
    def data_movement_per_layer(self) -> int:
        return sum(n for op, n in self.per_layer.items() if op in DATA_MOVEMENT)

    @property
    def cache_updates(self) -> int:
        return self.whole.count(CACHE_UPDATE)

    def problems(self) -> list[str]:
        """What falls short: for every step, uneven layers and ops on the host; for a decode step,
        anything but two in-place cache updates per layer, a generic scatter, the op goals.
        """
        found = [f"layers differ by {self.remainder}"] if self.remainder else []
        if self.whole.hoisted_to_cpu:
            found.append(
                f"{self.whole.hoisted_to_cpu} functions hoisted to the host CPU"
            )
        if self.kind != DECODE:
            return found
        if self.cache_updates != 2 * self.layers:
            found.append(
                f"{self.cache_updates} in-place cache updates, not {2 * self.layers}"
            )
        if self.whole.generic_scatters:
            found.append(f"{self.whole.generic_scatters} generic scatters")
        if self.ops_per_layer > GOAL_OPS_PER_LAYER:
            found.append(f"{self.ops_per_layer} ops per layer > {GOAL_OPS_PER_LAYER}")
        if self.data_movement_per_layer > GOAL_DATA_MOVEMENT_PER_LAYER:
            moved = self.data_movement_per_layer
            found.append(
                f"{moved} data-movement ops per layer > {GOAL_DATA_MOVEMENT_PER_LAYER}"
            )
        return found

    def summary(self) -> dict:
        """The figures a report or a test property shows."""
        return {
            "layers": self.layers,
            "ttnn_ops": self.whole.total,
            "ttnn_ops_per_layer": {
                "total": self.ops_per_layer,
                "data_movement": self.data_movement_per_layer,
                "ops": dict(
                    sorted(self.per_layer.items(), key=lambda kv: (-kv[1], kv[0]))
                ),
            },
            "ttnn_cache_updates": self.cache_updates,
            "ttnn_generic_scatters": self.whole.generic_scatters,
            "ttnn_hoisted_to_cpu": self.whole.hoisted_to_cpu,
        }


def _inventories(
    cfg: Qwen2Config, mesh: Mesh, dtype: jnp.dtype, rows: int, kinds: Sequence[str]
) -> dict[str, Inventory]:
    """Each step of `kinds` for `rows` prompts of 20 tokens and 16 new ones, compiled for TT."""
    generator = Generator(abstract_model(cfg, dtype, mesh, TT_FORMS), (), 0, mesh)
    lowered = generator.lower([[1] * 20] * rows, 16)
    return {kind: inventory(compile_to_ttnn(lowered[kind])[1]) for kind in kinds}


def step_graphs(
    cfg: Qwen2Config,
    mesh: Mesh,
    dtype: jnp.dtype = jnp.bfloat16,
    rows: int | None = None,
    kinds: Sequence[str] = KINDS,
) -> dict[str, StepGraph]:
    """The TTNN graph of each step of `kinds` of `cfg` (at least two layers are compiled) on the TT
    mesh `mesh`; `rows` defaults to one per batch group."""
    rows = rows or mesh.shape["batch"]
    full = cfg if cfg.num_layers > 1 else cfg.replace(num_layers=2)
    one = _inventories(cfg.replace(num_layers=1), mesh, dtype, rows, kinds)
    whole = _inventories(full, mesh, dtype, rows, kinds)
    extra = full.num_layers - 1
    graphs = {}
    for kind in kinds:
        difference = whole[kind] - one[kind]
        per_layer = {op: n // extra for op, n in difference.items() if n // extra}
        remainder = {op: n % extra for op, n in difference.items() if n % extra}
        graphs[kind] = StepGraph(
            kind, full.num_layers, whole[kind], per_layer, remainder
        )
    return graphs
