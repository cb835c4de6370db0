# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The TTNN graph of a Qwen2.5-7B decode step on every mesh, op by op (tt_graph): the KV cache
updated in place, nothing scattered generically or run on the host, and the per-layer op goal.
Qwen2.5-7B's widths with shape-only weights, compiled for one and two decoder layers; the full
28-layer step is checked by `plan --device tt` (test_tensor_parallel)."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from tests.jax.infra.devices import TT
from tests.jax.infra.equivalence import COMPILE_ONLY_PROPERTY
from tests.jax.infra.ttnn_ops import DATA_MOVEMENT, Inventory
from tests.jax.models.qwen2_5.config import QWEN2_5_7B
from tests.jax.models.qwen2_5.steps import DECODE
from tests.jax.models.qwen2_5.tt_graph import (
    CACHE_UPDATE,
    GOAL_DATA_MOVEMENT_PER_LAYER,
    GOAL_OPS_PER_LAYER,
    StepGraph,
    step_graphs,
)

pytestmark = [pytest.mark.tensor_parallel, pytest.mark.model_test]
TT_ONLY = "compiles with the TT plugin: run with --device tt (--tt-compile-only without a card)"


# Eight rows per device on 2x4 in the default run (each case compiles 7B-width decode steps 4 times).
@pytest.mark.nightly_unless(rows_per_group=1, mesh="2x4")
@pytest.mark.parametrize("rows_per_group", [1, 8], ids=["batch_1", "batch_8"])
def test_7b_decode_step_is_lean_on_every_mesh(
    mesh, dut, rows_per_group, record_property
):
    """Per decode step: 2 paged_update_cache per layer, no generic scatter, no host function, at
    most 40 ops per layer, at most 15 of them reshape/to_layout/typecast/permute. One row per
    device (every mesh) takes the fused generic attention; eight take the decode kernel.
    """
    if dut.platform != TT:
        pytest.skip(TT_ONLY)
    cfg = QWEN2_5_7B.replace(num_layers=2)
    rows = rows_per_group * mesh.shape["batch"]
    graph = step_graphs(cfg, mesh, jnp.bfloat16, rows, kinds=(DECODE,))[DECODE]
    record_property(*COMPILE_ONLY_PROPERTY)
    record_property("ttnn_decode", graph.summary())
    problems = graph.problems()
    if rows_per_group > 1:
        # One reshape more than one row per device takes: v into the cache op's (T, B, K, H)
        # layout (k gets there through RoPE's view). Measured 16 on every mesh; README.
        moved = graph.data_movement_per_layer
        assert moved <= GOAL_DATA_MOVEMENT_PER_LAYER + 1, graph.summary()
        problems = [p for p in problems if "data-movement" not in p]
    assert problems == [], graph.summary()
    fused = "ttnn.scaled_dot_product_attention" + (
        "_decode" if rows_per_group > 1 else ""
    )
    assert graph.per_layer.get(fused) == 1 and graph.per_layer.get(CACHE_UPDATE) == 2


def _graph(
    per_layer: dict[str, int], cache_updates: int, scatters: int = 0
) -> StepGraph:
    ops = {CACHE_UPDATE: cache_updates, "ttnn.rows_scatter": scatters}
    return StepGraph(DECODE, 2, Inventory(ops, 0, 0), per_layer, {})


def test_the_goal_check_counts_what_it_says():
    """The checks of a decode graph, on inventories made up near each bound."""
    lean = {"ttnn.matmul": GOAL_OPS_PER_LAYER - GOAL_DATA_MOVEMENT_PER_LAYER}
    lean["ttnn.reshape"] = GOAL_DATA_MOVEMENT_PER_LAYER
    assert _graph(lean, 4).problems() == []
    assert _graph({**lean, "ttnn.add": 1}, 4).problems() == [
        f"{GOAL_OPS_PER_LAYER + 1} ops per layer > 40"
    ]
    moved = {**lean, "ttnn.matmul": lean["ttnn.matmul"] - 1, "ttnn.typecast": 1}
    assert _graph(moved, 4).problems() == ["16 data-movement ops per layer > 15"]
    assert _graph(lean, 3).problems() == ["3 in-place cache updates, not 4"]
    assert _graph(lean, 4, scatters=1).problems() == ["1 generic scatters"]
    assert {
        "ttnn.reshape",
        "ttnn.to_layout",
        "ttnn.typecast",
        "ttnn.permute",
    } == DATA_MOVEMENT
