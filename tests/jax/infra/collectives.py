# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The collectives a compiled program performs, read from what each compiler emits.

XLA:CPU: the compiled HLO text. TT: the plugin does not show collectives in
`compiled.as_text()`; its TTNN stage is read from the plugin's export (ttnn_ops). Names are normalized to one vocabulary (`all_reduce`,
`all_gather`, `reduce_scatter`, `all_to_all`, `collective_permute`), so one plan is checked
against both compilers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import jax

from tests.jax.infra.devices import TT
from tests.jax.infra.ttnn_ops import Inventory, compile_to_ttnn, inventory

# `%name = TYPE op(`, where TYPE is one token or, for async starts, a parenthesized tuple.
_HLO = re.compile(
    r"=\s*(?:\([^)]*\)|\S+)\s+(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(?:-start)?\("
)
_TTNN = re.compile(
    r'"ttnn\.(all_reduce|all_gather|reduce_scatter|all_to_all|point_to_point|collective_permute)"\('
)


class CollectivesError(AssertionError):
    """A compiled program's collectives differ from the plan; the message gives both."""


def hlo_collectives(hlo_text: str) -> Counter:
    """Collective ops in compiled HLO text (async start/done pairs counted once)."""
    return Counter(name.replace("-", "_") for name in _HLO.findall(hlo_text))


def ttnn_collectives(ttnn_text: str) -> Counter:
    """Collective ops in a TTNN MLIR module (point-to-point transfers count as collective_permute)."""
    return Counter(
        "collective_permute" if op == "point_to_point" else op
        for op in _TTNN.findall(ttnn_text)
    )


def compile_and_count(
    lowered: jax.stages.Lowered, platform: str
) -> tuple[jax.stages.Compiled, Counter, Inventory | None]:
    """Compile `lowered` with the compiler of `platform`, count the collectives it emitted and,
    for TT, take the inventory of its TTNN program."""
    if platform != TT:
        compiled = lowered.compile()
        return compiled, hlo_collectives(compiled.as_text()), None
    compiled, text = compile_to_ttnn(lowered)
    return compiled, ttnn_collectives(text), inventory(text)


@dataclass(frozen=True)
class CollectivesCheck:
    """A compiled workload's collectives against its plan (names absent from either count 0)."""

    platform: str
    found: dict[str, int]
    planned: dict[str, int]
    ttnn: Inventory | None = None  # the whole TTNN program, when compiled for TT

    @property
    def passed(self) -> bool:
        names = set(self.found) | set(self.planned)
        return all(self.found.get(n, 0) == self.planned.get(n, 0) for n in names)

    def metrics(self) -> dict[str, float]:
        return {
            f"{self.platform}_{name}": count
            for name, count in sorted(self.found.items())
        }

    def __str__(self) -> str:
        found, planned = dict(sorted(self.found.items())), dict(
            sorted(self.planned.items())
        )
        return f"{self.platform} collectives {found}, planned {planned}"


def check_collectives(
    lowered: jax.stages.Lowered, platform: str, planned: Mapping[str, int]
) -> tuple[jax.stages.Compiled, CollectivesCheck]:
    """Compile `lowered` for `platform` and assert its collectives are exactly `planned`."""
    compiled, found, ttnn = compile_and_count(lowered, platform)
    planned = {k: v for k, v in planned.items() if v}
    check = CollectivesCheck(platform, dict(found), planned, ttnn)
    if not check.passed:
        raise CollectivesError(str(check))
    return compiled, check
