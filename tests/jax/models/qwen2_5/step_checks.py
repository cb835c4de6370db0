# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Test support: a request's generation steps compiled on the device under test and checked, the
planned collectives on every compiler and, from the TT compiler, the decode step's op checks.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.jax.infra.collectives import check_collectives
from tests.jax.infra.equivalence import COMPILE_ONLY_PROPERTY
from tests.jax.infra.ttnn_ops import Inventory
from tests.jax.models.qwen2_5.generation import Generator
from tests.jax.models.qwen2_5.sampling import SamplingConfig
from tests.jax.models.qwen2_5.steps import DECODE, DECODE_ROWS, step_collectives
from tests.jax.models.qwen2_5.tt_graph import CACHE_UPDATE


def compiles_as_planned(
    gen: Generator,
    prompts: Sequence[Sequence[int]],
    new_tokens: int,
    sampling: SamplingConfig,
    mesh,
    dut,
    record_property,
    kinds: Sequence[str] | None = None,
) -> bool:
    """The request's steps (Generator.lower; `kinds` of them, by default all) compile on the
    device under test with exactly the planned collectives; True when there is also data to
    compare (not compile-only)."""
    for kind, lowered in gen.lower(prompts, new_tokens, sampling).items():
        if kinds is not None and kind not in kinds:
            continue
        planned = step_collectives(gen.model.cfg, mesh, kind, sampling.greedy)
        _, check = check_collectives(lowered, dut.platform, planned)
        record_property(f"{kind}_collectives", str(check))
        if check.ttnn is not None:
            check_ttnn_step(kind, check.ttnn, gen.model.cfg.num_layers, record_property)
    if dut.compile_only:
        record_property(*COMPILE_ONLY_PROPERTY)
    return not dut.compile_only


def check_ttnn_step(kind: str, ttnn: Inventory, layers: int, record_property) -> None:
    """What the TT compiler made of a step: nothing on the host; a decode step's cache written in
    place (two paged_update_cache per layer, rows at a shared slot or at their own) and nothing
    scattered generically."""
    record_property(f"{kind}_ttnn_ops", ttnn.total)
    assert (
        ttnn.hoisted_to_cpu == 0
    ), f"{kind}: {ttnn.hoisted_to_cpu} functions on the host"
    if kind in (DECODE, DECODE_ROWS):
        assert (
            ttnn.count(CACHE_UPDATE) == 2 * layers and ttnn.generic_scatters == 0
        ), ttnn.ops
