# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The host CPU's class, named beside every performance figure.

bfloat16 speed on XLA:CPU and in PyTorch depends on the CPU's instruction set: with AVX-512 BF16
(AMD Zen 4) or AMX (Intel Sapphire Rapids) their matrix libraries multiply bfloat16 natively; on
an AVX2-only CPU (AMD Zen 2/3) they convert to float32 in registers, at another speed and with
other kernel shapes. A figure measured on one class says nothing about another.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# CPU features that decide the speed of bfloat16 products on XLA:CPU and in PyTorch.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
AVX2_ONLY, AVX512_BF16, AMX = "AVX2-only", "AVX-512 BF16", "AMX"


def _first_cpu() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in first_cpu.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in fields}


@functools.cache
def x86_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux reports them ("avx2", "amx_bf16", ...) where it is
    x86-64; none elsewhere."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return frozenset()
    return frozenset(_first_cpu().get("flags", "").split())


def class_of(flags: frozenset[str]) -> str:
    """The class of a CPU with `flags`: AMX, AVX-512 BF16 (without AMX) or AVX2-only."""
    if "amx_bf16" in flags:
        return AMX
    return AVX512_BF16 if "avx512_bf16" in flags else AVX2_ONLY


def host_class() -> dict:
    """The CPU model, its core count, the instruction-set flags that matter and their class."""
    flags = x86_flags()
    return {
        "cpu": _first_cpu().get("model name", "unknown"),
        "cores": os.cpu_count(),
        "flags": {f: f in flags for f in ISA_FLAGS},
        "class": class_of(flags),
    }
