# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The host CPU's class for performance figures, and a way to measure the other class here.

bfloat16 speed on XLA:CPU and in PyTorch depends on the CPU's instruction set: with AVX-512 BF16
or AMX, XLA's matrix library (YNNPACK) and oneDNN multiply bfloat16 natively; on an AVX2-only
CPU they convert to float32 in registers, at a different speed and with different kernel shapes.
A figure measured on one class says nothing about the other.

`emulate_avx2_only()` makes this process choose its kernels as on an AVX2-only CPU: XLA's code
generation is capped at AVX2 (`--xla_cpu_max_isa`), YNNPACK and XNNPACK inside jaxlib read their
CPU features from pytorch/cpuinfo's table, which is cleared of AVX-512, AVX-VNNI and AMX, and
PyTorch is capped through its own variables (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA). Memory
and cores stay this host's: the emulation reproduces kernel choice, not the other machine.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import shutil
import subprocess
from pathlib import Path

# CPU features that decide the speed of bfloat16 products on XLA:CPU and in PyTorch.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
# XLA:CPU's `--xla_cpu_max_isa` values below AVX-512: with one of them XLA emits no AVX-512.
_BELOW_AVX512 = {"SSE4_2", "AVX", "AVX2"}
BFLOAT16_INSTRUCTIONS = frozenset({"avx512_bf16", "amx_bf16"})
AVX2_ONLY = "AVX2 without bfloat16 instructions"
BF16_NATIVE = "AVX-512 with bfloat16 instructions"

# pytorch/cpuinfo's `struct cpuinfo_x86_isa` on x86-64: one bool per feature, in the order of
# its header. The fields cleared are avxvnni and everything from avx512f to avx_ne_convert.
_ISA_TABLE_SIZE = 85
_ISA_AVX2, _ISA_AVXVNNI, _ISA_AVX512F, _ISA_AMX_BF16, _ISA_AVX_NE_CONVERT = (
    28,
    23,
    29,
    49,
    55,
)

_emulated = False


def _first_cpu() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in first_cpu.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in fields}


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (x86: "avx2", "amx_bf16", ...)."""
    return frozenset(_first_cpu().get("flags", "").split())


@functools.cache
def x86_flags() -> frozenset[str]:
    """This CPU's flags where it is x86-64; none elsewhere, where the native kernels cannot run."""
    return cpu_flags() if platform.machine() in ("x86_64", "AMD64") else frozenset()


def avx2_fma() -> bool:
    """The native kernels' instructions, AVX2 and FMA, are on this CPU."""
    return {"avx2", "fma"} <= x86_flags()


def host_class() -> dict:
    """The CPU model, the instruction-set flags that matter and the class they make; `emulated`
    when this process runs as an AVX2-only CPU (emulate_avx2_only)."""
    info = _first_cpu()
    flags = cpu_flags()
    native_bf16 = bool(flags & BFLOAT16_INSTRUCTIONS)
    return {
        "cpu": info.get("model name", "unknown"),
        "cores": os.cpu_count(),
        "flags": {f: f in flags for f in ISA_FLAGS},
        "class": BF16_NATIVE if native_bf16 and not _emulated else AVX2_ONLY,
        "emulated": _emulated,
    }


def bfloat16_instructions(flags: frozenset[str], xla_flags: str) -> frozenset[str]:
    """The bfloat16 dot instructions among a CPU's `flags` that XLA:CPU's kernels may use under
    `xla_flags`: none where they cap XLA below AVX-512 (`--xla_cpu_max_isa`, the last one
    winning), as emulate_avx2_only does."""
    max_isa = [
        arg.split("=", 1)[1]
        for arg in xla_flags.split()
        if arg.startswith("--xla_cpu_max_isa=")
    ]
    if max_isa and max_isa[-1].upper() in _BELOW_AVX512:
        return frozenset()
    return flags & BFLOAT16_INSTRUCTIONS


def emulate_avx2_only() -> None:
    """Choose kernels as an AVX2-only CPU would, for the rest of this process. Call it before
    JAX computes anything and before PyTorch is imported; raises RuntimeError when the host
    lacks AVX2 or jaxlib's CPU-feature table cannot be found (a jaxlib built differently).
    """
    global _emulated
    if not host_class()["flags"]["avx2"]:
        raise RuntimeError("this CPU has no AVX2: it cannot run as an AVX2 CPU")
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_max_isa=AVX2".strip()
    )
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    table = _jaxlib_isa_table()
    table[_ISA_AVXVNNI] = 0
    for field in range(_ISA_AVX512F, _ISA_AVX_NE_CONVERT + 1):
        table[field] = 0
    _emulated = True


def _jaxlib_isa_table() -> ctypes.Array:
    """cpuinfo's feature table inside jaxlib, initialized (cpuinfo fills it once, on first use),
    so that YNNPACK and XNNPACK read what is left in it when they first pick kernels."""
    import jaxlib
    import jaxlib._jax  # noqa: F401  (loads libjax_common.so, which carries its own copy of cpuinfo)

    library = Path(jaxlib.__file__).parent / "libjax_common.so"
    symbols = _local_symbols(library, {"cpuinfo_isa", "cpuinfo_initialize"})
    base = _load_address(library)
    initialize = ctypes.CFUNCTYPE(ctypes.c_bool)(
        base + symbols["cpuinfo_initialize"][0]
    )
    if not initialize():
        raise RuntimeError("cpuinfo failed to initialize inside jaxlib")
    address, size = symbols["cpuinfo_isa"]
    if size != _ISA_TABLE_SIZE:
        raise RuntimeError(
            f"jaxlib's cpuinfo_isa is {size} bytes, not {_ISA_TABLE_SIZE}: an unknown cpuinfo layout"
        )
    table = (ctypes.c_uint8 * size).from_address(base + address)
    if not table[_ISA_AVX2]:
        raise RuntimeError(
            "jaxlib's cpuinfo does not report AVX2 where /proc/cpuinfo does: layout not understood"
        )
    return table


def _local_symbols(library: Path, names: set[str]) -> dict[str, tuple[int, int]]:
    """(offset, size) of hidden symbols, from the library's full symbol table (readelf)."""
    if shutil.which("readelf") is None:
        raise RuntimeError(
            "readelf (binutils) is needed to find jaxlib's CPU-feature table"
        )
    listing = subprocess.run(
        ["readelf", "-sW", str(library)], capture_output=True, text=True, check=True
    ).stdout
    found = {}
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[7] in names:
            found[fields[7]] = (int(fields[1], 16), int(fields[2]))
    missing = names - found.keys()
    if missing:
        raise RuntimeError(
            f"{library.name} has no symbol {', '.join(sorted(missing))}: jaxlib was built without them"
        )
    return found


def _load_address(library: Path) -> int:
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if (
            len(fields) >= 6
            and fields[5] == str(library.resolve())
            and int(fields[2], 16) == 0
        ):
            return int(fields[0].split("-")[0], 16)
    raise RuntimeError(f"{library} is not loaded in this process")
