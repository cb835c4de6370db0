# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""What the TT compiler made of a program: its TTNN stage, exported by the plugin and read op by op.

The plugin writes every stage of a compile to `export_path/irs/`; `ttnn_<id>.mlir` is the program
that would run on a card. Ops are counted by name; bookkeeping the runtime does for every tensor
(`ttnn.deallocate`, `ttnn.get_device`) is left out.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from collections import Counter
from pathlib import Path

import jax

_TTNN_FILE = re.compile(r"ttnn_\d+\.mlir")
_OP = re.compile(r'"(ttnn\.[a-z_0-9]+)"\(')
_FUNC = re.compile(r"\s*func\.func (?:public |private )?@([\w.$-]+)")
BOOKKEEPING = frozenset({"ttnn.deallocate", "ttnn.get_device"})
# Ops that move or re-format data rather than compute.
DATA_MOVEMENT = frozenset(
    {
        "ttnn.reshape",
        "ttnn.to_layout",
        "ttnn.typecast",
        "ttnn.permute",
        "ttnn.to_memory_config",
        "ttnn.to_device",
        "ttnn.from_device",
        "ttnn.repeat",
        "ttnn.repeat_interleave",
        "ttnn.pad",
        "ttnn.slice_static",
        "ttnn.concat",
        "ttnn.transpose",
    }
)


def compile_to_ttnn(
    lowered: jax.stages.Lowered, options: dict | None = None
) -> tuple[jax.stages.Compiled, str]:
    """Compile `lowered` with the TT plugin and return its TTNN stage's text."""
    with tempfile.TemporaryDirectory(prefix="ttnn-export-") as export:
        compiled = lowered.compile({"export_path": export, **(options or {})})
        stages = [
            p for p in (Path(export) / "irs").iterdir() if _TTNN_FILE.fullmatch(p.name)
        ]
        if len(stages) != 1:
            raise RuntimeError(
                f"expected one TTNN stage in the plugin's export, found {[p.name for p in stages]}"
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
    return 'tt.function_type = "const_eval"' in function_text.lstrip().split("\n", 1)[0]


def op_counts(ttnn_text: str) -> Counter:
    """TTNN ops by name (e.g. "ttnn.matmul") in what runs at every call: every function but the
    const-eval ones, bookkeeping left out."""
    counts = Counter()
    for text in functions(ttnn_text).values():
        if not is_const_eval(text):
            counts.update(op for op in _OP.findall(text) if op not in BOOKKEEPING)
    return counts
