# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""A run's peak host memory, estimated from its compiled steps before any weight is read, against
a budget: refused up front, with the fixes named, rather than killed half-way."""

from __future__ import annotations

from tests.jax.infra.runs import RunError
from tests.jax.models.qwen2_5.engine import Engine

GIB = 2**30
# The oracle of an audited run (audit.oracle_of) computes on the weights of the run named SINGLE.
SINGLE, ORACLE = "1x1", "oracle"


class MemoryRefused(RunError):
    """The run's estimated peak host memory exceeds the budget."""

    def __init__(self, need: str, fixes: str) -> None:
        super().__init__(f"this run needs {need}: {fixes}")
        self.need = need


def check_memory(
    shape_only: dict[str, Engine],
    layouts: dict[str, list],
    budget: int,
    fixes: str,
    resident: dict[str, int],
) -> str:
    """Refuse a run whose estimated peak host memory exceeds `budget`: every model's weights and
    `resident` bytes (caches of runs that advance in lockstep) all held at once (the oracle holds
    none of its own), plus the largest compiled step of any of them beyond the weights and cache
    it runs on. Weights alone over the budget are refused before any step compiles. Returns the
    estimate in words."""
    owner = {name: SINGLE if name == ORACLE else name for name in shape_only}
    weights = {
        name: gen.weight_bytes + resident.get(name, 0)
        for name, gen in shape_only.items()
        if name != ORACLE
    }
    held = " + ".join(f"{w / GIB:.2f} GiB ({name})" for name, w in weights.items())
    if sum(weights.values()) > budget:
        need = f"more than the {budget / GIB:.2f} GiB of host memory available for its weights alone ({held})"
        raise MemoryRefused(need, fixes)
    steps = {
        name: max(
            gen.steps.peak_bytes(layout, kinds) for layout, kinds in layouts[name]
        )
        for name, gen in shape_only.items()
    }
    # The oracle runs on the single device's weights, while that run's cache stays resident.
    beside = {name: resident.get(SINGLE, 0) if name == ORACLE else 0 for name in steps}
    need = max(
        steps[name]
        + beside[name]
        + sum(w for other, w in weights.items() if other != owner[name])
        for name in shape_only
    )
    step = max(s - weights[owner[n]] for n, s in steps.items())
    estimate = (
        f"an estimated {need / GIB:.2f} GiB of host memory (weights {held}, the largest step {step / GIB:.2f} GiB "
        f"more) of {budget / GIB:.2f} GiB available"
    )
    if need > budget:
        raise MemoryRefused(estimate, fixes)
    return estimate
