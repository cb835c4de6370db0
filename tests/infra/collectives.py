# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The collectives a compiled program performs, read from what each compiler emits.

XLA:CPU: the compiled HLO text. TT: the plugin does not show collectives in
`compiled.as_text()`; its TTNN stage is exported with the compiler option `export_path` and
read from `irs/ttnn_<id>.mlir`. Names are normalized to one vocabulary (`all_reduce`,
`all_gather`, `reduce_scatter`, `all_to_all`, `collective_permute`), so one plan is checked
against both compilers.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jax

from tests.infra.devices import TT

# `%name = TYPE op(`, where TYPE is one token or, for async starts, a parenthesized tuple.
_HLO = re.compile(
    r"=\s*(?:\([^)]*\)|\S+)\s+(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(?:-start)?\("
)
_TTNN = re.compile(
    r'"ttnn\.(all_reduce|all_gather|reduce_scatter|all_to_all|point_to_point|collective_permute)"\('
)
_TTNN_FILE = re.compile(r"ttnn_\d+\.mlir")


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
) -> tuple[jax.stages.Compiled, Counter]:
    """Compile `lowered` with the compiler of `platform` and count the collectives it emitted."""
    if platform != TT:
        compiled = lowered.compile()
        return compiled, hlo_collectives(compiled.as_text())
    with tempfile.TemporaryDirectory(prefix="ttnn-export-") as export:
        compiled = lowered.compile({"export_path": export})
        stages = [
            p for p in (Path(export) / "irs").iterdir() if _TTNN_FILE.fullmatch(p.name)
        ]
        if len(stages) != 1:
            raise RuntimeError(
                f"expected one TTNN stage in the plugin's export, found {[p.name for p in stages]}"
            )
        return compiled, ttnn_collectives(stages[0].read_text())


@dataclass(frozen=True)
class CollectivesCheck:
    """A compiled workload's collectives against its plan (names absent from either count 0)."""

    platform: str
    found: dict[str, int]
    planned: dict[str, int]

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
    compiled, found = compile_and_count(lowered, platform)
    check = CollectivesCheck(
        platform, dict(found), {k: v for k, v in planned.items() if v}
    )
    if not check.passed:
        raise CollectivesError(str(check))
    return compiled, check
