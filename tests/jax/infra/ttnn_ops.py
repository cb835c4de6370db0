# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""What the TT compiler made of a program: its TTNN stage, exported by the plugin and read op by op.

The plugin writes every stage of a compile to `export_path/irs/`; `ttnn_<id>.mlir` is the program
that would run on a card. Its functions are the forward one, run at every call, and const-eval
ones, run once on parameters and constants and cached (`ttcore.load_cached`). Ops are counted in
what runs at every call; bookkeeping the runtime does for every tensor (`ttnn.deallocate`,
`ttnn.get_device`) is left out.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jax

from tests.jax.infra.tt_plugin import COMPILE_OPTIONS

_TTNN_FILE = re.compile(r"ttnn_\d+\.mlir")
_OP = re.compile(r'"(ttnn\.[a-z_0-9]+)"\(')
_FUNC = re.compile(r"\s*func\.func (?:public |private )?@([\w.$-]+)")
BOOKKEEPING = frozenset({"ttnn.deallocate", "ttnn.get_device"})
# Ops that only move or re-format data (the decode-graph goal counts these).
DATA_MOVEMENT = frozenset(
    {"ttnn.reshape", "ttnn.to_layout", "ttnn.typecast", "ttnn.permute"}
)
# Scatters that rewrite rows of a tensor generically, where an in-place cache op could.
GENERIC_SCATTERS = frozenset({"ttnn.rows_scatter", "ttnn.scatter"})
# Functions the compiler moved to the host CPU (ops it could not place on the chip).
_HOISTED = re.compile(r"cpu_hoisted_|ttcore\.cpu_module")


def compile_to_ttnn(lowered: jax.stages.Lowered) -> tuple[jax.stages.Compiled, str]:
    """Compile `lowered` with the TT plugin (COMPILE_OPTIONS) and return its TTNN stage's text."""
    with tempfile.TemporaryDirectory(prefix="ttnn-export-") as export:
        compiled = lowered.compile({"export_path": export, **COMPILE_OPTIONS})
        irs = Path(export) / "irs"
        stages = [p for p in irs.iterdir() if _TTNN_FILE.fullmatch(p.name)]
        if len(stages) != 1:
            names = [p.name for p in stages]
            raise RuntimeError(
                f"expected one TTNN stage in the plugin's export, found {names}"
            )
        return compiled, stages[0].read_text()


def functions(ttnn_text: str) -> dict[str, str]:
    """Each function of a TTNN module by name -> its text (signature and body)."""
    starts = [m.start() for m in _FUNC.finditer(ttnn_text)] + [len(ttnn_text)]
    return {
        _FUNC.match(ttnn_text, a).group(1): ttnn_text[a:b]
        for a, b in itertools.pairwise(starts)
    }


def is_const_eval(function_text: str) -> bool:
    """A const-eval function: computed once from parameters and constants, then cached."""
    signature = function_text.lstrip().split("\n", 1)[0]
    return 'tt.function_type = "const_eval"' in signature


def op_counts(ttnn_text: str) -> Counter:
    """TTNN ops by name (e.g. "ttnn.matmul") in what runs at every call: every function but the
    const-eval ones, bookkeeping left out."""
    counts = Counter()
    for text in functions(ttnn_text).values():
        if not is_const_eval(text):
            counts.update(op for op in _OP.findall(text) if op not in BOOKKEEPING)
    return counts


@dataclass(frozen=True)
class Inventory:
    """A TTNN program's ops at every call, and what the compiler did beside them."""

    ops: dict[str, int]
    const_eval_functions: int
    hoisted_to_cpu: int

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def data_movement(self) -> int:
        return sum(n for op, n in self.ops.items() if op in DATA_MOVEMENT)

    @property
    def generic_scatters(self) -> int:
        return sum(n for op, n in self.ops.items() if op in GENERIC_SCATTERS)

    def count(self, op: str) -> int:
        return self.ops.get(op, 0)

    def __sub__(self, other: Inventory) -> dict[str, int]:
        """The ops this program runs beyond `other` (e.g. one more decoder layer's)."""
        return {
            op: n - other.ops.get(op, 0)
            for op, n in self.ops.items()
            if n != other.ops.get(op, 0)
        }


def inventory(ttnn_text: str) -> Inventory:
    """The Inventory of a TTNN module's text."""
    parts = functions(ttnn_text).values()
    const_eval = sum(is_const_eval(text) for text in parts)
    hoisted = len(_HOISTED.findall(ttnn_text))
    return Inventory(dict(op_counts(ttnn_text)), const_eval, hoisted)
