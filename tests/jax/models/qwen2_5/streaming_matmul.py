# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""A decode step's bfloat16 product on x86-64 CPUs without AMX, at memory speed.

With few rows per device a product with a weight is a stream over the weight, and its speed is
the speed at which the weight is read. On CPUs without bfloat16 instructions (AVX2 only) XLA:CPU's
matrix library (YNNPACK) reads a bfloat16 weight at 7.5-10 GB/s, compute-bound: its kernels
vectorize over 8 columns and a decode step fills 2. No form of the product that XLA accepts
streams faster (README "Performance" lists the forms measured). `streaming_matmul.cc` widens each
bfloat16 with a shift, accumulates in float32 with FMA, splits the weight's rows over XLA's
intra-op threads and prefetches ahead of each row: 19-27 GB/s on the 0.5B shapes, 2 cores.

With AMX YNNPACK's own kernels read 22-30 GB/s, faster than this kernel, so it is not used there
(`streams_faster`). With AVX512_BF16 but no AMX (AMD Zen 4) YNNPACK's kernels are compute-bound
at a few rows too, and so is the AVX2 path beyond 4 rows: there the kernel multiplies bfloat16
pairs with the CPU's dot instruction (`native_bf16`), the same exact products and float32 sums,
and streams faster than YNNPACK at every few-row count (cpu_products' `streamed-native` form;
README "Performance").

It is built with the host's C++ compiler on first use (tests/infra/native_build). Registered for XLA:CPU only:
other platforms never see the custom call (cpu_products branches on the platform).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp

from tests.infra.cpu_class import avx2_fma, bfloat16_instructions, x86_flags
from tests.infra.native_build import build

_SOURCE = Path(__file__).with_suffix(".cc")
TARGET = "qwen2_5_streaming_matmul"
_FLAGS = ("-mavx2", "-mfma")


def runs_here() -> bool:
    """The kernel's instructions, AVX2 and FMA, are on this CPU."""
    return avx2_fma()


def streams_faster(cpu_flags: frozenset[str], xla_flags: str) -> bool:
    """Whether the kernel runs on a CPU with `cpu_flags` and reads bfloat16 weights faster there
    than XLA:CPU's own kernels, at least for a few rows: true unless XLA may use AMX (which
    `xla_flags` may cap away, as tests/infra/cpu_class's emulation of an AVX2-only CPU does).
    """
    runs = {"avx2", "fma"} <= cpu_flags
    return runs and "amx_bf16" not in bfloat16_instructions(cpu_flags, xla_flags)


def host_flags() -> tuple[frozenset[str], str]:
    """This CPU's flags (none off x86-64) and this process's XLA_FLAGS: what the forms depend on."""
    return x86_flags(), os.environ.get("XLA_FLAGS", "")


@functools.cache
def _library() -> Path:
    return build(
        _SOURCE,
        _FLAGS,
        "CPU decode kernel",
        "a C++17 compiler with AVX2 and AVX512_BF16 targets (g++ >= 10)",
    )


@functools.cache
def _register() -> None:
    kernel = ctypes.CDLL(str(_library()))
    jax.ffi.register_ffi_target(
        TARGET, jax.ffi.pycapsule(kernel.qwen2_5_streaming_matmul), platform="cpu"
    )


def prepare_kernel() -> None:
    """Build and register the kernel now, so that a missing compiler is reported before a long run
    starts rather than at its first decode step."""
    _register()


def streamed_product(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (M, in) times a weight stored (out, in) -> (M, out) float32, both bfloat16, on the arrays
    this device holds."""
    _register()
    result = jax.ShapeDtypeStruct((x.shape[0], w.shape[0]), jnp.float32)
    native = native_bf16(*host_flags())
    return jax.ffi.ffi_call(TARGET, result)(x, w, native=native)


def native_bf16(cpu_flags: frozenset[str], xla_flags: str) -> bool:
    """Whether the kernel multiplies bfloat16 pairs with AVX512_BF16's dot instruction on a CPU with
    `cpu_flags` under `xla_flags`: where the CPU has it and XLA is not capped below AVX-512, so an
    emulated AVX2-only host runs the AVX2 path as a real one does."""
    return "avx512_bf16" in bfloat16_instructions(cpu_flags, xla_flags)
